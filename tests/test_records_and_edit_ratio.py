"""Per-problem records keep the problem's meta; the edit-distance ratio compares token ids by value."""

import json

from selfcorrect.results import problem_record
from selfcorrect.tasks.base import CORRECT, WRONG_ANSWER, Problem, Verdict


def test_problem_record_keeps_the_problems_meta():
    """Problem.meta is documented as 'kept in per-problem records' (level, subject, entry point):
    without it a MATH evaluation cannot be broken down by level or subject from records.jsonl."""
    problem = Problem(id="p1", question="1+1?", reference="2",
                      meta={"level": 3, "subject": "Algebra", "odd": {1, 2}})
    record = problem_record(problem, ["3", "2"], [Verdict(0.0, "3", WRONG_ANSWER), Verdict(1.0, "2", CORRECT)],
                            [[5], [6]], [False, False])
    assert record["meta"]["level"] == 3 and record["meta"]["subject"] == "Algebra"
    assert record["meta"]["odd"] == repr({1, 2})  # a value JSON cannot hold is kept as its repr
    json.dumps(record)  # the record still goes into records.jsonl


def test_edit_distance_ratio_of_token_id_tensors_compares_values():
    """Token ids held in a tensor: torch hashes a tensor element by identity, so equal ids were
    different items and two identical attempts scored 0.5 instead of 0 (no edit)."""
    import numpy as np
    import torch

    from selfcorrect.metrics import edit_distance_ratio

    ids = torch.tensor([5, 6, 7])
    assert edit_distance_ratio(ids, ids.clone()) == 0.0
    assert edit_distance_ratio(ids, torch.tensor([5, 6, 8])) == edit_distance_ratio([5, 6, 7], [5, 6, 8])
    assert edit_distance_ratio(np.array([1, 2]), np.array([1, 2])) == 0.0
