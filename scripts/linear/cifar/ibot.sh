#!/usr/bin/env bash
# Linear evaluation on cifar of a iBOT checkpoint: cifar/ibot.sh CHECKPOINT [overrides...]
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 PRETRAINED.ckpt [hydra overrides...]" >&2; exit 2; fi
ckpt="$1"; shift
cd "$(dirname "$0")/../../.."
exec sop-solo-linear --config-path scripts/linear/cifar --config-name ibot.yaml \
  "pretrained_feature_extractor='$ckpt'" "$@"
