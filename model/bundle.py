"""Adapter bundles on disk: write, read and validate.

A bundle is a folder named after the bundle::

    manifest.json              format version, name, version, backbone, model config, training, metrics
    e4srec.safetensors         id_embeddings.weight, projector.*, head.*
    adapter_config.json        LoRA configuration in peft's format
    adapter_model.safetensors  LoRA weights in peft's format

Only safetensors files are read, so loading a bundle never unpickles anything.
The version is a content hash of the tensor files and the model config, so two
bundles with the same version serve the same scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.backbone import Backbone
from model.e4srec import HEAD_LINEAR, HEAD_TIED, E4SRec, E4SRecConfig
from model.lora import LoraSettings, adapter_state_dict, attach_adapter, remove_adapter

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODULE_FILE = "e4srec.safetensors"
LORA_CONFIG_FILE = "adapter_config.json"
LORA_WEIGHTS_FILE = "adapter_model.safetensors"
BUNDLE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class BundleError(ValueError):
    """Raised when a bundle is missing, malformed or does not fit the backbone."""


@dataclass
class Manifest:
    name: str
    version: str
    backbone: dict
    model: E4SRecConfig
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        values = asdict(self)
        values["model"] = self.model.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Manifest:
        values = dict(values)
        values["model"] = E4SRecConfig.from_dict(values["model"])
        return cls(**values)


@dataclass
class Bundle:
    """A bundle read into memory and validated, ready to attach to a backbone."""

    manifest: Manifest
    module_tensors: dict[str, torch.Tensor]
    lora_tensors: dict[str, torch.Tensor]
    path: Path

    @property
    def adapter_name(self) -> str:
        # peft stores adapters in ModuleDicts, whose keys must not contain dots.
        return f"{self.manifest.name}--{self.manifest.version}"

    @property
    def nbytes(self) -> int:
        """Bytes of all bundle tensors in memory, as read (float32 for bundles written here)."""
        tensors = [*self.module_tensors.values(), *self.lora_tensors.values()]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def validate_bundle_name(name: str) -> None:
    if not BUNDLE_NAME_PATTERN.match(name):
        raise BundleError(
            f"bundle name {name!r} is invalid; use 1 to 64 characters from a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )


def content_version(folder: Path, config: E4SRecConfig) -> str:
    digest = hashlib.sha256()
    for file_name in (MODULE_FILE, LORA_WEIGHTS_FILE):
        with open(folder / file_name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:12]


def write_bundle(
    module: E4SRec,
    folder: Path,
    name: str,
    training: dict | None = None,
    metrics: dict | None = None,
) -> Manifest:
    """Write ``module`` and its LoRA adapter as bundle ``name`` into ``folder``.

    The files are written into a temporary sibling folder that then replaces
    ``folder``, so a crash never leaves a half-written bundle behind.
    """
    validate_bundle_name(name)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        save_file(module.bundle_tensors(), str(staging / MODULE_FILE))
        save_file(adapter_state_dict(module.backbone, module.adapter_name), str(staging / LORA_WEIGHTS_FILE))
        lora_config = module.config.lora.peft_config(inference_mode=True)
        lora_config.base_model_name_or_path = module.backbone.name
        lora_config.save_pretrained(str(staging))

        manifest = Manifest(
            name=name,
            version=content_version(staging, module.config),
            backbone={
                "name": module.backbone.name,
                "fingerprint": module.backbone.fingerprint,
                "hidden_size": module.backbone.hidden_size,
            },
            model=module.config,
            training=training or {},
            metrics=metrics or {},
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")

        # mkdtemp creates private folders; bundles are shared read-only data.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)

        if folder.exists():
            retired = folder.with_name(f".{folder.name}-old-{os.getpid()}")
            os.replace(folder, retired)
            os.replace(staging, folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote bundle %s@%s to %s", manifest.name, manifest.version, folder)
    return manifest


def read_json_object(path: Path) -> dict:
    """Read a JSON file that must contain one object, such as a manifest, and raise BundleError if it does not."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise BundleError(f"{path} must contain a JSON object, found {type(values).__name__}")
    return values


