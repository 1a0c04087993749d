"""Micro-batches: a row cap, an optional padded-token cap, every row exactly once."""

from selfcorrect.batches import micro_batches


def test_rows_only_when_no_token_budget():
    assert micro_batches([0, 1, 2, 3, 4], [5] * 5, max_rows=2) == [[0, 1], [2, 3], [4]]


def test_token_budget_counts_padding_to_the_longest_row():
    lengths = [10, 10, 10, 30, 30, 100]
    groups = micro_batches(range(6), lengths, max_rows=8, max_tokens=60)
    assert groups == [[0, 1, 2], [3, 4], [5]]  # 3 x 10; 4 x 30 would be 120; 100 alone
    assert all(len(g) * max(lengths[i] for i in g) <= 60 or len(g) == 1 for g in groups)


def test_every_row_once_in_the_given_order():
    order = [4, 2, 0, 1, 3]
    groups = micro_batches(order, [3, 1, 4, 1, 5], max_rows=3, max_tokens=8)
    assert [i for g in groups for i in g] == order
