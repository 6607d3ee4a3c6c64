"""Shared fixtures: a tiny random Llama backbone, synthetic data, a trained tiny bundle, a running server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model.backbone import BackboneSettings, load_backbone
from model.data import leave_one_out, read_interactions
from model.pretrain_ids import PretrainOptions, pretrain_ids
from model.train import TrainOptions, train_bundle
from tests.server_process import RunningServer
from tests.tiny import save_tiny_llama, synthetic_sequences, write_sequences_txt

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
NUM_SYNTHETIC_ITEMS = 100

# The tiny models are far too small to gain from several threads, and a second
# thread only competes with other work on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("backbone") / "tiny-llama")


@pytest.fixture
def tiny_backbone(tiny_backbone_dir, tmp_path):
    return load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=tmp_path / "cache"))


@pytest.fixture(scope="session")
def synthetic_data_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    return write_sequences_txt(folder / "sequences.txt", synthetic_sequences(400, NUM_SYNTHETIC_ITEMS, seed=1))


@pytest.fixture(scope="session")
def synthetic_split(synthetic_data_file):
    return leave_one_out(read_interactions(synthetic_data_file))


@pytest.fixture(scope="session")
def synthetic_ids(synthetic_split, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ids")
    pretrain_ids(synthetic_split, folder, PretrainOptions(hidden_size=16, dropout=0.2, max_epochs=30, max_length=20, learning_rate=3e-3))
    return folder


@pytest.fixture(scope="session")
def trained_bundle_dir(tiny_backbone_dir, synthetic_split, synthetic_ids, tmp_path_factory) -> Path:
    """A tiny bundle trained for a few epochs; tests copy it before changing it."""
    backbone = load_backbone(BackboneSettings(source=str(tiny_backbone_dir), cache_dir=tmp_path_factory.mktemp("cache")))
    output = tmp_path_factory.mktemp("trained") / "toy"
    options = TrainOptions(
        name="toy", output=output, ids=synthetic_ids, epochs=4, batch_size=16,
        learning_rate=3e-3, progress=False, max_history_length=8,
    )
    train_bundle(backbone, synthetic_split, options, {"source": "synthetic"})
    return output


@pytest.fixture
def adapters_dir(trained_bundle_dir, tmp_path) -> Path:
    folder = tmp_path / "adapters"
    folder.mkdir()
    shutil.copytree(trained_bundle_dir, folder / "toy")
    return folder


@pytest.fixture(scope="module")
def tiny_server(tiny_backbone_dir, trained_bundle_dir, tmp_path_factory):
    """One server per test module; tests that change its bundles start their own."""
    root = tmp_path_factory.mktemp("server")
    shutil.copytree(trained_bundle_dir, root / "adapters" / "toy")
    server = RunningServer(str(tiny_backbone_dir), root / "adapters", root / "server.log", {"E4SREC_CACHE_DIR": str(root / "cache")})
    try:
        server.wait_ready(timeout_s=60)
        yield server
    finally:
        server.stop()
