"""Shared fixtures: a tiny random Llama backbone, synthetic data, a trained tiny bundle, a running server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from model.backbone import BackboneSettings, load_backbone
from model.data import leave_one_out, read_interactions
from model.pretrain_ids import PretrainOptions, pretrain_ids
from model.train import TrainOptions, train_bundle
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """An ``e4srec serve`` subprocess on a loopback port."""

    def __init__(self, backbone: str, adapters: Path, log_path: Path, extra_env: dict | None = None):
        self.adapters = adapters
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "E4SREC_TORCH_THREADS": "1", **(extra_env or {})}
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "model.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--backbone", backbone, "--adapters-dir", str(adapters)],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


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
