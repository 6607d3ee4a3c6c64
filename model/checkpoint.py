"""Resumable training checkpoints for ``e4srec train``.

A checkpoint contains the trainable tensors, the optimizer state and the step
count. The batch order of every epoch is a function of the seed and the epoch,
so a resumed run continues with exactly the batches the interrupted run would
have seen next.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.backbone import Backbone
from model.e4srec import E4SRec
from model.lora import adapter_state_dict

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
MODULE_FILE = "module.safetensors"
LORA_FILE = "lora.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class TrainingState:
    step: int = 0
    targets: int = 0
    elapsed_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    valid_curve: list[dict] = field(default_factory=list)


@dataclass
class BestState:
    """The weights with the best validation NDCG@10 so far, for early stopping."""

    step: int
    ndcg_at_10: float
    module_tensors: dict[str, torch.Tensor]
    lora_tensors: dict[str, torch.Tensor]

    @classmethod
    def capture(cls, module: E4SRec, backbone: Backbone, adapter_name: str, step: int, ndcg_at_10: float) -> BestState:
        # bundle_tensors() and adapter_state_dict() return the live float32 CPU
        # parameters themselves, so without a copy training would change the capture.
        module_tensors = {name: tensor.clone() for name, tensor in module.bundle_tensors().items()}
        lora_tensors = {name: tensor.clone() for name, tensor in adapter_state_dict(backbone, adapter_name).items()}
        return cls(step, ndcg_at_10, module_tensors, lora_tensors)

    def restore(self, module: E4SRec, backbone: Backbone, adapter_name: str) -> None:
        from peft import set_peft_model_state_dict

        module.load_bundle_tensors(self.module_tensors)
        set_peft_model_state_dict(backbone.peft_model, self.lora_tensors, adapter_name=adapter_name)
        module.drop_prefix_cache()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.module_tensors, str(folder / "best_module.safetensors"))
        save_file(self.lora_tensors, str(folder / "best_lora.safetensors"))
        (folder / "best.json").write_text(json.dumps({"step": self.step, "ndcg_at_10": self.ndcg_at_10}))

    @classmethod
    def load(cls, folder: Path) -> BestState | None:
        if not (folder / "best.json").exists():
            return None
        values = json.loads((folder / "best.json").read_text())
        return cls(
            values["step"], values["ndcg_at_10"],
            load_file(str(folder / "best_module.safetensors")), load_file(str(folder / "best_lora.safetensors")),
        )


def save_checkpoint(
    folder: Path,
    module: E4SRec,
    backbone: Backbone,
    adapter_name: str,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    elapsed_s: float,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / ".staging"
    staging.mkdir(exist_ok=True)
    save_file(module.bundle_tensors(), str(staging / MODULE_FILE))
    save_file(adapter_state_dict(backbone, adapter_name), str(staging / LORA_FILE))
    # The RNG state makes LoRA dropout after a resume draw the same masks as
    # an uninterrupted run would.
    torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, staging / OPTIMIZER_FILE)
    saved = TrainingState(
        step=state.step, targets=state.targets, elapsed_s=elapsed_s, losses=state.losses, valid_curve=state.valid_curve
    )
    (staging / STATE_FILE).write_text(json.dumps(asdict(saved)))

    # state.json is replaced last, so it never points at files of another step.
    for name in (MODULE_FILE, LORA_FILE, OPTIMIZER_FILE, STATE_FILE):
        os.replace(staging / name, folder / name)
    logger.info("checkpoint at step %d written to %s", state.step, folder)


def load_checkpoint(
    folder: Path,
    module: E4SRec,
    backbone: Backbone,
    adapter_name: str,
    optimizer: torch.optim.Optimizer,
) -> TrainingState | None:
    """Restore a checkpoint into ``module``, the adapter and ``optimizer``; None when there is none."""
    if not (folder / STATE_FILE).exists():
        return None
    from peft import set_peft_model_state_dict

    module.load_bundle_tensors(load_file(str(folder / MODULE_FILE)))
    set_peft_model_state_dict(backbone.peft_model, load_file(str(folder / LORA_FILE)), adapter_name=adapter_name)
    # weights_only=True restricts unpickling to tensors and plain containers.
    saved = torch.load(folder / OPTIMIZER_FILE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    values = json.loads((folder / STATE_FILE).read_text())
    return TrainingState(**values)
