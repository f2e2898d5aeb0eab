#!/usr/bin/env bash
# SOP vs DINO vs iBOT through solo-learn on fashion-mnist with matched settings, then one table.
#   bash scripts/compare/fashion-mnist.sh [hydra overrides for all three runs]
# e.g. on a CPU: bash scripts/compare/fashion-mnist.sh +profile=cpu
# The three pretrainings share everything but the objective: backbone, the 2 global crops of
# augmentations/global.yaml (solo-learn's DINO takes no local crops, so SOP runs without its
# local crops here), batch, optimizer, schedule, epochs, teacher momentum and temperature warm-up.
# Runs go to $COMPARE_OUT/<method> (default trained_models/compare/fashion-mnist-<time>), each with
# auto-resume off, so that no run picks up another method's or setting's checkpoint; the table and
# the figure go to $COMPARE_OUT/comparison.{md,png}.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${COMPARE_OUT:-trained_models/compare/fashion-mnist-$(date +%Y%m%d-%H%M%S)}"
cfg=scripts/pretrain/fashion-mnist
# the teacher temperature warms up over min(10, max_epochs) epochs in all three (solo-learn's DINO
# fails when the warm-up is longer than the run)
epochs=$(grep -E '^max_epochs:' "$cfg/dino.yaml" | awk '{print $2}')
for arg in "$@"; do
  case "$arg" in
    +profile=cpu) epochs=$(grep -E '^max_epochs:' "$cfg/profile/cpu.yaml" | awk '{print $2}') ;;
    max_epochs=*|++max_epochs=*) epochs="${arg#*=}" ;;
  esac
done
warm=$(( epochs < 10 ? epochs : 10 ))
for method in sop dino ibot; do
  case "$method" in
    sop) extra=(augmentations=global.yaml "method_kwargs.warmup_teacher_temp_epochs=$warm") ;;
    *) extra=("method_kwargs.warmup_teacher_temperature_epochs=$warm") ;;
  esac
  echo "== $method -> $out/$method" >&2
  sop-solo-pretrain --config-path "$cfg" --config-name "$method.yaml" "${extra[@]}" \
    "name=$method-fashion-mnist-compare" "checkpoint.dir=$out/$method" "csv.enabled=True" "csv.dir=$out/$method" \
    "++default_root_dir=$out/$method" "auto_resume.enabled=False" "$@"
done
sop-solo-compare "$out/sop" "$out/dino" "$out/ibot" --out "$out"
