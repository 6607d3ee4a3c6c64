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
from service.metrics import ServiceMetrics
from service.ranking import RankedItems, RankingPlan, top_k

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

    def __init__(self, backbone: Backbone, adapters_dir: Path, metrics: ServiceMetrics, prefix_cache: bool = True):
        self.backbone = backbone
        self.adapters_dir = Path(adapters_dir)
        self.metrics = metrics
        self.prefix_cache = prefix_cache
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
        self.metrics.bundle_loads.labels(bundle=served.name).inc()
        self.metrics.resident_bundles.set(len(self._bundles))
        logger.info(
            "loaded bundle %s@%s (%d items, max history %d) in %.2f s",
            served.name, served.version, served.num_items, bundle.manifest.model.max_history_length,
            time.monotonic() - started,
        )
        return served

    def _dry_run(self, module: E4SRec, bundle: Bundle) -> None:
        # The dry run also serves as the bundle's warm-up, and fills its
        # prefix cache, so the first request does not pay for either.
        with torch.inference_mode():
            scores = module.score_histories([[1]], use_prefix_cache=self.prefix_cache)
        if scores.shape != (1, bundle.manifest.model.num_items + 1) or not torch.isfinite(scores).all():
            raise BundleError(f"bundle {bundle.manifest.name}@{bundle.manifest.version} failed the dry-run forward pass")

    def get(self, name: str) -> ServedBundle:
        served = self._bundles.get(name)
        if served is None:
            raise BundleNotFoundError(name, sorted(self._bundles))
        return served

    def list(self) -> list[ServedBundle]:
        return [self._bundles[name] for name in sorted(self._bundles)]

    def rank_batch(self, served: ServedBundle, plans: list[RankingPlan]) -> list[RankedItems]:
        """Run one forward pass for ``plans`` (all for ``served``) and rank each row."""
        histories = [plan.model_history for plan in plans]
        with self.forward_lock, torch.inference_mode():
            if self.prefix_cache:
                counter = self.metrics.prefix_cache_hits if served.module.prefix_cached() else self.metrics.prefix_cache_misses
                counter.inc()
            scores = served.module.score_histories(histories, use_prefix_cache=self.prefix_cache).float()
            return [top_k(row, plan.excluded, plan.k) for row, plan in zip(scores, plans, strict=True)]
