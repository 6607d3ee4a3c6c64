"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from model.backbone import BackboneSettings, load_backbone  # noqa: E402
from model.data import leave_one_out, read_interactions  # noqa: E402
from model.e4srec import E4SRec, E4SRecConfig  # noqa: E402
from model.lora import LoraSettings, attach_adapter  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def make_histories(count: int, length: int, num_items: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [rng.sample(range(1, num_items + 1), length) for _ in range(count)]


def machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def trainable_e4srec(
    backbone_source: str, dtype: str, num_items: int, max_history_length: int, lora: LoraSettings, adapter_name: str
) -> tuple[E4SRec, torch.optim.Optimizer, torch.autocast]:
    """Build an E4SRec module with a trainable LoRA adapter as ``e4srec train`` does, and return it with AdamW and the autocast context."""
    backbone = load_backbone(BackboneSettings(source=backbone_source, dtype=dtype))
    config = E4SRecConfig(
        num_items=num_items, id_dim=64, hidden_size=backbone.hidden_size,
        max_history_length=max_history_length, instruction_ids=backbone.encode_text("Predict the next item."), lora=lora,
    )
    module = E4SRec(backbone, config, adapter_name=adapter_name)
    attach_adapter(backbone, adapter_name, config.lora, trainable=True)
    module.train()
    parameters = [p for p in module.parameters() if p.requires_grad] + [p for p in backbone.peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    return module, optimizer, autocast


def time_alternately(steps: dict[str, Callable[[int], int]], seconds: float, slice_s: float = 10.0) -> dict[str, dict]:
    """Run each training step function for ``seconds`` of its own time, alternating in slices so all see the same machine.

    Each function takes a step index and returns the training targets it
    covered. One untimed call of each comes first as a warm-up. Returns
    targets, seconds and steps per label.
    """
    totals = {label: {"targets": 0, "seconds": 0.0, "steps": 0} for label in steps}
    for step in steps.values():
        step(0)
    while any(total["seconds"] < seconds for total in totals.values()):
        for label, step in steps.items():
            total = totals[label]
            slice_end = time.perf_counter() + min(slice_s, seconds - total["seconds"])
            while time.perf_counter() < slice_end and total["seconds"] < seconds:
                started = time.perf_counter()
                total["targets"] += step(total["steps"] + 1)
                total["steps"] += 1
                total["seconds"] += time.perf_counter() - started
    return totals


def training_bench_parser(description: str, batch_help: str) -> argparse.ArgumentParser:
    """Return a parser with the options that the training benchmarks share: backbone, data, users, time, batch, history, dtype, output."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2", help="backbone source")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "beauty"), help="interaction data")
    parser.add_argument("--users", type=int, default=200, help="users sampled for both objectives")
    parser.add_argument("--seconds", type=float, default=60.0, help="timed seconds per objective")
    parser.add_argument("--batch-size", type=int, default=32, help=batch_help)
    parser.add_argument("--max-history-length", type=int, default=20, help="most recent items per input")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="backbone weight dtype (bf16 also autocasts)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    return parser


def sample_training_users(data: str, users: int, seed: int = 0):
    """Return the leave-one-out split of ``data`` and ``users`` training sequences of at least 2 items drawn from it."""
    split = leave_one_out(read_interactions(data))
    return split, random.Random(seed).sample([s for s in split.train if len(s) >= 2], users)
