#!/usr/bin/env bash
# Run every benchmark on the embedded SmolLM2 backbone and the demo bundle,
# writing each one's figures as JSON into docs/results/ (an estimated 10 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=.venv/bin/python
OUT=docs/results
mkdir -p "$OUT"

"$PYTHON" bench/recommend_latency.py --requests 100 --output "$OUT/bench-recommend-latency.json"
"$PYTHON" bench/batching_throughput.py --clients 16 --requests 160 --output "$OUT/bench-batching.json"
"$PYTHON" bench/prefix_cache.py --batches 30 --output "$OUT/bench-prefix-cache.json"
"$PYTHON" bench/bundle_swap.py --repeats 20 --output "$OUT/bench-bundle-swap.json"
"$PYTHON" bench/training_throughput.py --seconds 45 --output "$OUT/bench-training-throughput.json"
"$PYTHON" bench/distillation_cost.py --seconds 45 --output "$OUT/bench-distillation-cost.json"
