#!/usr/bin/env bash
# Linear evaluation on imagenet of a iBOT checkpoint: imagenet/ibot.sh CHECKPOINT [overrides...]
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 PRETRAINED.ckpt [hydra overrides...]" >&2; exit 2; fi
ckpt="$1"; shift
cd "$(dirname "$0")/../../.."
exec sop-solo-linear --config-path scripts/linear/imagenet --config-name ibot.yaml \
  "pretrained_feature_extractor='$ckpt'" "$@"
