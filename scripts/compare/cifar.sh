#!/usr/bin/env bash
# SOP vs DINO vs iBOT on cifar through solo-learn, matched settings, then sop-solo-compare (see run.sh):
#   bash scripts/compare/cifar.sh [hydra overrides for all three runs]
exec bash "$(dirname "$0")/run.sh" cifar "$@"
