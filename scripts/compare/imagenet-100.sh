#!/usr/bin/env bash
# SOP vs DINO vs iBOT on imagenet-100 through solo-learn, matched settings, then sop-solo-compare (see run.sh):
#   bash scripts/compare/imagenet-100.sh [hydra overrides for all three runs]
exec bash "$(dirname "$0")/run.sh" imagenet-100 "$@"
