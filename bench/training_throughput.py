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

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from common import machine
from model.backbone import BackboneSettings, load_backbone
from model.batching import length_bucketed_batches
from model.data import leave_one_out, read_interactions
from model.e4srec import E4SRec, E4SRecConfig
from model.lora import LoraSettings, attach_adapter

SLICE_S = 10.0


def prefix_examples(sequences: list[list[int]], max_length: int) -> list[tuple[list[int], int]]:
    examples = []
    for sequence in sequences:
        for end in range(1, len(sequence)):
            examples.append((sequence[:end][-max_length:], sequence[end]))
    return examples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2", help="backbone source")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty"), help="interaction data")
    parser.add_argument("--users", type=int, default=200, help="users sampled for both objectives")
    parser.add_argument("--seconds", type=float, default=60.0, help="timed seconds per objective")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences (dense) or prefixes (per prefix) per step")
    parser.add_argument("--max-history-length", type=int, default=20, help="most recent items per input")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="backbone weight dtype (bf16 also autocasts)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    split = leave_one_out(read_interactions(args.data))
    sequences = random.Random(0).sample([s for s in split.train if len(s) >= 2], args.users)
    backbone = load_backbone(BackboneSettings(source=args.backbone, dtype=args.dtype))
    config = E4SRecConfig(
        num_items=split.num_items, id_dim=64, hidden_size=backbone.hidden_size,
        max_history_length=args.max_history_length, instruction_ids=backbone.encode_text("Predict the next item."),
        lora=LoraSettings(r=8),
    )
    module = E4SRec(backbone, config, adapter_name="bench--training")
    attach_adapter(backbone, "bench--training", config.lora, trainable=True)
    module.train()
    parameters = [p for p in module.parameters() if p.requires_grad] + [p for p in backbone.peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

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
    totals = {label: {"targets": 0, "seconds": 0.0, "steps": 0} for label in objectives}
    for step in objectives.values():
        step(0)
    while any(total["seconds"] < args.seconds for total in totals.values()):
        for label, step in objectives.items():
            total = totals[label]
            slice_end = time.perf_counter() + min(SLICE_S, args.seconds - total["seconds"])
            while time.perf_counter() < slice_end and total["seconds"] < args.seconds:
                started = time.perf_counter()
                total["targets"] += step(total["steps"] + 1)
                total["steps"] += 1
                total["seconds"] += time.perf_counter() - started

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
