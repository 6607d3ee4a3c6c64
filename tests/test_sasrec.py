import pytest
import torch

from model.sasrec import SASRec, SASRecConfig, SASRecConfigError, left_pad


def _model(block: str = "pre-norm") -> SASRec:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=30, hidden_size=16, num_blocks=2, num_heads=2, max_length=12, dropout=0.0, block=block))
    return model.eval()


@pytest.mark.parametrize("block", ["pre-norm", "query-norm"])
def test_trimmed_batch_matches_padded_batch(block):
    model = _model(block)
    histories = [[3, 4, 5], [7, 8, 9, 10, 11], [2]]

    with torch.no_grad():
        trimmed = model(left_pad(histories, 5))
        padded = model(left_pad(histories, 12))

    assert torch.allclose(trimmed, padded[:, -5:], atol=1e-5)


@pytest.mark.parametrize("block", ["pre-norm", "query-norm"])
def test_padding_leaves_scores_unchanged(block):
    model = _model(block)

    with torch.no_grad():
        alone = model.full_sort_predict([[4, 5, 6]])
        beside_a_longer_one = model.full_sort_predict([[4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9]])[:1]

    assert torch.allclose(alone, beside_a_longer_one, atol=1e-5)


def test_forward_rejects_history_above_max_length():
    model = _model()

    with pytest.raises(ValueError, match="above max_length 12"):
        model(left_pad([list(range(1, 14))], 13))


def test_empty_batch_scores_no_rows():
    model = _model()

    with torch.no_grad():
        scores = model.full_sort_predict([])

    assert scores.shape == (0, 31)


def test_position_init_matches_items():
    model = SASRec(SASRecConfig(num_items=500, hidden_size=64, max_length=50))

    item_std = model.item_embeddings.weight[1:].std().item()
    position_std = model.position_embeddings.weight.std().item()

    assert 0.015 < item_std < 0.025
    assert 0.015 < position_std < 0.025


def test_config_rejects_indivisible_heads():
    with pytest.raises(SASRecConfigError, match="num_heads 3 is invalid: it must be a positive divisor of hidden_size 64"):
        SASRecConfig(num_items=10, hidden_size=64, num_heads=3)


def test_config_rejects_zero_feedforward():
    with pytest.raises(SASRecConfigError, match="feedforward_size 0 is invalid"):
        SASRecConfig(num_items=10, feedforward_size=0)


def test_feedforward_size_sets_width():
    model = SASRec(SASRecConfig(num_items=10, hidden_size=16, num_heads=2, feedforward_size=48))

    assert model.encoder.layers[0].linear1.out_features == 48
    assert model.encoder.layers[0].linear2.in_features == 48


@pytest.mark.parametrize("block", ["pre-norm", "query-norm"])
def test_later_items_do_not_change_earlier_states(block):
    model = _model(block)

    # Positions count back from the last item, so appending items moves the
    # prefix to other positions. Equal positions leave only causality to test.
    with torch.no_grad():
        model.position_embeddings.weight.zero_()
        short = model(left_pad([[3, 4, 5]], 3))
        extended = model(left_pad([[3, 4, 5, 6, 7]], 5))

    assert torch.allclose(short, extended[:, :3], atol=1e-5)


def test_query_norm_normalises_only_the_queries():
    model = _model("query-norm")
    block = model.encoder.blocks[0]
    hidden = torch.randn(1, 4, 16) * 5
    nothing_blocked = torch.zeros(2, 4, 4, dtype=torch.bool)

    with torch.no_grad():
        queries = block.attention_norm(hidden)
        attended, _ = block.attention(queries, hidden, hidden, attn_mask=nothing_blocked, need_weights=False)
        expected = block.feedforward_norm(queries + attended)
        expected = expected + block.feedforward(expected)
        output = block(hidden, nothing_blocked)

    assert torch.allclose(output, expected, atol=1e-5)
    assert isinstance(block.feedforward[1], torch.nn.ReLU)


def test_config_rejects_unknown_block():
    with pytest.raises(SASRecConfigError, match="block 'post-norm' is invalid: choose one of pre-norm, query-norm"):
        SASRecConfig(num_items=10, block="post-norm")


def test_first_origin_counts_from_oldest_item():
    torch.manual_seed(0)
    first = SASRec(SASRecConfig(num_items=30, hidden_size=16, max_length=12, dropout=0.0, position_origin="first")).eval()
    last = SASRec(SASRecConfig(num_items=30, hidden_size=16, max_length=12, dropout=0.0, position_origin="last")).eval()
    last.load_state_dict(first.state_dict())

    # The state at the oldest item depends only on that item and its position,
    # so it matches across history lengths exactly when positions start there.
    with torch.no_grad():
        first_short, first_long = first(left_pad([[3]], 1))[0, 0], first(left_pad([[3, 4, 5]], 3))[0, 0]
        last_short, last_long = last(left_pad([[3]], 1))[0, 0], last(left_pad([[3, 4, 5]], 3))[0, 0]

    assert torch.allclose(first_short, first_long, atol=1e-5)
    assert not torch.allclose(last_short, last_long, atol=1e-3)


def test_config_rejects_unknown_position_origin():
    with pytest.raises(SASRecConfigError, match="position_origin 'middle' is invalid: choose one of last, first"):
        SASRecConfig(num_items=10, position_origin="middle")
