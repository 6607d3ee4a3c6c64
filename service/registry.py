"""The bundle registry: bundles resident on the one loaded backbone."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model.backbone import Backbone
from model.bundle import MANIFEST_FILE, Bundle, BundleError, instantiate, read_bundle
from model.e4srec import E4SRec
from service.errors import BundleNotFoundError

logger = logging.getLogger(__name__)


@dataclass
class ServedBundle:
    bundle: Bundle
    module: E4SRec
    loaded_at: float

    @property
    def name(self) -> str:
        return self.bundle.manifest.name

    @property
    def version(self) -> str:
        return self.bundle.manifest.version

    @property
    def num_items(self) -> int:
        return self.bundle.manifest.model.num_items


class BundleRegistry:
    """Loads bundles from the repository folder and runs their forward passes.

    The backbone's active LoRA adapter is global state, so forward passes run
    one at a time under ``forward_lock``.
    """

    def __init__(self, backbone: Backbone, adapters_dir: Path):
        self.backbone = backbone
        self.adapters_dir = Path(adapters_dir)
        self.forward_lock = threading.Lock()
        self._bundles: dict[str, ServedBundle] = {}

    def load_all(self) -> list[str]:
        """Load every bundle folder under the repository; skip and log invalid ones."""
        if not self.adapters_dir.is_dir():
            logger.warning("bundle repository %s does not exist; no bundles loaded", self.adapters_dir)
            return []
        loaded = []
        for folder in sorted(self.adapters_dir.iterdir()):
            if folder.name.startswith(".") or not (folder / MANIFEST_FILE).is_file():
                continue
            try:
                served = self.load(folder)
            except BundleError as error:
                logger.error("skipped bundle folder %s: %s", folder, error)
                continue
            loaded.append(served.name)
        return loaded

    def load(self, folder: Path) -> ServedBundle:
        started = time.monotonic()
        bundle = read_bundle(folder, expected_fingerprint=self.backbone.fingerprint)
        if bundle.manifest.name != folder.name:
            raise BundleError(
                f"bundle folder {folder.name!r} holds a manifest named {bundle.manifest.name!r}; "
                "the folder name must equal the bundle name"
            )
        with self.forward_lock:
            module = instantiate(self.backbone, bundle)
            self._dry_run(module, bundle)
        served = ServedBundle(bundle=bundle, module=module, loaded_at=time.time())
        self._bundles[served.name] = served
        logger.info(
            "loaded bundle %s@%s (%d items, max history %d) in %.2f s",
            served.name, served.version, served.num_items, bundle.manifest.model.max_history_length,
            time.monotonic() - started,
        )
        return served

    def _dry_run(self, module: E4SRec, bundle: Bundle) -> None:
        with torch.inference_mode():
            scores = module.score_histories([[1]])
        if scores.shape != (1, bundle.manifest.model.num_items + 1) or not torch.isfinite(scores).all():
            raise BundleError(f"bundle {bundle.manifest.name}@{bundle.manifest.version} failed the dry-run forward pass")

    def get(self, name: str) -> ServedBundle:
        served = self._bundles.get(name)
        if served is None:
            raise BundleNotFoundError(name, sorted(self._bundles))
        return served

    def list(self) -> list[ServedBundle]:
        return [self._bundles[name] for name in sorted(self._bundles)]

    def score(self, served: ServedBundle, histories: list[list[int]]) -> torch.Tensor:
        with self.forward_lock, torch.inference_mode():
            return served.module.score_histories(histories).float()
