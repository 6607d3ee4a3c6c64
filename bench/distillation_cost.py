"""Cost of distillation per training step: cross-entropy alone against cross-entropy plus the SASRec teacher.

Both objectives train the same E4SRec module in this process, on the same
users, batches, backbone and LoRA settings, each for the same wall time after
an untimed warm-up step, alternating in slices so both see the same machine.
The distilled step adds what ``e4srec train --teacher`` adds: the teacher
scores every supervised prefix over all items, and the loss mixes in the KL
term. The teacher is a SASRec model of the default ``pretrain-ids`` shape.
Its weights do not change its cost, so the script uses a fresh one unless
``--teacher`` names a ``pretrain-ids`` folder.

    .venv/bin/python bench/distillation_cost.py --seconds 60
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from common import machine, sample_training_users, time_alternately, trainable_e4srec, training_bench_parser
from model.batching import length_bucketed_batches
from model.distillation import DistillationSettings, distillation_loss, load_teacher, teacher_logits
from model.lora import LoraSettings
from model.sasrec import SASRec, SASRecConfig

SLICE_S = 10.0


def main() -> int:
    parser = training_bench_parser(__doc__, batch_help="sequences per step")
    parser.add_argument("--teacher", type=Path, default=None, help="pretrain-ids folder to distil from (default: a fresh SASRec of the default shape)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    args = parser.parse_args()

    split, sequences = sample_training_users(args.data, args.users)
    module, optimizer, autocast = trainable_e4srec(
        args.backbone, args.dtype, split.num_items, args.max_history_length, LoraSettings(r=args.lora_r, alpha=2 * args.lora_r), adapter_name="bench--distillation"
    )

    if args.teacher is not None:
        teacher = load_teacher(args.teacher, split.num_items, args.max_history_length, module.backbone.device)
    else:
        torch.manual_seed(0)
        teacher = SASRec(SASRecConfig(num_items=split.num_items)).to(module.backbone.device).eval().requires_grad_(False)
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
            soft_targets = teacher_logits(teacher, batch, args.max_history_length, with_response=False)
            loss = distillation_loss(logits, labels, soft_targets, settings)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return labels.numel()

    objectives = {"cross-entropy only": cross_entropy_step, "distilled (teacher + KL)": distilled_step}
    totals = time_alternately(objectives, args.seconds, SLICE_S)

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
