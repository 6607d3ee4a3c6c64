"""Training targets per second: the dense objective against one forward per prefix.

The dense objective feeds each user's sequence once and trains every
position on its next item. The per-prefix objective (the E4SRec reference
implementation's way) turns each sequence into one example per prefix and
trains only the last position. Both run in this process on the same users,
the same backbone and the same batch size, each for the same wall time after
an untimed warm-up step, alternating in slices so both see the same machine.

    .venv/bin/python bench/training_throughput.py --seconds 60
"""

from __future__ import annotations

import json
import random
import sys

import torch

from common import machine, sample_training_users, time_alternately, trainable_e4srec, training_bench_parser
from model.batching import length_bucketed_batches
from model.lora import LoraSettings

SLICE_S = 10.0


def prefix_examples(sequences: list[list[int]], max_length: int) -> list[tuple[list[int], int]]:
    examples = []
    for sequence in sequences:
        for end in range(1, len(sequence)):
            examples.append((sequence[:end][-max_length:], sequence[end]))
    return examples


def main() -> int:
    parser = training_bench_parser(__doc__, batch_help="sequences (dense) or prefixes (per prefix) per step")
    args = parser.parse_args()

    split, sequences = sample_training_users(args.data, args.users)
    module, optimizer, autocast = trainable_e4srec(
        args.backbone, args.dtype, split.num_items, args.max_history_length, LoraSettings(r=8), adapter_name="bench--training"
    )

    dense_batches = length_bucketed_batches(sequences, args.batch_size, seed=0)
    examples = sorted(prefix_examples(sequences, args.max_history_length), key=lambda example: len(example[0]))
    prefix_batches = [examples[start : start + args.batch_size] for start in range(0, len(examples), args.batch_size)]
    random.Random(0).shuffle(prefix_batches)

    def dense_step(index: int) -> int:
        with autocast:
            loss, targets = module.training_loss(dense_batches[index % len(dense_batches)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return targets

    def prefix_step(index: int) -> int:
        batch = prefix_batches[index % len(prefix_batches)]
        with autocast:
            states = module.hidden_states([history for history, _ in batch])[:, -1]
            logits = module.score_states(states)
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([target for _, target in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(batch)

    objectives = {"dense (one pass per sequence)": dense_step, "one forward per prefix": prefix_step}
    totals = time_alternately(objectives, args.seconds, SLICE_S)

    rates = {label: total["targets"] / total["seconds"] for label, total in totals.items()}
    ratio = rates["dense (one pass per sequence)"] / rates["one forward per prefix"]
    print(f"{args.users} users, {len(examples)} training targets, batch {args.batch_size}, {args.dtype}, {args.seconds:.0f} s each")
    for label, rate in rates.items():
        print(f"{label:32} {rate:8.1f} training targets/s ({totals[label]['steps']} steps)")
    print(f"dense / per-prefix: {ratio:.2f}x")
    if args.output:
        args.output.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine(), "rates": rates, "ratio": ratio, "totals": totals}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
