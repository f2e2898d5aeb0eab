#!/usr/bin/env bash
# One GPU session, prepared to run once: the performance check (benchmarks/gpu_check.sh) and
# `sop-bench profile=gpu` on Fashion-MNIST. Everything it needs travels with the repo:
#   .whl/   wheels of the packages the GPU image lacks (lightly, hydra-core, omegaconf, antlr4, ...)
#   .data/fashion-mnist/   the four IDX .gz files of Debian's dataset-fashion-mnist
# Both folders are git-ignored; `make gpu-bundle` fills them. Results go to $OUT (default runs/gpu).
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_run.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, lightning, timm, lightly, hydra; print('torch', torch.__version__, 'lightning', lightning.__version__, 'timm', timm.__version__, 'lightly', lightly.__version__)"

if [ -f benchmarks/gpu_check.sh ]; then
  timeout "${PERF_TIMEOUT:-200}" bash benchmarks/gpu_check.sh || echo "gpu_check.sh failed or timed out"
fi

BENCH=/tmp/gpu-bench
timeout "${BENCH_TIMEOUT:-330}" python3 -m sop_plugin.bench.cli profile=gpu out=$BENCH \
  data.path=${FMNIST:-.data/fashion-mnist} +trainer.enable_progress_bar=false ${BENCH_ARGS:-}
status=$?
for f in results.json report.md knn_curve.png metrics.png sop_grid.png; do
  [ -f "$BENCH/$f" ] && cp "$BENCH/$f" "$OUT/bench_$f"
done
exit $status
