"""One forward pass over histories of different bundles on the same backbone.

Each row is built by its own bundle's module (ID table, projector, prompt),
the rows are left-padded to a common length, and peft applies each row's own
LoRA adapter inside the shared decoder. Each row's last state then goes
through its own bundle's scoring head.
"""

from __future__ import annotations

import torch

from model.backbone import Backbone
from model.e4srec import E4SRec


def score_mixed_batch(backbone: Backbone, rows: list[tuple[E4SRec, list[int]]]) -> list[torch.Tensor]:
    """Return one score vector per ``(module, history)`` row, each of its bundle's length."""
    if backbone.peft_model is None:
        raise RuntimeError("no bundle is attached to the backbone")
    built = [module.build_inputs([module.truncate(history)]) for module, history in rows]
    length = max(inputs_embeds.shape[1] for inputs_embeds, _, _ in built)

    embeds, masks, positions = [], [], []
    for inputs_embeds, attention_mask, position_ids in built:
        pad = length - inputs_embeds.shape[1]
        embeds.append(torch.nn.functional.pad(inputs_embeds, (0, 0, pad, 0)))
        masks.append(torch.nn.functional.pad(attention_mask, (pad, 0)))
        positions.append(torch.nn.functional.pad(position_ids, (pad, 0)))
    adapter_names = [module.adapter_name for module, _ in rows]

    # NOTE: _enable_peft_forward_hooks is peft's internal route for
    # per-row adapters (what PeftModel.forward(adapter_names=...) uses); it is
    # called directly because only the decoder, not the language-model head,
    # is run. Checked against peft 0.21.2.
    with backbone.peft_model._enable_peft_forward_hooks(adapter_names=adapter_names):
        output = backbone.decoder(
            inputs_embeds=torch.cat(embeds),
            attention_mask=torch.cat(masks),
            position_ids=torch.cat(positions),
            use_cache=False,
        )
    last = output.last_hidden_state[:, -1]
    return [module.score_states(last[index : index + 1])[0] for index, (module, _) in enumerate(rows)]
