"""The bundle registry: installed bundles, and the ones resident on the backbone.

Every bundle folder in the repository is *installed*. A bounded set of them is
*resident*: attached to the backbone as a LoRA adapter, with its module in
memory. A request for an installed but evicted bundle loads it again, and the
least recently used unpinned bundle makes room.

A request keeps a reference to the exact ``ServedBundle`` it was planned on,
so a replacement or eviction never changes the version that serves it. A
retired bundle leaves the backbone only when its last request has finished.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.backbone import Backbone
from model.bundle import MANIFEST_FILE, Bundle, BundleError, Manifest, instantiate, read_bundle, read_manifest
from model.e4srec import E4SRec
from model.lora import remove_adapter
from model.mixed_batch import score_mixed_batch
from service.errors import BundleNotFoundError
from service.metrics import ServiceMetrics
from service.ranking import RankedItems, RankingPlan, top_k

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class ServedBundle:
    bundle: Bundle
    module: E4SRec
    loaded_at: float
    pinned: bool = False
    in_flight: int = 0
    retired: bool = False
    last_used: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.bundle.manifest.name

    @property
    def version(self) -> str:
        return self.bundle.manifest.version

    @property
    def num_items(self) -> int:
        return self.bundle.manifest.model.num_items

    @property
    def nbytes(self) -> int:
        return self.bundle.nbytes


@dataclass
class InstalledBundle:
    manifest: Manifest
    path: Path


class CapacityError(RuntimeError):
    """Raised when a bundle cannot become resident without evicting a pinned or busy one."""


class BundleRegistry:
    """Installs, loads, evicts and serves bundles on one shared backbone.

    The backbone's active LoRA adapter is global state, so forward passes and
    adapter changes run one at a time under ``forward_lock``. Registry state
    changes run under ``_lock``.
    """

    def __init__(
        self,
        backbone: Backbone,
        adapters_dir: Path,
        metrics: ServiceMetrics,
        prefix_cache: bool = True,
        max_resident: int = 8,
        max_resident_bytes: int | None = None,
        pinned: tuple[str, ...] = (),
    ):
        self.backbone = backbone
        self.adapters_dir = Path(adapters_dir)
        self.metrics = metrics
        self.prefix_cache = prefix_cache
        self.max_resident = max_resident
        self.max_resident_bytes = max_resident_bytes
        self.pinned = set(pinned)
        self.forward_lock = threading.Lock()
        self._lock = threading.RLock()
        self._installed: dict[str, InstalledBundle] = {}
        self._resident: collections.OrderedDict[str, ServedBundle] = collections.OrderedDict()
        self._load_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._load_sequence = itertools.count(1)

    # Start-up

    def scan(self) -> list[str]:
        """Register every valid bundle folder and load as many as the capacity allows.

        Leftover staging and retired folders from an interrupted upload are
        removed first: they start with a dot and were never visible.
        """
        if not self.adapters_dir.is_dir():
            logger.warning("bundle repository %s does not exist; no bundles installed", self.adapters_dir)
            return []
        for leftover in self.adapters_dir.glob(".*"):
            if leftover.is_dir() and leftover.name.startswith((".staging-", ".retired-", ".upload-")):
                shutil.rmtree(leftover, ignore_errors=True)
                logger.info("removed leftover %s from an interrupted install", leftover.name)
            elif leftover.is_file() and leftover.name.startswith(".upload-"):
                leftover.unlink(missing_ok=True)
        for folder in sorted(self.adapters_dir.iterdir()):
            if folder.name.startswith(".") or not (folder / MANIFEST_FILE).is_file():
                continue
            try:
                manifest = read_manifest(folder)
                if manifest.name != folder.name:
                    raise BundleError(f"folder {folder.name!r} contains a manifest named {manifest.name!r}; rename the folder to the bundle name")
            except BundleError as error:
                logger.error("skipped bundle folder %s: %s", folder, error)
                continue
            self._installed[manifest.name] = InstalledBundle(manifest=manifest, path=folder)

        loaded = []
        ordered = sorted(self._installed, key=lambda name: (name not in self.pinned, name))
        for name in ordered:
            if len(self._resident) >= self.max_resident:
                break
            try:
                self._load(name)
            except (BundleError, CapacityError) as error:
                logger.error("bundle %s was not loaded: %s", name, error)
                self._installed.pop(name, None)
                continue
            loaded.append(name)
        return loaded

    # Lookup

    def installed_names(self) -> list[str]:
        with self._lock:
            return sorted(self._installed)

    def installed(self, name: str) -> InstalledBundle:
        with self._lock:
            entry = self._installed.get(name)
            if entry is None:
                raise BundleNotFoundError(name, sorted(self._installed))
            return entry

    def resident(self) -> list[ServedBundle]:
        with self._lock:
            return list(self._resident.values())

    def is_resident(self, name: str) -> bool:
        with self._lock:
            return name in self._resident

    def acquire(self, name: str) -> ServedBundle:
        """Return the serving version of ``name``, loading it if evicted; pair with ``release``."""
        with self._lock:
            if name not in self._installed:
                raise BundleNotFoundError(name, sorted(self._installed))
            served = self._resident.get(name)
            if served is not None:
                self._resident.move_to_end(name)
                served.in_flight += 1
                served.last_used = time.monotonic()
                return served

        # Loading runs outside the registry lock so other bundles keep serving;
        # the per-name lock makes concurrent requests wait for one load.
        with self._load_locks[name]:
            with self._lock:
                served = self._resident.get(name)
                if served is None:
                    if name not in self._installed:
                        raise BundleNotFoundError(name, sorted(self._installed))
            if served is None:
                served = self._load(name)
            with self._lock:
                served.in_flight += 1
                served.last_used = time.monotonic()
                return served

    def release(self, served: ServedBundle) -> None:
        with self._lock:
            served.in_flight -= 1
            detach = served.retired and served.in_flight == 0
        if detach:
            self._detach(served)

    # Loading and eviction

    def _load(self, name: str) -> ServedBundle:
        started = time.monotonic()
        entry = self._installed[name]
        bundle = read_bundle(entry.path, expected_fingerprint=self.backbone.fingerprint)
        served = self._attach(bundle)
        with self._lock:
            if self._installed.get(name) is not entry:
                # The bundle was replaced or deleted while this copy loaded.
                self._retire(served)
                current = self._resident.get(name)
                if current is not None:
                    return current
                if name not in self._installed:
                    raise BundleNotFoundError(name, sorted(self._installed))
                return self._load(name)
            self._make_room(served.nbytes)
            self._resident[name] = served
            self._update_gauges()
        self.metrics.bundle_loads.labels(bundle=name).inc()
        logger.info(
            "loaded bundle %s@%s (%d items, %.1f MB) in %.2f s",
            name, served.version, served.num_items, served.nbytes / 1e6, time.monotonic() - started,
        )
        return served

    def _attach(self, bundle: Bundle) -> ServedBundle:
        """Attach ``bundle`` to the backbone and dry-run it; detach again on failure."""
        adapter_name = f"{bundle.adapter_name}--{next(self._load_sequence)}"
        with self.forward_lock:
            module = instantiate(self.backbone, bundle, adapter_name=adapter_name)
            try:
                self._dry_run(module, bundle)
            except BaseException:
                remove_adapter(self.backbone, adapter_name)
                raise
        return ServedBundle(bundle=bundle, module=module, loaded_at=time.time(), pinned=bundle.manifest.name in self.pinned)

    def _dry_run(self, module: E4SRec, bundle: Bundle) -> None:
        # The dry run also warms the bundle up and fills its prefix cache, so
        # the first request pays for neither.
        with torch.inference_mode():
            scores = module.score_histories([[1]], use_prefix_cache=self.prefix_cache)
        expected = (1, bundle.manifest.model.num_items + 1)
        if tuple(scores.shape) != expected or not torch.isfinite(scores).all():
            raise BundleError(
                f"bundle {bundle.manifest.name}@{bundle.manifest.version} failed the dry-run forward pass: "
                f"scores of shape {tuple(scores.shape)} (expected {expected}), finite: {bool(torch.isfinite(scores).all())}"
            )

    def _make_room(self, incoming_bytes: int) -> None:
        """Evict least recently used unpinned bundles until ``incoming_bytes`` fits (the caller must own ``_lock``)."""

        def over_capacity() -> bool:
            count_full = len(self._resident) + 1 > self.max_resident
            used = sum(served.nbytes for served in self._resident.values())
            bytes_full = self.max_resident_bytes is not None and used + incoming_bytes > self.max_resident_bytes
            return count_full or bytes_full

        while over_capacity():
            victim = next((name for name, served in self._resident.items() if not served.pinned), None)
            if victim is None:
                raise CapacityError(
                    f"no room for another bundle: {len(self._resident)} resident, all pinned; "
                    "raise E4SREC_MAX_RESIDENT_BUNDLES or E4SREC_MAX_RESIDENT_BYTES, or unpin a bundle"
                )
            served = self._resident.pop(victim)
            self._retire(served)
            self.metrics.bundle_evictions.labels(bundle=victim).inc()
            logger.info("evicted bundle %s@%s from memory (least recently used)", victim, served.version)

    def _retire(self, served: ServedBundle) -> None:
        """Take ``served`` out of service; it leaves the backbone after its last request (the caller must own ``_lock``)."""
        served.retired = True
        if served.in_flight == 0:
            # Detaching takes the forward lock, which a running forward pass
            # holds; a helper thread keeps the caller from waiting for it.
            threading.Thread(target=self._detach, args=(served,), daemon=True).start()

    def _detach(self, served: ServedBundle) -> None:
        with self.forward_lock:
            remove_adapter(self.backbone, served.module.adapter_name)
        logger.debug("detached adapter %s", served.module.adapter_name)

    def _update_gauges(self) -> None:
        self.metrics.resident_bundles.set(len(self._resident))

    # Installation

    def install(self, staging: Path, name: str) -> ServedBundle:
        """Validate the bundle folder ``staging`` and make it the serving version of ``name``.

        ``staging`` must be inside the repository folder (same file system), so
        that the final rename is atomic. On any error nothing changes: the
        previous version keeps serving and stays on disk.
        """
        bundle = read_bundle(staging, expected_fingerprint=self.backbone.fingerprint)
        if bundle.manifest.name != name:
            raise BundleError(
                f"the archive's manifest names bundle {bundle.manifest.name!r}, but it was uploaded as {name!r}; "
                f"upload it as PUT /adapters/{bundle.manifest.name}"
            )
        served = self._attach(bundle)
        target = self.adapters_dir / name
        with self._lock:
            previous = self._resident.pop(name, None)
            retired_folder = None
            try:
                if target.exists():
                    retired_folder = self.adapters_dir / f".retired-{name}-{time.time_ns()}"
                    os.replace(target, retired_folder)
                os.replace(staging, target)
            except OSError:
                if retired_folder is not None and not target.exists():
                    os.replace(retired_folder, target)
                if previous is not None:
                    self._resident[name] = previous
                self._retire(served)
                raise
            bundle.path = target
            self._installed[name] = InstalledBundle(manifest=bundle.manifest, path=target)
            try:
                self._make_room(served.nbytes)
            except CapacityError:
                # The new version is installed on disk; it loads on its first request.
                self._retire(served)
                if previous is not None:
                    self._retire(previous)
                self._update_gauges()
                raise
            self._resident[name] = served
            if previous is not None:
                self._retire(previous)
            self._update_gauges()
        if retired_folder is not None:
            shutil.rmtree(retired_folder, ignore_errors=True)
        self.metrics.bundle_loads.labels(bundle=name).inc()
        if previous is not None:
            logger.info("swapped bundle %s: %s -> %s", name, previous.version, served.version)
        else:
            logger.info("installed bundle %s@%s", name, served.version)
        return served

    def delete(self, name: str) -> InstalledBundle:
        """Uninstall ``name``: it stops serving now and its folder is removed."""
        with self._lock:
            entry = self._installed.pop(name, None)
            if entry is None:
                raise BundleNotFoundError(name, sorted(self._installed))
            served = self._resident.pop(name, None)
            if served is not None:
                self._retire(served)
            retired_folder = self.adapters_dir / f".retired-{name}-{time.time_ns()}"
            os.replace(entry.path, retired_folder)
            self._update_gauges()
        shutil.rmtree(retired_folder, ignore_errors=True)
        logger.info("deleted bundle %s@%s", name, entry.manifest.version)
        return entry

    # Changes made by other replicas

    def sync(self, name: str) -> str:
        """Bring ``name`` in line with its folder on disk after another replica changed it.

        Returns what happened: ``unchanged``, ``installed``, ``replaced``,
        ``removed`` or ``rejected``. A resident bundle is swapped to the new
        version right away; one that is not resident loads on its next request.
        """
        folder = self.adapters_dir / name
        with self._load_locks[name]:
            if not (folder / MANIFEST_FILE).is_file():
                with self._lock:
                    if self._installed.pop(name, None) is None:
                        return "unchanged"
                    served = self._resident.pop(name, None)
                    if served is not None:
                        self._retire(served)
                    self._update_gauges()
                logger.info("bundle %s was deleted by another replica; removed here", name)
                return "removed"

            try:
                manifest = read_manifest(folder)
            except BundleError as error:
                logger.error("bundle %s changed on disk but is invalid: %s", name, error)
                return "rejected"
            with self._lock:
                current = self._installed.get(name)
                if current is not None and current.manifest.version == manifest.version:
                    return "unchanged"
                was_resident = name in self._resident
            served = None
            if was_resident:
                try:
                    served = self._attach(read_bundle(folder, expected_fingerprint=self.backbone.fingerprint))
                except BundleError as error:
                    logger.error("bundle %s@%s from another replica was rejected: %s", name, manifest.version, error)
                    return "rejected"
            with self._lock:
                self._installed[name] = InstalledBundle(manifest=manifest, path=folder)
                previous = self._resident.pop(name, None)
                if previous is not None:
                    self._retire(previous)
                if served is not None:
                    self._resident[name] = served
                self._update_gauges()
        if served is not None:
            self.metrics.bundle_loads.labels(bundle=name).inc()
        outcome = "replaced" if current is not None else "installed"
        logger.info("bundle %s@%s %s after a change by another replica", name, manifest.version, outcome)
        return outcome

    def sync_all(self) -> None:
        """Check every bundle folder and installed name against the disk."""
        on_disk = {
            folder.name for folder in self.adapters_dir.iterdir()
            if not folder.name.startswith(".") and (folder / MANIFEST_FILE).is_file()
        } if self.adapters_dir.is_dir() else set()
        for name in sorted(on_disk | set(self.installed_names())):
            self.sync(name)

    # Serving

    def rank_batch(self, served: ServedBundle, plans: list[RankingPlan]) -> list[RankedItems]:
        """Run one forward pass for ``plans`` (all for ``served``) and rank each row."""
        histories = [plan.model_history for plan in plans]
        with self.forward_lock, torch.inference_mode():
            if self.prefix_cache:
                counter = self.metrics.prefix_cache_hits if served.module.prefix_cached() else self.metrics.prefix_cache_misses
                counter.inc()
            scores = served.module.score_histories(histories, use_prefix_cache=self.prefix_cache).float()
            return [top_k(row, plan.excluded, plan.k) for row, plan in zip(scores, plans, strict=True)]

    def rank_mixed(self, plans: list[RankingPlan]) -> list[RankedItems]:
        """Run one forward pass for plans of several bundles, each row with its own adapter."""
        rows = [(plan.served.module, plan.model_history) for plan in plans]
        with self.forward_lock, torch.inference_mode():
            scores = score_mixed_batch(self.backbone, rows)
            return [top_k(row.float(), plan.excluded, plan.k) for row, plan in zip(scores, plans, strict=True)]
