"""Make modified copies of a bundle folder for upload and validation tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.bundle import LORA_WEIGHTS_FILE, MANIFEST_FILE, MODULE_FILE, content_version
from model.e4srec import E4SRecConfig
from service.uploads import pack_bundle

TensorEdit = Callable[[dict[str, torch.Tensor]], None]
ManifestEdit = Callable[[dict], None]


def make_variant(
    source: Path,
    target: Path,
    name: str | None = None,
    module_edit: TensorEdit | None = None,
    lora_edit: TensorEdit | None = None,
    manifest_edit: ManifestEdit | None = None,
) -> Path:
    """Copy ``source`` to ``target``, apply the edits and give it a consistent version."""
    shutil.copytree(source, target)
    if module_edit is not None:
        tensors = load_file(str(target / MODULE_FILE))
        module_edit(tensors)
        save_file(tensors, str(target / MODULE_FILE))
    if lora_edit is not None:
        tensors = load_file(str(target / LORA_WEIGHTS_FILE))
        lora_edit(tensors)
        save_file(tensors, str(target / LORA_WEIGHTS_FILE))
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    if name is not None:
        manifest["name"] = name
    if manifest_edit is not None:
        manifest_edit(manifest)
    try:
        config = E4SRecConfig.from_dict(manifest["model"])
        manifest["version"] = content_version(target, config)
    except (KeyError, TypeError, FileNotFoundError):
        pass
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    return target


def new_version(source: Path, target: Path, shift: float = 0.5) -> Path:
    """A valid new version of the same bundle whose rankings differ."""

    def shift_bias(tensors: dict[str, torch.Tensor]) -> None:
        generator = torch.Generator().manual_seed(7)
        bias = tensors["head.item_bias"]
        tensors["head.item_bias"] = bias + shift * torch.randn(bias.shape, generator=generator)

    return make_variant(source, target, module_edit=shift_bias)


def archive(folder: Path, output: Path) -> bytes:
    return pack_bundle(folder, output).read_bytes()
