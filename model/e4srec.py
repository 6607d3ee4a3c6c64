"""The E4SRec module: item-ID embeddings fed through a frozen LLM with LoRA.

Input layout for one history, left-padded to the batch's longest row::

    [pad ... pad] instruction tokens | projected history items | response tokens

The hidden state at the last position goes through the scoring head, which
returns one score per item ID (index 0 is the padding ID), so a single forward
pass ranks the whole catalogue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import DynamicCache

from model.backbone import Backbone
from model.data import PADDING_ID
from model.lora import LoraSettings, activate_adapter

HEAD_TIED = "tied"
HEAD_LINEAR = "linear"

DEFAULT_INSTRUCTION = "Given the user's purchase history, predict the next item."


@dataclass
class E4SRecConfig:
    """Everything besides tensors that a bundle needs to rebuild its module."""

    num_items: int
    id_dim: int
    hidden_size: int
    max_history_length: int = 20
    instruction: str = DEFAULT_INSTRUCTION
    response: str = ""
    instruction_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    head: str = HEAD_TIED
    lora: LoraSettings = field(default_factory=LoraSettings)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> E4SRecConfig:
        values = dict(values)
        values["lora"] = LoraSettings(**values.get("lora", {}))
        return cls(**values)


class TiedHead(nn.Module):
    """Scores items by the dot product of a projected state with the ID table.

    Starting from a good ID table (SASRec's), this head ranks well from the
    first step, and an item added to the table is scored without retraining.
    """

    def __init__(self, hidden_size: int, id_dim: int, num_rows: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, id_dim)
        self.item_bias = nn.Parameter(torch.zeros(num_rows))

    def forward(self, states: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        return self.proj(states) @ item_table.T + self.item_bias


class E4SRec(nn.Module):
    """ID table, input projector and scoring head around one LoRA adapter.

    The backbone is shared with other bundles and is not a submodule, so the
    module's ``state_dict`` contains exactly the bundle's own tensors.
    """

    def __init__(self, backbone: Backbone, config: E4SRecConfig, adapter_name: str):
        super().__init__()
        if config.hidden_size != backbone.hidden_size:
            raise ValueError(
                f"bundle hidden size {config.hidden_size} does not match backbone {backbone.name} "
                f"hidden size {backbone.hidden_size}"
            )
        self._backbone = [backbone]
        self.config = config
        self.adapter_name = adapter_name
        num_rows = config.num_items + 1
        self.id_embeddings = nn.Embedding(num_rows, config.id_dim, padding_idx=PADDING_ID)
        self.id_embeddings.weight.requires_grad_(False)
        self.projector = nn.Linear(config.id_dim, config.hidden_size)
        if config.head == HEAD_TIED:
            self.head: nn.Module = TiedHead(config.hidden_size, config.id_dim, num_rows)
        elif config.head == HEAD_LINEAR:
            self.head = nn.Linear(config.hidden_size, num_rows)
        else:
            raise ValueError(f"head {config.head!r} is not supported; use {HEAD_TIED!r} or {HEAD_LINEAR!r}")
        self.register_buffer("instruction_ids", torch.tensor(config.instruction_ids, dtype=torch.long), persistent=False)
        self.register_buffer("response_ids", torch.tensor(config.response_ids, dtype=torch.long), persistent=False)
        self._prefix_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def train(self, mode: bool = True) -> E4SRec:
        # The LoRA layers live in the shared backbone, outside this module's
        # children, so their dropout follows this module's mode explicitly.
        # Training changes the LoRA weights the instruction's keys and values
        # depend on, so a cached prefix is dropped here.
        super().train(mode)
        if mode:
            self.drop_prefix_cache()
        if self.backbone.peft_model is not None:
            self.backbone.peft_model.train(mode)
        return self

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    @property
    def num_items(self) -> int:
        return self.config.num_items

    def truncate(self, history: list[int]) -> list[int]:
        """Keep the most recent ``max_history_length`` items."""
        return list(history[-self.config.max_history_length :])

    def build_inputs(
        self, histories: list[list[int]], include_instruction: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return left-padded ``inputs_embeds``, ``attention_mask`` and ``position_ids``.

        Without the instruction, the rows hold only items and response tokens,
        to follow a cached instruction prefix: the mask and positions then
        cover the prefix too, as if the prefix were part of every row.
        """
        backbone = self.backbone
        device = backbone.device
        instruction = backbone.input_embeddings(self.instruction_ids)
        response = backbone.input_embeddings(self.response_ids)
        prefix_length = instruction.shape[0]
        head = instruction if include_instruction else instruction[:0]
        longest = max(len(history) for history in histories)
        total = head.shape[0] + longest + response.shape[0]

        rows, masks = [], []
        for history in histories:
            items = torch.as_tensor(history, dtype=torch.long, device=device)
            projected = self.projector(self.id_embeddings(items)).to(instruction.dtype)
            pad = total - head.shape[0] - len(history) - response.shape[0]
            padding = instruction.new_zeros(pad, instruction.shape[1])
            rows.append(torch.cat([padding, head, projected, response]))
            mask = torch.ones(total, dtype=torch.long, device=device)
            mask[:pad] = 0
            masks.append(mask)
        inputs_embeds = torch.stack(rows)
        attention_mask = torch.stack(masks)

        # Left padding keeps every row's last position at index -1. Position ids
        # come from the mask so a row's real tokens get positions 0, 1, ... no
        # matter how much padding precedes them, which makes its scores
        # independent of what else is in the batch.
        if not include_instruction:
            prefix_mask = attention_mask.new_ones(len(histories), prefix_length)
            attention_mask = torch.cat([prefix_mask, attention_mask], dim=1)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        return inputs_embeds, attention_mask, position_ids[:, -total:]

    def hidden_states(self, histories: list[list[int]]) -> torch.Tensor:
        if not histories or any(len(history) == 0 for history in histories):
            raise ValueError("every history needs at least one item")
        activate_adapter(self.backbone, self.adapter_name)
        inputs_embeds, attention_mask, position_ids = self.build_inputs(histories)
        output = self.backbone.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        return output.last_hidden_state

    @property
    def prefix_length(self) -> int:
        return self.instruction_ids.numel()

    def prefix_cached(self) -> bool:
        return self._prefix_key_values is not None

    def drop_prefix_cache(self) -> None:
        """Forget the cached keys and values of the instruction. Call this after changing LoRA weights."""
        self._prefix_key_values = None

    def _prefix_cache(self, batch_size: int) -> DynamicCache:
        """Return a key/value cache of the instruction tokens, repeated for ``batch_size`` rows.

        The instruction is the same for every request of a bundle, but its keys
        and values depend on the bundle's LoRA weights, so the cache belongs to
        the module (one bundle version) and is computed on first use.
        """
        if self._prefix_key_values is None:
            instruction = self.backbone.input_embeddings(self.instruction_ids).unsqueeze(0)
            positions = torch.arange(self.prefix_length, device=self.backbone.device).unsqueeze(0)
            output = self.backbone.decoder(inputs_embeds=instruction, position_ids=positions, use_cache=True)
            self._prefix_key_values = [(layer.keys, layer.values) for layer in output.cache.layers]
        expanded = [
            (keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1))
            for keys, values in self._prefix_key_values
        ]
        return DynamicCache(ddp_cache_data=expanded)

    def hidden_states_with_prefix_cache(self, histories: list[list[int]]) -> torch.Tensor:
        """Last-layer states of the items and response only, reusing the cached instruction prefix."""
        if not histories or any(len(history) == 0 for history in histories):
            raise ValueError("every history needs at least one item")
        if self.prefix_length == 0:
            return self.hidden_states(histories)
        activate_adapter(self.backbone, self.adapter_name)
        inputs_embeds, attention_mask, position_ids = self.build_inputs(histories, include_instruction=False)
        output = self.backbone.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=self._prefix_cache(len(histories)),
            use_cache=True,
        )
        return output.last_hidden_state

    def score_states(self, states: torch.Tensor) -> torch.Tensor:
        """Map backbone states of shape (..., hidden) to float32 item scores (..., num_items + 1)."""
        states = states.float()
        if isinstance(self.head, TiedHead):
            return self.head(states, self.id_embeddings.weight.float())
        return self.head(states)

    def score_histories(self, histories: list[list[int]], use_prefix_cache: bool = False) -> torch.Tensor:
        """Score every item ID for each history (truncated to the maximum length).

        ``use_prefix_cache`` reuses the instruction's keys and values across
        calls; it is for inference only, since the cache is not differentiated.
        """
        truncated = [self.truncate(history) for history in histories]
        if use_prefix_cache:
            states = self.hidden_states_with_prefix_cache(truncated)
        else:
            states = self.hidden_states(truncated)
        return self.score_states(states[:, -1])

    def training_logits(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Item scores and next-item labels at every history position, from one forward pass per sequence.

        The backbone is causal, so the state at history position t depends only on
        items up to t and can be trained to predict item t + 1. One forward pass
        over a sequence therefore yields a target per item instead of one per prefix.
        With response tokens, the last response position is also trained on
        the final item, which is the position that serving reads.
        Rows follow ``supervised_labels``.
        """
        inputs = [sequence[:-1][-self.config.max_history_length :] for sequence in sequences]
        states = self.hidden_states(inputs)

        response_length = self.response_ids.numel()
        end = states.shape[1] - response_length
        gathered = []
        for row, history in enumerate(inputs):
            gathered.append(states[row, end - len(history) : end])
            if response_length:
                gathered.append(states[row, -1:])
        logits = self.score_states(torch.cat(gathered))
        labels = supervised_labels(sequences, self.config.max_history_length, with_response=response_length > 0)
        return logits, labels.to(logits.device)

    def training_loss(self, sequences: list[list[int]]) -> tuple[torch.Tensor, int]:
        """Softmax cross-entropy over all items at every supervised position; returns the mean loss and the target count."""
        logits, labels = self.training_logits(sequences)
        return nn.functional.cross_entropy(logits, labels), labels.numel()

    def bundle_tensors(self) -> dict[str, torch.Tensor]:
        """Return the module's own tensors as stored in a bundle, in float32."""
        return {name: tensor.detach().float().cpu().contiguous() for name, tensor in self.state_dict().items()}

    def load_bundle_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(tensors, strict=True)


def supervised_labels(sequences: list[list[int]], max_history_length: int, with_response: bool) -> torch.Tensor:
    """Next-item labels in the row order of ``E4SRec.training_logits``.

    Each sequence contributes its last ``max_history_length`` next items, in
    order; with a response, its final item once more for the response position.
    """
    labels = []
    for sequence in sequences:
        targets = sequence[1:][-max_history_length:]
        labels.extend(targets)
        if with_response:
            labels.append(targets[-1])
    return torch.tensor(labels, dtype=torch.long)
