#!/usr/bin/env bash
# sop-bench's `standard` profile inside solo-learn: SOP, DINO and iBOT on all of Fashion-MNIST with the
# bench's ViT, crops, batch, epochs and each method's bench recipe, then sop-solo-compare (see run.sh):
#   sop-data export fashion-mnist ./datasets/fashion-mnist
#   bash scripts/compare/fashion-mnist-standard.sh [hydra overrides for all three runs]
# SOP and iBOT keep their local crops (the bench's); solo-learn's DINO takes global crops only.
COMPARE_KEEP_CROPS=1 exec bash "$(dirname "$0")/run.sh" fashion-mnist-standard "$@"
