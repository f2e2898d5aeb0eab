#!/usr/bin/env bash
# iBOT pretraining on cifar with solo-learn (needs sop-plugin[solo] and solo-learn 1.0.6,
# see README "With solo-learn"). Extra arguments are hydra overrides, e.g. devices=[0,1].
set -euo pipefail
cd "$(dirname "$0")/../../.."
exec sop-solo-pretrain --config-path scripts/pretrain/cifar --config-name ibot.yaml "$@"
