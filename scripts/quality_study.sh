#!/usr/bin/env bash
# Ablation study on a fixed share of the training users (always the full test
# split), on the embedded SmolLM2 backbone. DATA is the folder that contains
# beauty/sequences.txt and toys/sequences.txt. Each row writes a bundle under
# runs/study/. A row whose bundle already exists is skipped, so an interrupted
# study resumes where it stopped.
#
#   DATA=/path/to/data bash scripts/quality_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to the folder that holds beauty/ and toys/}"
E4SREC=.venv/bin/e4srec
STUDY=${STUDY:-runs/study}
USERS=${USERS:-4000}
MINUTES=${MINUTES:-8}
BEAUTY_IDS=${BEAUTY_IDS:-runs/sasrec/beauty-s0}
TOYS_IDS=${TOYS_IDS:-runs/sasrec/toys-s0}
mkdir -p "$STUDY"

# One epoch over USERS users, validation NDCG@10 on 1,000 users every 25
# steps (the curve in the plots), best step kept.
common=(--backbone smollm2 --dtype bfloat16 --bf16 --max-train-users "$USERS" --epochs 1 --max-minutes "$MINUTES"
        --batch-size 32 --lr 1e-3 --eval-every 25 --valid-users 1000 --patience 10 --eval-batch-size 64 --quiet)

row() {
    local name=$1
    shift
    if [[ -f "$STUDY/$name/manifest.json" ]]; then
        echo "skipping $name: $STUDY/$name already has a bundle"
        return
    fi
    "$E4SREC" train "${common[@]}" --name "$name" --output "$STUDY/$name" "$@"
}

beauty=(--data "$DATA/beauty" --ids "$BEAUTY_IDS")

# Default configuration: frozen SASRec ID table, tied head, LoRA r=8 (alpha 16,
# dropout 0.05) on the MLP, at most 20 history items, cosine schedule.
row beauty-default "${beauty[@]}"
# The SASRec ID table fine-tuned with the adapters instead of frozen.
row beauty-tuned-ids "${beauty[@]}" --train-ids
# LoRA rank 16 (alpha 32, so the same alpha / r scale).
row beauty-lora-r16 "${beauty[@]}" --lora-r 16 --lora-alpha 32
# LoRA on the attention projections instead of the MLP.
row beauty-lora-attention "${beauty[@]}" --lora-targets q_proj,k_proj,v_proj,o_proj
# At most 50 history items instead of 20.
row beauty-history-50 "${beauty[@]}" --max-history-length 50
# Constant learning rate after the warm-up instead of cosine decay.
row beauty-constant-lr "${beauty[@]}" --lr-schedule constant
# The two changes that scored best alone: constant learning rate and rank 16.
row beauty-constant-lr-r16 "${beauty[@]}" --lr-schedule constant --lora-r 16 --lora-alpha 32
# No LoRA dropout.
row beauty-lora-dropout-0 "${beauty[@]}" --lora-dropout 0
# The default configuration on Toys.
row toys-default --data "$DATA/toys" --ids "$TOYS_IDS"
# Full linear head with one output per item instead of the tied head.
row beauty-linear-head "${beauty[@]}" --head linear
# Random ID table, fine-tuned, instead of the SASRec table.
row beauty-random-ids --data "$DATA/beauty" --ids random --train-ids

.venv/bin/python bench/quality_table.py "$STUDY"/*/ > "$STUDY/table.md"
cat "$STUDY/table.md"
