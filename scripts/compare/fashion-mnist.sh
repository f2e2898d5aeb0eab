#!/usr/bin/env bash
# SOP vs DINO vs iBOT on fashion-mnist through solo-learn, matched settings, then sop-solo-compare (see run.sh):
#   bash scripts/compare/fashion-mnist.sh [hydra overrides for all three runs]
# e.g. on a CPU: bash scripts/compare/fashion-mnist.sh +profile=cpu
exec bash "$(dirname "$0")/run.sh" fashion-mnist "$@"
