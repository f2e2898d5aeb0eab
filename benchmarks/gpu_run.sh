#!/usr/bin/env bash
# The whole GPU check in one call (<= 9 minutes on one H200, 16 cores, no network), or its dry run on
# the CPU (GPU_RUN_DRY=1: every stage at toy sizes, seconds; tests/perf/test_gpu_run_dry.py runs it).
#
# Stages, each under its own `timeout` (a stage that fails or runs out of time costs only itself):
#   1  sop-perf device=cuda, setting vit_small_224_b128: ViT-S/16 at 224 px, 2x224 + 10x96 crops,
#      batch 128, bf16; step time (wall, CUDA events, kernel-busy share), peak memory of SOP, iBOT,
#      DINO and SOP's step breakdown                                          -> perf.json, perf.png
#   2  SE retrieval on the GPU (torch; faiss where faiss-gpu imports) for memories of 65,536 and
#      1,048,576 rows: 1,000 queries' neighbours against an exact CPU search  -> retrieval.json
#   4  solo-learn's SOP and iBOT, 100 steps each through sop-solo-pretrain (ViT-S/16, bf16) on an
#      exported Fashion-MNIST folder: losses finite, SOP's memories filled   -> solo.json
#   3  sop-bench profile=gpu, all three methods to the end (kNN, linear, raw-pixel floor, collapse),
#      fewer epochs and no evaluation suite so that it fits             -> bench_results.json, bench_report.md
# Stage 3 runs last: it is the longest, and a stage may use the time the earlier ones left over
# (each gets its planned seconds plus what is left of the budget beyond the later stages' plans).
# Everything goes to $OUT (default runs/gpu, runs/gpu-dry): at most 8 files, the log gpu_run.log and
# summary.md included; the short table of summary.md is printed last. Exit status: the number of
# stages that failed or timed out (0: all passed; a stage skipped for a stated reason is no failure).
#
# Nothing is downloaded. What the GPU image lacks travels in two git-ignored folders that
# `make gpu-bundle` fills (docs/performance.md, "GPU"):
#   .whl/    wheels for CPython 3.12 (lightly, hydra-core, omegaconf, antlr4, faiss-cpu, solo-learn
#            1.0.6) and solo-learn's source tree (solo-learn-*.tar.gz: its main_pretrain.py)
#   .data/fashion-mnist/   the four IDX .gz files of Fashion-MNIST
# Through the device tool: run(command="bash benchmarks/gpu_run.sh", carry=[".whl", ".data"], timeout_s=600).
#
# Settings (environment): GPU_RUN_DRY=1, OUT, PYTHON (default python3), FMNIST (the IDX folder),
# GPU_RUN_BUDGET_S (whole run, default 510 s), GPU_RUN_WORK (scratch folder), BENCH_EPOCHS (stage 3,
# default 2), SOLO_STEPS (stage 4, default 100), SOLO_PYTHON (stage 4's Python), SOLO_WORKERS,
# GPU_RUN_STAGES (the stages to run, default 1,2,3,4; e.g. 3,4 to rerun two).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_RUN_DRY:-0}
PY=${PYTHON:-python3}
if [ "$DRY" = 1 ]; then
  OUT=${OUT:-runs/gpu-dry}
else
  OUT=${OUT:-runs/gpu}
