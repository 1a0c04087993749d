"""Self-Refine (methods/self_refine.py): the stop marker, the refined attempt, token-in-token-out
rows, the demo refusal and evaluate-shaped results. The tiny model's replies are forced by a
forward hook that reads each generate call's context and writes a scripted reply."""

import pytest

from selfcorrect.evaluate import evaluate
from selfcorrect.methods.self_refine import DEMO_REFUSAL, self_refine_evaluate, self_refine_prompts
from selfcorrect.rollout import ChatFormat
from selfcorrect.tasks.arithmetic import ArithmeticTask
from selfcorrect.tasks.code import CodeTask
from selfcorrect.tasks.math import MathTask
from tiny import EchoTask, tiny_model, tiny_tokenizer

FEEDBACK = "Critique it. Say {marker} if right."
REFINE = "Fix it."
MARKER = "ALL CORRECT"


class Script:
    """Forces replies: at each generate call (a forward with more than one new position) it reads
    every row's context and sets that row's reply to reply(phase, question) + end of turn, where
    phase is "attempt1", "feedback" or "refine" (from the last user turn in the context)."""

    def __init__(self, tok, reply, feedback=FEEDBACK.replace("{marker}", MARKER), refine=REFINE):
        self.tok, self.reply, self.feedback, self.refine = tok, reply, feedback, refine
        self.contexts: list[tuple[str, str, list[int]]] = []  # (phase, question, context ids)
        self.targets: list[list[int]] = []
        self.step = 0

    def phase(self, context: str) -> tuple[str, str]:
        question = context.split("<|user|>", 2)[1].split("<|end|>", 1)[0]
        last_user = context.rsplit("<|user|>", 1)[1].split("<|end|>", 1)[0]
        if last_user == self.refine:
            return "refine", question
        return ("feedback" if last_user == self.feedback else "attempt1"), question

    def __call__(self, module, args, kwargs, output):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:  # prefill: a new generate call
            self.targets, self.step = [], 0
            for row in ids.tolist():
                context = [t for t in row if t != self.tok.pad_token_id]  # left padding; never inside
                phase, question = self.phase(self.tok.decode(context))
                self.contexts.append((phase, question, context))
                self.targets.append(self.tok(self.reply(phase, question), add_special_tokens=False)["input_ids"]
                                    + [self.tok.eos_token_id])
        for b, target in enumerate(self.targets):
            forced = target[self.step] if self.step < len(target) else self.tok.eos_token_id
            output.logits[b, -1, :] = -1e4
            output.logits[b, -1, forced] = 1e4
        self.step += 1
        return output

    def phases(self) -> list[str]:
        return [p for p, _, _ in self.contexts]


def _setup(reply, n=4, **kw):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=1)
    script = Script(tok, reply, **kw)
    model.register_forward_hook(script, with_kwargs=True)
    task = EchoTask(n)
    task.feedback_prompt, task.refine_prompt = FEEDBACK, REFINE
    return tok, model, task, script


def test_feedback_that_says_correct_keeps_attempt_1_and_generates_no_refinement():
    replies = {"attempt1": "b", "feedback": "looks fine. ALL CORRECT", "refine": "a"}
    tok, model, task, script = _setup(lambda phase, q: replies[phase])
    result = self_refine_evaluate(model, tok, task, task.load("test"), max_new_tokens=30, batch_size=3,
                                  bootstrap=0, progress=False)
    assert "refine" not in script.phases()
    assert script.phases().count("attempt1") == 4 and script.phases().count("feedback") == 4
    for rec in result.records:
        assert rec["feedback_says_correct"] is True and rec["feedback"] == replies["feedback"]
        assert rec["attempts"][1] == rec["attempts"][0]
        assert rec["attempts"][0]["text"] == "b" and rec["attempts"][0]["reward"] == 0.0
    m = result.metrics
    assert m["acc_t1"] == m["acc_t2"] == 0.0 and m["edit_ratio"] == 0.0
    assert m["samples_per_problem_mean"] == 2.0 and m["feedback_says_correct"] == 1.0


