#!/usr/bin/env bash
# Issue 15's GPU check, under 8 minutes: benchmarks 2 (batch-1 latency over FLOPs), 3 (batched
# throughput with compaction, random order and by length) and 7 (the E-LANG-shaped cascade) on CUDA, in
# float32 and float16, for mpnet-base's architecture with random weights (benchmarks/random_weights.py
# says why that is enough for latency), printing one Markdown table.
#
#   bash benchmarks/gpu.sh                 # a CUDA machine with internet: installs hydra-core/omegaconf
#   bash benchmarks/gpu.sh --n 100         # extra arguments go to random_weights.py
#
# On a machine without internet whose Python has torch and transformers (this workplace's device
# machine), carry the pure-Python wheels it lacks in .whl/ (ignored by git):
#   pip download --no-deps hydra-core==1.3.8 omegaconf==2.3.1 -d .whl
#   pip wheel --no-deps antlr4-python3-runtime==4.9.3 -w .whl
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site .whl/*.whl
  export PYTHONPATH="/tmp/gpu-site:${PYTHONPATH:-}"
elif ! python3 -c "import hydra, omegaconf" 2> /dev/null; then
  python3 -m pip install -q "hydra-core>=1.3" "omegaconf>=2.3"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__, '| CUDA', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 420 python3 benchmarks/random_weights.py --device cuda --dtypes float32,float16 "$@"
echo "gpu.sh took $(( $(date +%s) - started )) s"
