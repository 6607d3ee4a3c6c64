"""Builders for the tiny random backbone and synthetic data used by the tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_HIDDEN = 64


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer, hidden-64 random Llama model as a Hugging Face folder."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=TINY_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder


def synthetic_sequences(num_users: int, num_items: int, seed: int = 0, min_length: int = 5, max_length: int = 12) -> list[list[int]]:
    """Sequences with a learnable rule: after item i comes item i + 1 (wrapping), with some noise.

    A model that learns the rule ranks the next item near the top; random
    ranking gives HR@10 of about 10 / num_items.
    """
    rng = random.Random(seed)
    sequences = []
    for _ in range(num_users):
        length = rng.randint(min_length, max_length)
        item = rng.randint(1, num_items)
        sequence = []
        for _ in range(length):
            sequence.append(item)
            step = 1 if rng.random() < 0.9 else rng.randint(2, 5)
            item = (item + step - 1) % num_items + 1
        sequences.append(sequence)
    return sequences


def write_sequences_txt(path: Path, sequences: list[list[int]]) -> Path:
    lines = [" ".join(str(value) for value in [user, *sequence]) for user, sequence in enumerate(sequences, start=1)]
    path.write_text("\n".join(lines) + "\n")
    return path
