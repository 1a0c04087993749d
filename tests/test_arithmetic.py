"""The built-in arithmetic task: splits, prompts and the verifier."""

import pytest

from selfcorrect.tasks.arithmetic import (ArithmeticTask, build, extract_chat_answer, last_integer)
from selfcorrect.tasks.base import CORRECT, NO_ANSWER, WRONG_ANSWER, Problem, Task


def test_splits_are_disjoint_complete_and_sized():
    task = ArithmeticTask()
    train, test = task.load("train"), task.load("test")
    assert len(test) == 500 and len(train) == 90 * 90 - 500
    train_ids, test_ids = {p.id for p in train}, {p.id for p in test}
    assert len(train_ids) == len(train) and len(test_ids) == len(test)
    assert not train_ids & test_ids
    assert all(10 <= p.meta["a"] <= 99 and 10 <= p.meta["b"] <= 99 for p in train + test)


def test_splits_are_deterministic_and_depend_on_seed():
    first = [p.id for p in ArithmeticTask(seed=0).load("test")]
    again = [p.id for p in ArithmeticTask(seed=0).load("test")]
    other = [p.id for p in ArithmeticTask(seed=1).load("test")]
    assert first == again
    assert set(first) != set(other)
    # Pinned so a change of the split rule (which would leak train into old test sets) is seen.
    assert first[:3] == ["48+82", "13+80", "14+16"]


@pytest.mark.parametrize("options", [{}, {"digits": 1, "ops": "+-*", "style": "chat"}, {"digits": 1, "ops": "*"},
                                     {"digits": 1, "ops": "+", "n_test": 7, "seed": 5},
                                     {"digits": 1, "ops": "+", "n_test": 99, "seed": 2},  # needs the swap
                                     {"digits": 1, "ops": "+-*", "n_test": 299}])
def test_commuted_twins_share_a_split(options):
    """a + b and b + a (and a x b, b x a) are one fact: a test problem's twin is never trained on."""
    task = ArithmeticTask(**options)
    test, train = task.load("test"), task.load("train")
    assert len(test) == task.n_test
    side = {p.id: name for name, split in (("test", test), ("train", train)) for p in split}
    for p in test + train:
        a, op, b = p.meta["a"], p.meta["op"], p.meta["b"]
        if op in "+*":
            assert side[f"{b}{op}{a}"] == side[p.id], f"{p.id} and its twin are in different splits"
    twins_in_test = sum(1 for p in test if p.meta["op"] in "+*" and p.meta["a"] != p.meta["b"])
    assert twins_in_test > 0  # pairs do reach the test split (both halves), not only singletons


def test_test_split_has_exactly_n_test_problems_for_every_size():
    for ops in ("+", "*", "+-"):
        for seed in (0, 2):
            n = 100 * len(ops)
            assert [len(ArithmeticTask(digits=1, ops=ops, n_test=k, seed=seed).load("test"))
                    for k in range(1, n)] == list(range(1, n))


def test_problems_name_their_fact_as_bootstrap_cluster():
    task = ArithmeticTask(digits=1, ops="+-*", style="chat")
    assert task.problem(7, "+", 2).meta["cluster"] == task.problem(2, "+", 7).meta["cluster"] == "2+7"
    assert task.problem(7, "-", 2).meta["cluster"] != task.problem(2, "-", 7).meta["cluster"]


def test_test_split_order_does_not_put_twins_side_by_side():
    ids = [p.id for p in ArithmeticTask().load("test")]
    neighbours = sum(1 for x, y in zip(ids, ids[1:]) if x.split("+")[::-1] == y.split("+"))
    assert neighbours < 10  # hash order per problem: eval.limit takes a spread of facts


def test_split_is_not_sorted_by_operand():
    test = ArithmeticTask().load("test")
    a_values = [p.meta["a"] for p in test]
    assert a_values != sorted(a_values)
    assert len({p.meta["a"] for p in test}) > 60  # spread over the operand range


def test_small_space_defaults_to_half_and_all_ops():
    task = ArithmeticTask(digits=1, ops="+-*", style="chat")
    test, train = task.load("test"), task.load("train")
    assert len(test) == 150 and len(train) == 150
    assert {p.meta["op"] for p in test} == {"+", "-", "*"}
    refs = {p.id: p.reference for p in test + train}
    assert refs["3-7"] == -4 and refs["9*8"] == 72 and refs["0+0"] == 0


def test_bad_options_and_splits_fail_loudly():
    with pytest.raises(ValueError, match="digits"):
        ArithmeticTask(digits=0)
    with pytest.raises(ValueError, match="ops"):
        ArithmeticTask(ops="/")
    with pytest.raises(ValueError, match="style"):
        ArithmeticTask(style="fancy")
    with pytest.raises(ValueError, match="n_test"):
        ArithmeticTask(digits=1, n_test=101)
    with pytest.raises(ValueError, match="validation"):
        ArithmeticTask().load("validation")
    with pytest.raises(ValueError, match="empty"):
        ArithmeticTask(digits=1, n_test=100).load("train")
    with pytest.raises(ValueError, match="task name"):
        build("math")