def test_feedback_that_finds_an_error_makes_the_refined_answer_attempt_2():
    # problems 0 and 2 (odd-length questions 1, 7): wrong first, feedback finds the error,
    # refined right; problems 1 and 3: right first, the model wrongly "fixes" problem 1 and
    # declares problem 3 correct
    def reply(phase, q):
        i = (len(q) - 1) // 3
        if phase == "attempt1":
            return "b" if i % 2 == 0 else "a"
        if phase == "feedback":
            return "all correct, ALL CORRECT" if i == 3 else "there is an error"
        return "xa" if i % 2 == 0 else "zz"

    tok, model, task, script = _setup(reply)
    result = self_refine_evaluate(model, tok, task, task.load("test"), max_new_tokens=30, batch_size=4,
                                  bootstrap=100, progress=False)
    assert script.phases().count("refine") == 3
    texts = [[a["text"] for a in r["attempts"]] for r in result.records]
    assert texts == [["b", "xa"], ["a", "zz"], ["b", "xa"], ["a", "a"]]
    assert [r["feedback_says_correct"] for r in result.records] == [False, False, False, True]
    m = result.metrics
    assert (m["acc_t1"], m["acc_t2"], m["delta_i_to_c"], m["delta_c_to_i"]) == (0.5, 0.75, 0.5, 0.25)
    assert m["samples_per_problem_mean"] == pytest.approx(2.75) and m["feedback_says_correct"] == 0.25


def test_refine_context_is_first_ids_attempt_feedback_and_template_glue():
    # problem 0's attempt 1 runs into max_new_tokens (no end of turn), problem 1's ends normally
    long = "b" * 12

    def reply(phase, q):
        return {"attempt1": long if len(q) == 1 else "b", "feedback": "bad", "refine": "a"}[phase]

    tok, model, task, script = _setup(reply, n=2)
    problems = task.load("test")
    result = self_refine_evaluate(model, tok, task, problems, max_new_tokens=8, batch_size=2, bootstrap=0,
                                  progress=False)
    fmt = ChatFormat(tok, model)
    eos = tok.eos_token_id
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    between_fb = fmt.between_ids(task.first_turn(problems[0]), FEEDBACK.replace("{marker}", MARKER))
    between_ref = fmt.between_ids(task.first_turn(problems[0]), REFINE)
    refine_contexts = {q: ids for phase, q, ids in script.contexts if phase == "refine"}
    for problem, y1 in zip(problems, (enc(long)[:8], enc("b") + [eos])):
        first = fmt.first_ids(task.first_turn(problem))
        feedback = enc("bad") + [eos]
        expected = first + y1 + fmt.join_ids(y1, between_fb) + feedback + fmt.join_ids(feedback, between_ref)
        assert refine_contexts[problem.question] == expected
    # read as text: one end marker per turn, whether or not the attempt stopped by itself
    assert tok.decode(refine_contexts["x"]) == (
        "<|user|>x<|end|><|assistant|>bbbbbbbb<|end|><|user|>Critique it. Say ALL CORRECT if right.<|end|>"
        "<|assistant|>bad<|end|><|user|>Fix it.<|end|><|assistant|>")
    assert [r["attempts"][0]["truncated"] for r in result.records] == [True, False]
    assert [r["attempts"][1]["text"] for r in result.records] == ["a", "a"]


def test_demo_style_arithmetic_is_refused_with_the_reason():
    tok = tiny_tokenizer()
    task = ArithmeticTask(style="demo")
    with pytest.raises(ValueError) as err:
        self_refine_evaluate(tiny_model(tok), tok, task, task.load("test")[:2], progress=False)
    assert str(err.value) == DEMO_REFUSAL
    assert "smollm2-135m-instruct" in DEMO_REFUSAL and "never taught a feedback format" in DEMO_REFUSAL


def test_chat_style_arithmetic_runs_with_its_answer_format():
    tok = tiny_tokenizer()
    task = ArithmeticTask(style="chat", digits=1)
    feedback, refine, marker = self_refine_prompts(task)
    assert marker == "ALL CORRECT" and marker in feedback and "{marker}" not in feedback
    assert '"Answer: N"' in refine
    result = self_refine_evaluate(tiny_model(tok), tok, task, task.load("test")[:3], max_new_tokens=4,
                                  bootstrap=0, progress=False)
    assert len(result.records) == 3 and all(len(r["attempts"]) == 2 for r in result.records)


