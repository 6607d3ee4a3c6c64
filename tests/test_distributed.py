"""Data-parallel training with torchrun, and seeded repeatability, on the tiny backbone."""

import os
import subprocess
import sys

import torch

from model.bundle import read_bundle
from tests.conftest import REPO_ROOT


def _train_command(tiny_backbone_dir, synthetic_data_file, synthetic_ids, output):
    return [
        "train", "--backbone", str(tiny_backbone_dir), "--data", str(synthetic_data_file), "--ids", str(synthetic_ids),
        "--name", "ddp", "--output", str(output), "--epochs", "1", "--batch-size", "16", "--eval-users", "50", "--quiet",
    ]


def test_torchrun_two_processes_write_one_bundle(tiny_backbone_dir, synthetic_data_file, synthetic_ids, tmp_path):
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "model.cli", *_train_command(tiny_backbone_dir, synthetic_data_file, synthetic_ids, output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "E4SREC_CACHE_DIR": str(tmp_path / "cache")}

    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-3000:]
    bundle = read_bundle(output)
    assert bundle.manifest.training["processes"] == 2
    # 400 users in batches of 16 make 25 batches, so 13 steps when two processes share them.
    assert bundle.manifest.training["steps"] == 13
    assert bundle.manifest.metrics["test"]["num_cases"] == 50


def test_same_seed_gives_same_bundle(tiny_backbone_dir, synthetic_data_file, synthetic_ids, tmp_path):
    from model.cli import main

    for run in ("first", "second"):
        command = _train_command(tiny_backbone_dir, synthetic_data_file, synthetic_ids, tmp_path / run / "ddp")
        assert main(command) == 0

    first = read_bundle(tmp_path / "first" / "ddp")
    second = read_bundle(tmp_path / "second" / "ddp")
    assert first.manifest.version == second.manifest.version
    for name, tensor in first.lora_tensors.items():
        assert torch.equal(second.lora_tensors[name], tensor)
