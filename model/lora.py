"""Attach, activate and remove LoRA adapters on a shared backbone through peft.

Every bundle's LoRA weights become one named peft adapter on the same
``PeftModel``, so many bundles share one copy of the frozen backbone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from model.backbone import Backbone

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters, stored in every bundle's manifest."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))

    def to_dict(self) -> dict:
        return asdict(self)

    def peft_config(self, inference_mode: bool) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            inference_mode=inference_mode,
        )


def attach_adapter(
    backbone: Backbone,
    adapter_name: str,
    settings: LoraSettings,
    state_dict: dict[str, torch.Tensor] | None = None,
    trainable: bool = False,
) -> None:
    """Add a LoRA adapter named ``adapter_name`` and load ``state_dict`` into it.

    ``state_dict`` uses peft's on-disk key format (``adapter_model.safetensors``).
    Without it the adapter starts as peft initialises it (B = 0, a no-op).
    """
    config = settings.peft_config(inference_mode=not trainable)
    if backbone.peft_model is None:
        backbone.peft_model = get_peft_model(backbone.model, config, adapter_name=adapter_name)
    else:
        backbone.peft_model.add_adapter(adapter_name, config)

    peft_model: PeftModel = backbone.peft_model
    if state_dict is not None:
        result = set_peft_model_state_dict(peft_model, state_dict, adapter_name=adapter_name)
        unexpected = [key for key in result.unexpected_keys if "lora_" in key]
        if unexpected:
            remove_adapter(backbone, adapter_name)
            raise ValueError(f"LoRA weights contain unexpected tensors: {unexpected[:5]}")

    for name, parameter in peft_model.named_parameters():
        if f".{adapter_name}." in name:
            parameter.requires_grad_(trainable)
            if not trainable:
                parameter.data = parameter.data.to(backbone.dtype)

    # Freshly injected LoRA layers start in training mode, which would make
    # LoRA dropout active at serving time.
    peft_model.train(trainable)
    activate_adapter(backbone, adapter_name)


def activate_adapter(backbone: Backbone, adapter_name: str) -> None:
    peft_model = backbone.peft_model
    if peft_model is None:
        raise RuntimeError("no LoRA adapter is attached to the backbone")
    if peft_model.active_adapter != adapter_name:
        peft_model.base_model.set_adapter(adapter_name)


def remove_adapter(backbone: Backbone, adapter_name: str) -> None:
    peft_model = backbone.peft_model
    if peft_model is None or adapter_name not in peft_model.peft_config:
        return
    if len(peft_model.peft_config) == 1:
        # peft cannot delete the last adapter, so the adapter layers are
        # unloaded instead, which leaves the plain backbone.
        backbone.model = peft_model.unload()
        backbone.peft_model = None
        return
    peft_model.delete_adapter(adapter_name)


def adapter_state_dict(backbone: Backbone, adapter_name: str) -> dict[str, torch.Tensor]:
    """Return the adapter's weights in peft's on-disk key format."""
    state = get_peft_model_state_dict(backbone.peft_model, adapter_name=adapter_name)
    return {key: tensor.detach().float().cpu().contiguous() for key, tensor in state.items()}
