#!/usr/bin/env bash
# The `full` preset's GPU check, as one call of this workplace's device tool (a bare GPU
# machine without network, whose python3 holds a CUDA torch; at most 64 MiB travels).
# Prepared on this machine by benchmarks/gpu_prepare.sh:
#   .whl/            fedrec's Python dependencies that the GPU image lacks, as cp312 wheels
#   .gpu/smollm2-arch/  SmolLM2's config and tokenizer (its weights cannot travel)
# then run there with both folders carried:
#   bash benchmarks/gpu_full_check.sh       # results and logs under $OUT (default /tmp/gpu-check)
# It installs the wheels and fedrec into the machine's python3, writes a shape twin of
# SmolLM2-135M (benchmarks/shape_twin.py: its architecture, random weights), measures one
# client's training throughput at the `full` preset's batches, then runs the `full` preset
# on 20 real SuperNodes on 127.0.0.1 for 2 rounds (benchmarks/deployment_rounds.py). Each
# step has a time limit, so the whole check ends within about 9 minutes. Last, candidate
# scoring speed (benchmarks/ranking_speed.py) for sizing LLM evaluations.
set -uo pipefail
export PYTHONUNBUFFERED=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
started=$(date +%s)
elapsed() { echo "[$(($(date +%s) - started)) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check -e . || exit 1
python3 -c "import torch, flwr, opacus, peft, transformers, fedrec
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'flwr', flwr.__version__,
      'opacus', opacus.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)" \
    | tee "$OUT/versions.txt" || exit 1
twin=/tmp/smollm2-twin
python3 benchmarks/shape_twin.py .gpu/smollm2-arch "$twin" || exit 1
elapsed "installed; shape twin written"

timeout 120 python3 benchmarks/train_throughput.py --backbones "$twin" --examples 3000 --repeats 1 \
    --lora-layers 4 --batch-size 1024 --physical-batch-size 128 --out "$OUT/train_throughput.json"
elapsed "throughput done (exit $?)"

nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -l 5 >"$OUT/gpu-during-full.csv" &
sampler=$!
remaining=$((470 - ($(date +%s) - started)))
timeout "$remaining" python3 benchmarks/deployment_rounds.py --preset full --rounds 2 --variant prefix-cache \
    --set "backbone=$twin" --out /tmp/full --results "$OUT/full_rounds.json" --limit $((remaining - 20))
elapsed "full preset done (exit $?)"
kill "$sampler"
tar czf "$OUT/full-logs.tgz" -C /tmp --exclude='node-*' --exclude='flwr-home' --exclude='checkpoint' full

remaining=$((545 - ($(date +%s) - started)))
timeout "$remaining" python3 benchmarks/ranking_speed.py --backbone "$twin" --users 5 --compute-dtype bfloat16 \
    --out "$OUT/ranking_speed.json"
elapsed "check finished"