def test_build_factory_and_prompts():
    task = build("arithmetic", digits=1, ops="*", style="chat", n_test=10, seed=3)
    assert isinstance(task, Task) and task.name == "arithmetic"
    p = task.problem(7, "*", 5)
    messages = task.first_turn(p)
    assert messages == [{"role": "user", "content": p.question}]
    assert p.question.startswith("What is 7 * 5?") and "Answer:" in p.question
    # The correction instruction must not reveal whether the first answer was right.
    assert "might" in task.correction_instruction and "wrong" not in task.correction_instruction.lower()
    demo = ArithmeticTask()
    assert demo.first_turn(demo.problem(47, "+", 38)) == [{"role": "user", "content": "47+38"}]
    assert demo.correction_instruction == "Recheck."


@pytest.mark.parametrize("response,reason,extracted", [
    ("85", CORRECT, "85"),
    ("7+8=15;4+3+1=8;85", CORRECT, "85"),
    ("75", WRONG_ANSWER, "75"),
    ("7+8=15;4+3+1=8;75", WRONG_ANSWER, "75"),
    ("", NO_ANSWER, None),
    ("no idea", NO_ANSWER, None),
])
def test_demo_scoring(response, reason, extracted):
    task = ArithmeticTask()
    [verdict] = task.score([task.problem(47, "+", 38)], [response])
    assert verdict.reason == reason and verdict.extracted == extracted
    assert verdict.reward == (1.0 if reason == CORRECT else 0.0)


@pytest.mark.parametrize("a,op,b,response,reward", [
    (3, "-", 7, "3 - 7 = -4\nAnswer: -4", 1.0),
    (3, "-", 7, "Answer: 4", 0.0),
    (3, "-", 7, "Answer: \u22124", 1.0),           # unicode minus
    (3, "-", 7, "Answer: 3 - 7 = -4.", 1.0),        # the last number on the answer line
    (7, "-", 5, "7-5=2", 1.0),                      # the minus of 7-5 is an operator
    (7, "*", 5, "Let me think. 7 * 5 = 35. So the answer is 35.", 1.0),
    (7, "*", 5, "7 * 5 = 35, and 35 + 1 = 36", 0.0),  # no answer line: the last "= N"
    (7, "*", 5, "**Answer:** 35.0", 1.0),
    (7, "*", 5, "Answer: 35.5", 0.0),
    (9, "*", 9, 'I will write "Answer: N".\nAnswer: 81', 1.0),
    (9, "*", 9, 'Answer: N\n81', 1.0),             # marker without a number: fall back
    (4, "+", 4, "Answer: 8 (4 + 4)", 1.0),          # a worked sum after the answer is not the answer
    (4, "+", 4, "The correct answer is 8, not 7.", 1.0),
    (4, "+", 4, "The correct answer is 7, not 8.", 0.0),
    (9, "*", 0, "9 * 0 = N", 0.0),                  # restating the question answers nothing
    (5, "-", 0, "5 - 0 is 5.", 1.0),
    (7, "*", 5, "7 \u00d7 5 = 35", 1.0),
])
def test_chat_scoring(a, op, b, response, reward):
    task = ArithmeticTask(digits=1, ops="+-*", style="chat")
    [verdict] = task.score([task.problem(a, op, b)], [response])
    assert verdict.reward == reward, verdict


def test_chat_no_answer_and_thousands():
    task = ArithmeticTask(digits=2, ops="*", style="chat")
    problem = task.problem(99, "*", 99)
    right, none = task.score([problem, problem], ["Answer: 9,801", "I cannot say."])
    assert right.reason == CORRECT and right.extracted == "9,801"
    assert none.reason == NO_ANSWER and none.reward == 0.0 and none.extracted is None


def test_score_checks_lengths_and_never_raises_on_junk():
    task = ArithmeticTask()
    problems = task.load("test")[:3]
    with pytest.raises(ValueError, match="3 problems but 2 responses"):
        task.score(problems, ["1", "2"])
    junk = ["\x00" * 10_000, "-" * 5000 + "1" * 5000, "1.2.3.4,5,,6"]
    assert all(v.reward == 0.0 for v in task.score(problems, junk))


def test_extractors_directly():
    assert last_integer("a -12 b 7") == "7"
    assert last_integer("x=-12") == "-12"
    assert extract_chat_answer("The final answer is $12$. I hope it is correct.") == "12"
    assert extract_chat_answer("nothing") is None
    assert extract_chat_answer("9 * 0 = N") is None and extract_chat_answer("Answer: 3 - 7") is None
    assert extract_chat_answer("Answer: 7 * -5 = -35") == "-35"



def test_problem_objects_are_stable():
    p = ArithmeticTask().problem(47, "+", 38)
    assert p == Problem(id="47+38", question="47+38", reference=85,
                        meta={"a": 47, "op": "+", "b": 38, "cluster": "38+47"})
