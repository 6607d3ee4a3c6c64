#!/usr/bin/env bash
# Ablation study on a fixed share of the training users (always the full test
# split), on the embedded SmolLM2 backbone. DATA is the folder that contains
# beauty/sequences.txt and toys/sequences.txt; results go to runs/study/.
#
#   DATA=/path/to/data bash scripts/quality_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to the folder that holds beauty/ and toys/}"
E4SREC=.venv/bin/e4srec
STUDY=runs/study
USERS=${USERS:-4000}
MINUTES=${MINUTES:-8}
mkdir -p "$STUDY"

common=(--backbone smollm2 --dtype bfloat16 --bf16 --data "$DATA/beauty" --max-train-users "$USERS"
        --epochs 1 --max-minutes "$MINUTES" --batch-size 32 --lr 1e-3 --eval-batch-size 64 --quiet)

# Default configuration: frozen SASRec ID table, tied head, LoRA r=8 on the MLP.
"$E4SREC" train "${common[@]}" --ids runs/beauty-ids --name default --output "$STUDY/default"
# Full linear head with one output per item instead of the tied head.
"$E4SREC" train "${common[@]}" --ids runs/beauty-ids --head linear --name linear-head --output "$STUDY/linear-head"
# Random ID table, fine-tuned, instead of the frozen SASRec table.
"$E4SREC" train "${common[@]}" --ids random --train-ids --name random-ids --output "$STUDY/random-ids"

.venv/bin/python bench/quality_table.py "$STUDY"/*/ > "$STUDY/table.md"
cat "$STUDY/table.md"
