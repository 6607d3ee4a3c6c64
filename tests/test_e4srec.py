import pytest
import torch

from model.e4srec import HEAD_LINEAR, E4SRec, E4SRecConfig
from model.lora import LoraSettings, attach_adapter


def _module(backbone, head="tied", response="", max_history_length=20):
    config = E4SRecConfig(
        num_items=30,
        id_dim=8,
        hidden_size=backbone.hidden_size,
        max_history_length=max_history_length,
        instruction_ids=backbone.encode_text("rank items"),
        response_ids=backbone.encode_text(response),
        head=head,
        lora=LoraSettings(r=4),
    )
    module = E4SRec(backbone, config, adapter_name="unit--test")
    torch.nn.init.normal_(module.id_embeddings.weight)
    attach_adapter(backbone, "unit--test", config.lora)
    for name, parameter in backbone.peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    return module.eval()


@pytest.mark.parametrize("response", ["", "answer:"])
def test_scores_do_not_depend_on_batch_padding(tiny_backbone, response):
    module = _module(tiny_backbone, response=response)
    short = [3, 4]

    with torch.inference_mode():
        alone = module.score_histories([short])[0]
        batched = module.score_histories([short, list(range(1, 21))])[0]

    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_linear_head_scores_every_item(tiny_backbone):
    module = _module(tiny_backbone, head=HEAD_LINEAR)

    with torch.inference_mode():
        scores = module.score_histories([[1, 2]])

    assert scores.shape == (1, 31)
    assert scores.dtype == torch.float32


def test_history_is_truncated_to_most_recent_items(tiny_backbone):
    module = _module(tiny_backbone, max_history_length=3)

    with torch.inference_mode():
        long = module.score_histories([[9, 8, 7, 1, 2, 3]])
        recent = module.score_histories([[1, 2, 3]])

    assert module.truncate([9, 8, 7, 1, 2, 3]) == [1, 2, 3]
    torch.testing.assert_close(long, recent)


def test_dense_loss_supervises_every_position(tiny_backbone):
    module = _module(tiny_backbone).train()

    loss, targets = module.training_loss([[1, 2, 3, 4], [5, 6]])

    assert targets == 4
    assert torch.isfinite(loss)


def test_response_position_adds_final_target(tiny_backbone):
    module = _module(tiny_backbone, response="answer:").train()

    _, targets = module.training_loss([[1, 2, 3, 4], [5, 6]])

    assert targets == 6


def test_dense_loss_equals_per_prefix_losses(tiny_backbone):
    module = _module(tiny_backbone).eval()
    sequence = [4, 9, 2, 7]

    with torch.no_grad():
        dense, targets = module.training_loss([sequence])
        prefix_losses = []
        for end in range(1, len(sequence)):
            scores = module.score_histories([sequence[:end]])
            prefix_losses.append(torch.nn.functional.cross_entropy(scores, torch.tensor([sequence[end]])))

    assert targets == 3
    torch.testing.assert_close(dense, torch.stack(prefix_losses).mean(), atol=1e-4, rtol=1e-4)


def test_empty_history_is_rejected(tiny_backbone):
    module = _module(tiny_backbone)

    with pytest.raises(ValueError, match="at least one item"):
        module.score_histories([[]])


def test_hidden_size_mismatch_is_rejected(tiny_backbone):
    config = E4SRecConfig(num_items=5, id_dim=4, hidden_size=tiny_backbone.hidden_size + 1)

    with pytest.raises(ValueError, match="hidden size"):
        E4SRec(tiny_backbone, config, adapter_name="bad--size")


@pytest.mark.parametrize("response", ["", "answer:"])
def test_prefix_cache_matches_uncached_scores(tiny_backbone, response):
    module = _module(tiny_backbone, response=response)
    histories = [[3, 4], list(range(1, 15)), [7]]

    with torch.inference_mode():
        plain = module.score_histories(histories)
        cached_first = module.score_histories(histories, use_prefix_cache=True)
        cached_again = module.score_histories(histories[::-1], use_prefix_cache=True)

    assert module.prefix_cached()
    torch.testing.assert_close(cached_first, plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached_again, plain.flip(0), atol=1e-4, rtol=1e-4)