def test_result_has_the_shape_of_evaluate():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=4)
    task = EchoTask(5)
    task.feedback_prompt, task.refine_prompt = FEEDBACK, REFINE
    problems = task.load("test")
    base = evaluate(model, tok, task, problems, attempts=2, max_new_tokens=6, batch_size=2, bootstrap=50,
                    progress=False)
    sr = self_refine_evaluate(model, tok, task, problems, max_new_tokens=6, batch_size=2, bootstrap=50,
                              progress=False)
    assert set(base.metrics) <= set(sr.metrics)
    assert set(sr.metrics) - set(base.metrics) == {"samples_per_problem_mean", "feedback_says_correct"}
    assert set(sr.intervals) == set(base.intervals)
    assert len(sr.records) == len(base.records) == 5
    for a, b in zip(sr.records, base.records):
        assert set(b) <= set(a) and len(a["attempts"]) == 2
        assert [set(x) for x in a["attempts"]] == [set(x) for x in b["attempts"]]
        assert a["attempts"][0] == b["attempts"][0]  # attempt 1 is evaluate's, token for token
    assert 2.0 <= sr.metrics["samples_per_problem_mean"] <= 3.0


def test_prompts_come_from_the_task_or_the_caller():
    tok = tiny_tokenizer()
    replies = {"attempt1": "b", "feedback": "fine. DONE", "refine": "a"}
    model = tiny_model(tok, seed=1)
    script = Script(tok, lambda phase, q: replies[phase], feedback="Judge. DONE if right.", refine="Redo.")
    model.register_forward_hook(script, with_kwargs=True)
    task = EchoTask(2)
    result = self_refine_evaluate(model, tok, task, task.load("test"), max_new_tokens=20, bootstrap=0,
                                  progress=False, feedback_prompt="Judge. {marker} if right.",
                                  refine_prompt="Redo.", correct_marker="DONE")
    assert script.phases() == ["attempt1"] * 2 + ["feedback"] * 2  # "DONE" stopped both
    assert all(r["feedback_says_correct"] for r in result.records)
    with pytest.raises(ValueError, match="correct_marker"):
        self_refine_prompts(task, correct_marker="")
    # the shipped tasks' own wording
    assert "{marker}" in EchoTask.feedback_prompt and EchoTask.feedback_correct_marker == "ALL CORRECT"
    assert '"Final Answer: The final answer is $answer$.' in MathTask.refine_prompt
    assert "```python" in CodeTask.refine_prompt and "{marker}" in CodeTask.feedback_prompt
    for text in (MathTask.feedback_prompt, MathTask.refine_prompt, CodeTask.feedback_prompt, CodeTask.refine_prompt,
                 ArithmeticTask.feedback_prompt, ArithmeticTask.refine_prompt):
        assert text.isascii()


def test_eval_method_self_refine_refuses_the_demo_task_before_loading_a_model(monkeypatch):
    import selfcorrect.models as models_module
    from selfcorrect.config import Config
    from selfcorrect.evaluate import evaluate_config

    monkeypatch.setattr(models_module, "load", lambda *a, **k: pytest.fail("model loaded"))
    cfg = Config()
    cfg.task.options = {"style": "demo"}
    cfg.eval.method, cfg.eval.limit = "self_refine", 3
    with pytest.raises(ValueError, match="never taught a feedback format"):
        evaluate_config(cfg)


@pytest.mark.parametrize("feedback, says", [
    ("Everything checks out. ALL CORRECT", True), ('Fine.\n**"ALL CORRECT".**\n', True),
    ('The answer is wrong. I cannot write "ALL CORRECT" here.', False),
    ('If the answer is fully correct, end your feedback with "ALL CORRECT". The sum in step 1 is wrong.', False),
    ("all correct", False)])
def test_only_feedback_that_ends_with_the_marker_stops_the_round(feedback, says):
    from selfcorrect.methods.self_refine import feedback_says_correct

    assert feedback_says_correct(feedback, "ALL CORRECT") is says
