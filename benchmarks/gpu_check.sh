#!/usr/bin/env bash
# GPU performance check of issue 3 ("Performance"): sop-perf on one CUDA device. The whole device
# check (this, the retrieval check, sop-bench profile=gpu, solo-learn) is benchmarks/gpu_run.sh.
#
# Sized for <= 8 minutes on one H100 (expected 3-5 min, most of it start-up):
#   * step time, peak memory (torch.cuda.max_memory_allocated) and SOP's step breakdown for
#     SOP, iBOT and DINO at ViT-S/16, 224 px, batch 64, 2 x 224 + 10 x 96 px crops, bf16-mixed
#     (setting vit_small_224), plus vit_tiny_224 and vit_tiny_28;
#   * SE retrieval on the GPU for memories of 8,192 / 65,536 / 1,048,576 rows (torch,
#     faiss-gpu when installed, auto) and `auto`'s choices;
#   * correctness: neighbours of 1,000 queries found on the GPU against faiss on the CPU
#     ("gpu_retrieval_check" in perf.json).
#
# Self-contained: wheels in .whl/ (lightly, hydra-core, omegaconf, antlr4, faiss-cpu for
# CPython 3.12; `make gpu-bundle`, docs/performance.md "GPU") are installed to /tmp/site first and
# the repository goes on PYTHONPATH. Needs torch with CUDA, timm, lightning, numpy, PyYAML
# (matplotlib only for perf.png). Writes $OUT/perf.json (+ perf.png, perf.log); without $OUT,
# docs/results/perf/gpu. Extra arguments are passed to sop-perf (e.g. settings=vit_small_224).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
# sop-perf runs as `python -m sop_plugin.perf.cli`, not through its console script (sop_plugin.launchers,
# which sets the same policy before torch loads): the policy is set here; one in the environment wins
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT_DIR=${OUT:-docs/results/perf/gpu}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'EOF'
import torch

assert torch.cuda.is_available(), "no CUDA device"
print("torch", torch.__version__, torch.cuda.get_device_name(0))
EOF
start=$SECONDS
timeout 450 "$PY" -m sop_plugin.perf.cli out="$OUT_DIR" device=cuda \
  settings=vit_small_224,vit_tiny_224,vit_tiny_28 parts=step,retrieval "$@" 2>&1 | tee "$OUT_DIR/perf.log"
echo "gpu_check: done in $((SECONDS - start)) s; results in $OUT_DIR/perf.json"
