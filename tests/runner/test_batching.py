import numpy as np
import pytest
import torch

from lensllm.trial.examples import IGNORE, Example, collate, length_grouped, make_batch, token_budget_batches
from lensllm.trial.memory import eval_batches


def lognormal_lengths(n: int, seed: int = 0) -> list[int]:
    """Lengths like instruction data: median 150 tokens, cut at 512 (the issue's benchmark shape)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.lognormal(np.log(150), 0.8, size=n)), 8, 512).astype(int).tolist()


def padding(lengths: list[int], batches: list[list[int]]) -> float:
    positions = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / positions


def test_length_grouped_batches_hold_every_example_once_and_repeat_under_the_seed():
    lengths = lognormal_lengths(1000)
    first = length_grouped(lengths, 8, torch.Generator().manual_seed(3))
    again = length_grouped(lengths, 8, torch.Generator().manual_seed(3))
    other = length_grouped(lengths, 8, torch.Generator().manual_seed(4))
    assert first == again and first != other
    assert sorted(i for b in first for i in b) == list(range(1000))
    assert sum(len(b) < 8 for b in first) <= 1  # only the last window's remainder is short


def test_length_grouped_batches_pad_under_five_percent_where_random_batches_pad_about_half():
    lengths = lognormal_lengths(4096)
    grouped = length_grouped(lengths, 8, torch.Generator().manual_seed(0))
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert padding(lengths, grouped) < 0.05
    assert padding(lengths, shuffled) > 0.4


def test_length_grouped_batches_still_mix_lengths_across_the_epoch():
    """Batches come in random order: the first and second half of an epoch see similar lengths."""
    lengths = lognormal_lengths(4096)
    grouped = length_grouped(lengths, 8, torch.Generator().manual_seed(0))
    means = [np.mean([lengths[i] for b in half for i in b]) for half in (grouped[:256], grouped[256:])]
    assert means[0] == pytest.approx(means[1], rel=0.15)


def test_evaluation_batches_keep_the_token_budget_and_at_most_ten_percent_padding_per_example():
    lengths = lognormal_lengths(512)
    batches = eval_batches(lengths, max_tokens=4096, max_examples=64)
    assert sorted(i for b in batches for i in b) == list(range(512))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * width <= 4096
        assert min(lengths[i] for i in batch) >= 0.9 * width
    assert padding(lengths, batches) < 0.06


def test_token_budget_batches_group_the_examples_themselves():
    examples = [Example([1] * n, [IGNORE] + [1] * (n - 1), n, n) for n in (5, 30, 29, 6, 31)]
    batches = token_budget_batches(examples, max_tokens=100, max_examples=8)
    assert [[len(e.input_ids) for e in b] for b in batches] == [[31, 30, 29], [6], [5]]


def test_collate_lists_each_scored_position_with_the_token_it_predicts():
    a = Example([2, 10, 11, 12], [IGNORE, IGNORE, 11, 12], 3, 4)  # prompt [2, 10], target [11, 12]
    b = Example([2, 20, 21], [IGNORE, 20, 21], 2, 3)
    batch = collate([a, b], pad_id=0, seq2seq=False, device=torch.device("cpu"))
    assert batch["score_index"].tolist() == [1, 2, 4, 5]  # rows are 4 wide: row 0 positions 1, 2; row 1 positions 0, 1
    assert batch["score_target"].tolist() == [11, 12, 20, 21]
    assert batch["score_example"].tolist() == [0, 0, 1, 1]
    counted = make_batch([a, b], pad_id=0, seq2seq=False, device=torch.device("cpu"))
    assert (counted.tokens, counted.positions, counted.scored, counted.padding) == (7, 8, 4, 1)