def read_manifest(folder: Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{folder} is not a bundle: {MANIFEST_FILE} is missing")
    values = read_json_object(path)
    if values.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {values.get('format_version')!r} is not supported; expected {FORMAT_VERSION}")
    try:
        manifest = Manifest.from_dict(values)
    except (KeyError, TypeError) as error:
        raise BundleError(f"{path}: manifest does not match the bundle schema ({error})") from None
    validate_bundle_name(manifest.name)
    _check_model_config(manifest.model, path)
    return manifest


def _check_model_config(config: E4SRecConfig, where: Path) -> None:
    checks = {
        "num_items": config.num_items >= 1,
        "id_dim": config.id_dim >= 1,
        "hidden_size": config.hidden_size >= 1,
        "max_history_length": config.max_history_length >= 1,
        "lora.r": config.lora.r >= 1,
        "head": config.head in (HEAD_TIED, HEAD_LINEAR),
    }
    for field_name, valid in checks.items():
        if not valid:
            raise BundleError(f"{where}: model.{field_name} has an invalid value")


def expected_module_shapes(config: E4SRecConfig) -> dict[str, tuple[int, ...]]:
    rows = config.num_items + 1
    shapes = {
        "id_embeddings.weight": (rows, config.id_dim),
        "projector.weight": (config.hidden_size, config.id_dim),
        "projector.bias": (config.hidden_size,),
    }
    if config.head == HEAD_TIED:
        shapes.update({
            "head.proj.weight": (config.id_dim, config.hidden_size),
            "head.proj.bias": (config.id_dim,),
            "head.item_bias": (rows,),
        })
    else:
        shapes.update({"head.weight": (rows, config.hidden_size), "head.bias": (rows,)})
    return shapes


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BundleError(f"bundle file {path.name} is missing from {path.parent}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{path.name} is not a readable safetensors file: {error}") from None


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], file_name: str) -> None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise BundleError(f"{file_name}: missing tensors {missing}, unexpected tensors {extra}")
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise BundleError(f"{file_name}: tensor {name} has shape {tuple(tensor.shape)}, expected {shape}")
        if not tensor.is_floating_point():
            raise BundleError(f"{file_name}: tensor {name} has dtype {tensor.dtype}, expected a floating-point dtype")
        if not torch.isfinite(tensor).all():
            raise BundleError(f"{file_name}: tensor {name} contains NaN or infinite values")


def _check_lora_tensors(tensors: dict[str, torch.Tensor], lora: LoraSettings) -> None:
    if not tensors:
        raise BundleError(f"{LORA_WEIGHTS_FILE} contains no tensors")
    for name, tensor in tensors.items():
        if not any(f".{target}." in name for target in lora.target_modules):
            raise BundleError(f"{LORA_WEIGHTS_FILE}: tensor {name} is not in a target module {lora.target_modules}")
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise BundleError(f"{LORA_WEIGHTS_FILE}: tensor {name} is not a finite floating-point tensor")
        if "lora_A" in name and tensor.shape[0] != lora.r:
            raise BundleError(f"{LORA_WEIGHTS_FILE}: tensor {name} has rank {tensor.shape[0]}, but the manifest sets r={lora.r}; fix the manifest or retrain")
        if "lora_B" in name and tensor.shape[1] != lora.r:
            raise BundleError(f"{LORA_WEIGHTS_FILE}: tensor {name} has rank {tensor.shape[1]}, but the manifest sets r={lora.r}; fix the manifest or retrain")


def read_bundle(folder: Path, expected_fingerprint: str | None = None) -> Bundle:
    """Read and validate a bundle folder; raise ``BundleError`` naming the first problem."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if expected_fingerprint is not None and manifest.backbone.get("fingerprint") != expected_fingerprint:
        raise BundleError(
            f"bundle {manifest.name}@{manifest.version} was trained on backbone {manifest.backbone.get('name')} "
            f"with fingerprint {manifest.backbone.get('fingerprint')}, but the loaded backbone has fingerprint "
            f"{expected_fingerprint}; retrain the bundle on this backbone or serve the matching one"
        )
    module_tensors = _load_tensors(folder / MODULE_FILE)
    _check_tensors(module_tensors, expected_module_shapes(manifest.model), MODULE_FILE)
    lora_tensors = _load_tensors(folder / LORA_WEIGHTS_FILE)
    _check_lora_tensors(lora_tensors, manifest.model.lora)

    actual_version = content_version(folder, manifest.model)
    if actual_version != manifest.version:
        raise BundleError(
            f"bundle {manifest.name}: content hash {actual_version} differs from manifest version "
            f"{manifest.version}; the files were changed after the bundle was written"
        )
    return Bundle(manifest=manifest, module_tensors=module_tensors, lora_tensors=lora_tensors, path=folder)


def instantiate(backbone: Backbone, bundle: Bundle, adapter_name: str | None = None) -> E4SRec:
    """Attach ``bundle`` to ``backbone`` and return its ready-to-serve module.

    ``adapter_name`` defaults to ``name--version``. A registry that may hold the
    same version twice (a reload while the old copy finishes its requests)
    passes a unique one. On failure nothing stays attached.
    """
    adapter_name = adapter_name or bundle.adapter_name
    if bundle.manifest.model.hidden_size != backbone.hidden_size:
        raise BundleError(
            f"bundle {bundle.manifest.name}@{bundle.manifest.version} has hidden size "
            f"{bundle.manifest.model.hidden_size}, backbone {backbone.name} has {backbone.hidden_size}"
        )
    module = E4SRec(backbone, bundle.manifest.model, adapter_name=adapter_name)
    module.load_bundle_tensors(bundle.module_tensors)
    module.to(backbone.device)
    module.requires_grad_(False)
    module.eval()
    try:
        attach_adapter(backbone, adapter_name, bundle.manifest.model.lora, bundle.lora_tensors)
    except (ValueError, RuntimeError, KeyError) as error:
        remove_adapter(backbone, adapter_name)
        raise BundleError(f"bundle {bundle.manifest.name}@{bundle.manifest.version}: LoRA weights do not fit the backbone: {error}") from None
    return module