fi
WORK=${GPU_RUN_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")}
BUDGET=${GPU_RUN_BUDGET_S:-510}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
START=$SECONDS
DEADLINE=$((START + BUDGET))
STAGES="$WORK/stages.tsv"
: >"$STAGES"

exec > >(tee "$OUT/gpu_run.log") 2>&1
TEE_PID=$!

export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
# the stages run the tools as `python -m MODULE`, not through their console scripts (sop_plugin.launchers,
# which set the same policy before torch loads): the policy is set here; one in the environment wins
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

if [ "$DRY" = 1 ]; then
  MODE="DRY RUN on the CPU (toy sizes)"
else
  MODE="GPU run"
fi
echo "gpu_run: $MODE; out $OUT, scratch $WORK, budget ${BUDGET} s"

# ---------------------------------------------------------------- environment: carried wheels, solo-learn
if [ "$DRY" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site (no index, no deps)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl \
    || echo "WARNING: installing the carried wheels failed; stages that need them will fail"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
elif [ "$DRY" = 1 ]; then
  echo "dry run: the carried wheels are not installed (this environment has its own packages)"
fi
# sop_plugin from this checkout for every stage (gpu_solo_check.py and the runs it launches included)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ -z "${SOLO_TGZ:-}" ]; then
  SOLO_TGZ=$(ls .whl/solo-learn-*.tar.gz ${PIP_FIND_LINKS:-.whl}/solo-learn-*.tar.gz 2>/dev/null \
    | head -1 || true)
fi
SOLO_ROOT=none  # sop-solo-pretrain's own launcher, unless solo-learn's tree (its main_pretrain.py) travelled
if [ -n "$SOLO_TGZ" ] && mkdir -p "$WORK/solo-src" && tar -xzf "$SOLO_TGZ" -C "$WORK/solo-src"; then
  main=$(find "$WORK/solo-src" -maxdepth 2 -name main_pretrain.py | head -1)
  if [ -n "$main" ]; then
    SOLO_ROOT=$(dirname "$main")
  fi
fi

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  if [ -d .data/fashion-mnist ]; then
    FMNIST=${FMNIST:-.data/fashion-mnist}
  else
    FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
  fi
else
  DEVICE=cuda
  FMNIST=${FMNIST:-.data/fashion-mnist}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
PY_VERSION=$("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')
echo "python: $PY_VERSION; $(nproc) cores; data $FMNIST; solo-learn tree: $SOLO_ROOT"
GPU_RUN_DRY=$DRY "$PY" - <<'EOF' || true
import glob
import os
import site
import subprocess
from importlib import metadata

NAMES = ("torch", "lightning", "timm", "lightly", "hydra-core", "omegaconf")
NAMES += ("faiss-cpu", "faiss-gpu-cu12", "solo-learn")


def version(name):
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return f"{name} -"


def sh(command):
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True).stdout


print("  " + ", ".join(version(name) for name in NAMES))
if os.environ.get("GPU_RUN_DRY") != "1":
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU"
    print(f"  torch CUDA {torch.version.cuda}: {gpu}")
    try:
        import faiss
    except ImportError as err:
        print(f"  faiss not importable: {err}")
    else:
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        print(f"  faiss {faiss.__version__}: GPUs seen {gpus}")
# would a CUDA 12 faiss-gpu wheel load here? it needs libcublas.so.12 (nvidia-cublas-cu12: a 581 MB wheel)
ld = sh("ldconfig -p 2>/dev/null | grep -c libcublas.so.12 || true").strip()
pattern = os.path.join("nvidia", "*", "lib", "libcublas.so.12*")
wheels = [p for d in site.getsitepackages() for p in glob.glob(os.path.join(d, pattern))]
cublas = "found" if ld not in ("", "0") or wheels else "not found"
shm = sh("df -h /dev/shm | tail -1").split()
free = shm[3] if len(shm) > 3 else "?"
print(f"  libcublas.so.12: {cublas}; /dev/shm free: {free}")
EOF

# ---------------------------------------------------------------- stage runner
FAILED=0
# run_stage ID NAME PLANNED_S RESERVE_S CMD...: runs CMD under `timeout`, the limit being PLANNED_S plus
# whatever the budget holds beyond RESERVE_S (the later stages' plans); a failure is recorded, not fatal.
run_stage() {
  local id=$1 name=$2 planned=$3 reserve=$4
  shift 4
  local limit=$((DEADLINE - SECONDS - reserve))
  [ "$limit" -lt "$planned" ] && limit=$planned
  [ $((DEADLINE - SECONDS)) -lt "$limit" ] && limit=$((DEADLINE - SECONDS))
  if [ "$limit" -lt 15 ]; then
    echo "=== stage $id ($name): skipped, only $((DEADLINE - SECONDS)) s of the budget left"
    printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$name" "skipped (no time left)" 0 0 >>"$STAGES"
    return 0
  fi
  echo "=== stage $id ($name): limit ${limit} s, at $((SECONDS - START)) s"
  local t0=$SECONDS rc=0
  STAGE_LIMIT=$limit timeout --kill-after=15 "$limit" "$@" || rc=$?
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=timeout
  elif [ "$rc" -ne 0 ]; then
    status="failed (exit $rc)"
  fi
  [ "$status" = ok ] || FAILED=$((FAILED + 1))
  echo "=== stage $id ($name): $status in $((SECONDS - t0)) s"
  printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$name" "$status" $((SECONDS - t0)) "$limit" >>"$STAGES"
}
want() {  # want ID: whether stage ID is in GPU_RUN_STAGES
  case ",${GPU_RUN_STAGES:-1,2,3,4}," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}
skip_stage() {  # skip_stage ID NAME REASON
  echo "=== stage $1 ($2): skipped: $3"
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "skipped: $3" 0 0 >>"$STAGES"
}
keep() {  # keep SRC DEST_NAME: copy a stage's file into $OUT when it exists
  if [ -f "$1" ]; then
    cp "$1" "$OUT/$2"
  else
    echo "(no $1)"
  fi
}

# planned seconds per stage (dry: generous for a loaded 2-core machine)
if [ "$DRY" = 1 ]; then
  P1=120 P2=60 P4=150 P3=150
else
  P1=120 P2=60 P4=140 P3=190
fi

# ---------------------------------------------------------------- stage 1: step time, memory, breakdown
if [ "$DRY" = 1 ]; then
  PERF_ARGS=(device=cpu settings=tiny repeats=2 warmup=1 isolate=false)
else
  PERF_ARGS=(device=cuda settings=vit_small_224_b128 profile_steps=2)
fi
if want 1; then
  run_stage 1 "sop-perf step" $P1 $((P2 + P4 + P3)) \
    "$PY" -m sop_plugin.perf.cli out="$WORK/perf" parts=step "${PERF_ARGS[@]}"
  keep "$WORK/perf/perf.json" perf.json
  keep "$WORK/perf/perf.png" perf.png
fi

# ---------------------------------------------------------------- stage 2: retrieval vs an exact CPU search
if [ "$DRY" = 1 ]; then
  RET_ARGS=(device=cpu memories=4096,16384 check_queries=100 retrieval_repeats=1)
else
  RET_ARGS=(device=cuda memories=65536,1048576 check_queries=1000 retrieval_repeats=5)
fi
if want 2; then
  run_stage 2 "retrieval check" $P2 $((P4 + P3)) \
    "$PY" -m sop_plugin.perf.cli out="$WORK/retrieval" parts=agreement "${RET_ARGS[@]}"
  keep "$WORK/retrieval/perf.json" retrieval.json
fi

# ---------------------------------------------------------------- stage 4: solo-learn SOP and iBOT
SOLO_PY=${SOLO_PYTHON:-$PY}
SOLO_PATH=$PYTHONPATH
if [ "$DRY" = 1 ]; then
  SOLO_ARGS=(--device cpu --steps "${SOLO_STEPS:-2}" --batch 8 --limit 64 --workers 0)
  # as on the device: solo-learn's wheel without its pins (lightning==2.1.2, torchmetrics<0.12) into a
  # folder of its own on this Python's path; without the wheel, the solo-learn venv of the tests
  wheel=$(ls .whl/solo_learn-*.whl ${PIP_FIND_LINKS:-.whl}/solo_learn-*.whl 2>/dev/null | head -1 || true)
  if [ -z "${SOLO_PYTHON:-}" ] && ! "$PY" -c "import solo" 2>/dev/null; then
    if [ -n "$wheel" ] \
      && "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site-solo" "$wheel"; then
      SOLO_PATH=$WORK/site-solo:$PYTHONPATH
      echo "stage 4 (dry): solo-learn from $wheel, installed as on the device (no deps) into $WORK/site-solo"
    elif [ -x .venv-solo/bin/python ]; then
      SOLO_PY=$PWD/.venv-solo/bin/python
    fi
  fi
else
  SOLO_WORKERS=${SOLO_WORKERS:-$(( $(nproc) > 13 ? 12 : $(nproc) - 1 ))}
  SOLO_ARGS=(--device cuda --steps "${SOLO_STEPS:-100}" --batch 128 --workers "$SOLO_WORKERS")
fi
if ! want 4; then
  :
elif SOLO_WHY=$(PYTHONPATH=$SOLO_PATH "$SOLO_PY" -c "import solo" 2>&1); then
  if [ "$SOLO_ROOT" = none ]; then
    echo "no solo-learn source tree (solo-learn-*.tar.gz): sop-solo-pretrain uses its own launcher"
  fi
  run_stage 4 "solo-learn SOP+iBOT" $P4 $P3 env PYTHONPATH="$SOLO_PATH" \
    "$SOLO_PY" benchmarks/gpu_solo_check.py --out "$WORK/solo.json" --work "$WORK/solo" --data "$FMNIST" \
    --solo-root "$SOLO_ROOT" --python "$SOLO_PY" "${SOLO_ARGS[@]}"
  keep "$WORK/solo.json" solo.json
else
  skip_stage 4 "solo-learn SOP+iBOT" "solo-learn not importable by $SOLO_PY ($(echo "$SOLO_WHY" | tail -1))"
fi

# ---------------------------------------------------------------- stage 3: sop-bench profile=gpu
if [ "$DRY" = 1 ]; then
  BENCH_ARGS=(profile=quick train.epochs=1 train.max_steps=2 train.batch_size=16 train.limit_train_images=1000
    model.embed_dim=32 model.depth=1 model.num_heads=2 sop.class_memory_size=128 sop.patch_memory_size=128
    sop.class_num_anchors=8 sop.class_num_supports=2 sop.class_num_sets=2 sop.patch_num_anchors=16
    eval.linear_epochs=2 eval.epoch_train_subset=64 eval.epoch_test_subset=32 eval.retrieval_max_queries=32
    eval.sop_grid_rows=3 eval.collapse_probe_images=64 trainer.accelerator=cpu)
else
  BENCH_ARGS=(profile=gpu "train.epochs=${BENCH_EPOCHS:-2}")
fi
if want 3; then
  if [ "$DRY" = 1 ]; then
    echo "stage 3 (dry): sop-bench profile=quick at toy sizes (2 steps per method), evaluated as on the GPU:"
  else
    echo "stage 3: trimmed to fit the time: train.epochs=${BENCH_EPOCHS:-2} (profile=gpu: 10),"
  fi
  echo "  eval.suite=[] (no few-shot, fine-tuning, segmentation, embedding map), eval.controls=false;"
  echo "  kept: kNN, linear probe, retrieval, corruptions, raw-pixel floor, collapse diagnostics"
  run_stage 3 "sop-bench profile=gpu" $P3 0 \
    "$PY" -m sop_plugin.bench.cli out="$WORK/bench" data.path="$FMNIST" "${BENCH_ARGS[@]}" \
    "eval.suite=[]" eval.controls=false +trainer.enable_progress_bar=false
  keep "$WORK/bench/results.json" bench_results.json
  keep "$WORK/bench/report.md" bench_report.md
fi

# ---------------------------------------------------------------- the table
echo "=== gpu_run: $((SECONDS - START)) s in all; $FAILED stage(s) failed or timed out; files in $OUT:"
ls "$OUT"
"$PY" benchmarks/gpu_summary.py "$OUT" "$STAGES" || echo "(no summary table: gpu_summary.py failed)"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null || true
exit "$FAILED"
