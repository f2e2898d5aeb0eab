#!/usr/bin/env bash
# Linear evaluation on imagenet-100 of a DINO checkpoint: imagenet-100/dino.sh CHECKPOINT [overrides...]
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 PRETRAINED.ckpt [hydra overrides...]" >&2; exit 2; fi
ckpt="$1"; shift
cd "$(dirname "$0")/../../.."
exec sop-solo-linear --config-path scripts/linear/imagenet-100 --config-name dino.yaml \
  "pretrained_feature_extractor='$ckpt'" "$@"
