"""Cost of distillation per training step: cross-entropy alone against cross-entropy plus the SASRec teacher.

Both objectives train the same E4SRec module in this process, on the same
users, batches, backbone and LoRA settings, each for the same wall time after
an untimed warm-up step, alternating in slices so both see the same machine.
The distilled step adds what ``e4srec train --teacher`` adds: the teacher
scores every supervised prefix over all items, and the loss mixes in the KL
term. The teacher is a SASRec model of the default ``pretrain-ids`` shape;
its weights do not change its cost, so the script uses a fresh one unless
``--teacher`` names a ``pretrain-ids`` folder.

    .venv/bin/python bench/distillation_cost.py --seconds 60
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
from model.distillation import DistillationSettings, distillation_loss, load_teacher, teacher_logits
from model.e4srec import E4SRec, E4SRecConfig
from model.lora import LoraSettings, attach_adapter
from model.sasrec import SASRec, SASRecConfig

SLICE_S = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2", help="backbone source")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty"), help="interaction data")
    parser.add_argument("--teacher", type=Path, default=None, help="pretrain-ids folder to distil from (default: a fresh SASRec of the default shape)")
    parser.add_argument("--users", type=int, default=200, help="users sampled for both objectives")
    parser.add_argument("--seconds", type=float, default=60.0, help="timed seconds per objective")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    parser.add_argument("--max-history-length", type=int, default=20, help="most recent items per input")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="backbone weight dtype (bf16 also autocasts)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    split = leave_one_out(read_interactions(args.data))
    sequences = random.Random(0).sample([s for s in split.train if len(s) >= 2], args.users)
    backbone = load_backbone(BackboneSettings(source=args.backbone, dtype=args.dtype))
    config = E4SRecConfig(
        num_items=split.num_items, id_dim=64, hidden_size=backbone.hidden_size,
        max_history_length=args.max_history_length, instruction_ids=backbone.encode_text("Predict the next item."),
        lora=LoraSettings(r=args.lora_r, alpha=2 * args.lora_r),
    )
    module = E4SRec(backbone, config, adapter_name="bench--distillation")
    attach_adapter(backbone, "bench--distillation", config.lora, trainable=True)
    module.train()
    parameters = [p for p in module.parameters() if p.requires_grad] + [p for p in backbone.peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    if args.teacher is not None:
        teacher = load_teacher(args.teacher, split.num_items, args.max_history_length, backbone.device)
    else:
        torch.manual_seed(0)
        teacher = SASRec(SASRecConfig(num_items=split.num_items)).to(backbone.device).eval().requires_grad_(False)
    settings = DistillationSettings()
    batches = length_bucketed_batches(sequences, args.batch_size, seed=0)

    def cross_entropy_step(index: int) -> int:
        with autocast:
            loss, targets = module.training_loss(batches[index % len(batches)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return targets

    def distilled_step(index: int) -> int:
        batch = batches[index % len(batches)]
        with autocast:
            logits, labels = module.training_logits(batch)
            soft_targets = teacher_logits(teacher, batch, config.max_history_length, with_response=False)
            loss = distillation_loss(logits, labels, soft_targets, settings)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return labels.numel()

    objectives = {"cross-entropy only": cross_entropy_step, "distilled (teacher + KL)": distilled_step}
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
    step_seconds = {label: total["seconds"] / total["steps"] for label, total in totals.items()}
    overhead = step_seconds["distilled (teacher + KL)"] / step_seconds["cross-entropy only"]
    teacher_source = str(args.teacher) if args.teacher is not None else "fresh SASRec, default shape"
    print(f"{args.users} users, batch {args.batch_size}, LoRA r={args.lora_r}, {args.dtype}, teacher: {teacher_source}, {args.seconds:.0f} s each")
    for label, rate in rates.items():
        print(f"{label:26} {rate:8.1f} training targets/s, {step_seconds[label]:.3f} s/step ({totals[label]['steps']} steps)")
    print(f"distilled / cross-entropy time per step: {overhead:.2f}x")
    if args.output:
        figures = {"command": " ".join(sys.argv), "machine": machine(), "teacher": teacher_source, "rates": rates,
                   "step_seconds": step_seconds, "overhead": overhead, "totals": totals}
        args.output.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
