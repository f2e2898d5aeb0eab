#!/usr/bin/env bash
# SOP vs DINO vs iBOT through solo-learn on DATASET with matched settings, then one table:
#   bash scripts/compare/run.sh DATASET [hydra overrides for all three runs]
# (scripts/compare/<dataset>.sh call this). The three pretrainings share everything but the objective:
# backbone, the 2 global crops of augmentations/global.yaml (solo-learn's DINO takes no local crops, so
# SOP runs without its local crops here), batch, optimizer, schedule, epochs, teacher momentum, online
# kNN and teacher-temperature warm-up, capped at max_epochs (solo-learn's DINO fails on a longer one).
# Runs go to $COMPARE_OUT/<method> (default trained_models/compare/DATASET-<time>), each with auto-resume
# off, so that no run picks up another method's or setting's checkpoint; the table and the figure go to
# $COMPARE_OUT/comparison.{md,png}.
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 DATASET [hydra overrides...]" >&2; exit 2; fi
dataset="$1"; shift
cd "$(dirname "$0")/../.."
cfg="scripts/pretrain/$dataset"
[ -f "$cfg/ibot.yaml" ] || { echo "no $cfg/ibot.yaml" >&2; exit 2; }
out="${COMPARE_OUT:-trained_models/compare/$dataset-$(date +%Y%m%d-%H%M%S)}"
value() { grep -E "^ *$1:" "$2" | head -1 | awk '{print $2}'; }
epochs=$(value max_epochs "$cfg/dino.yaml")
warm=$(value warmup_teacher_temperature_epochs "$cfg/dino.yaml")
for arg in "$@"; do
  case "$arg" in
    +profile=*) epochs=$(value max_epochs "$cfg/profile/${arg#*=}.yaml") ;;
    max_epochs=*|++max_epochs=*) epochs="${arg#*=}" ;;
  esac
done
warm=$(( epochs < warm ? epochs : warm ))
for method in sop dino ibot; do
  extra=()
  # SOP on the global crops like solo-learn's DINO, unless the dataset's configs set the crops themselves
  [ "$method" = sop ] && [ -z "${COMPARE_KEEP_CROPS:-}" ] && extra=(augmentations=global.yaml)
  # the one warm-up value, under each method's name for it (solo-learn's DINO has its own: docs/solo-learn.md, "Names")
  key=warmup_teacher_temp_epochs
  [ "$method" = dino ] && key=warmup_teacher_temperature_epochs
  extra+=("method_kwargs.$key=$warm")
  echo "== $method -> $out/$method" >&2
  sop-solo-pretrain --config-path "$cfg" --config-name "$method.yaml" "${extra[@]}" \
    "name=$method-$dataset-compare" "checkpoint.dir=$out/$method" "csv.enabled=True" "csv.dir=$out/$method" \
    "auto_resume.enabled=False" "$@"
done
sop-solo-compare "$out/sop" "$out/dino" "$out/ibot" --out "$out"
