"""Self-Refine (Madaan et al. 2023) as an evaluation-time baseline: prompting only, no training.

One round, greedy, for every problem (docs/SELF_REFINE.md; SCORE.md §3):

    user: x              assistant: y1          (attempt 1, exactly as `evaluate` builds it)
    user: feedback       assistant: f           (the model critiques y1)
    user: refine         assistant: y_refined   (only when f lacks the task's stop marker)

Attempt 2 is y1 itself when f contains `task.feedback_correct_marker` ("ALL CORRECT" by
default: the model said its answer is right, so there is nothing to refine), else y_refined.
The two attempts are scored and summarised exactly as `selfcorrect.evaluate.evaluate` does, so
a Self-Refine row sits in the same table as Base and SCoRe.

Token-in-token-out, as in rollout.py: each turn is the previous row + the generated ids + the
template's ids between turns (`ChatFormat.between_ids`); generated text is never re-encoded.
"""

from __future__ import annotations

import numpy as np

from .. import distributed
from ..results import EvalResult, gather_problems, problem_record, rewards_row, summarise
from ..progress import progress as progress_report
from ..rollout import ChatFormat, SamplingSettings, check_context_fits, generate
from ..tasks.base import Problem, Task

DEMO_REFUSAL = ("self_refine: the demo model was never taught a feedback format; run it on a chat model "
                "(e.g. smollm2-135m-instruct)")


def self_refine_prompts(task: Task, *, feedback_prompt: str | None = None, refine_prompt: str | None = None,
                        correct_marker: str | None = None) -> tuple[str, str, str]:
    """(feedback prompt with {marker} filled in, refine prompt, marker): the task's, or the
    ones given. Raises ValueError for an empty prompt or marker (an empty marker would match
    every feedback, so nothing would ever be refined)."""
    marker = task.feedback_correct_marker if correct_marker is None else correct_marker
    feedback = task.feedback_prompt if feedback_prompt is None else feedback_prompt
    refine = task.refine_prompt if refine_prompt is None else refine_prompt
    for label, value in (("feedback_prompt", feedback), ("refine_prompt", refine), ("correct_marker", marker)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"self_refine: {label} must be a non-empty string, got {value!r}")
    return feedback.replace("{marker}", marker), refine, marker


def feedback_says_correct(feedback: str, marker: str) -> bool:
    """Whether the feedback stops the round: it ENDS with `marker` (case-sensitive), as the
    feedback prompt asks ("end your feedback with ..."), ignoring trailing spaces, quotes,
    punctuation and markdown emphasis. Anywhere else the marker is no verdict: a critique that
    quotes the instruction, or says an answer is "not ALL CORRECT" mid-text, would end the round."""
    return feedback.rstrip(" \t\n\"'.!*`_").endswith(marker)


def check_applicable(task: Task) -> None:
    """Refuse tasks whose model cannot take part: the demo arithmetic style."""
    if task.name == "arithmetic" and getattr(task, "style", None) == "demo":
        raise ValueError(DEMO_REFUSAL)


def self_refine_evaluate(model, tokenizer, task: Task, problems: list[Problem], *, max_new_tokens: int = 256,
                         batch_size: int = 64, bootstrap: int = 1000, seed: int = 0, progress: bool = True,
                         desc: str = "self-refine", feedback_prompt: str | None = None,
                         refine_prompt: str | None = None, correct_marker: str | None = None) -> EvalResult:
    """Greedy Self-Refine, one feedback + refine round per problem, scored like `evaluate`.

    Every turn gets up to `max_new_tokens`. The prompts and the stop marker are the task's
    (`Task.feedback_prompt`, `refine_prompt`, `feedback_correct_marker`) unless given here.
    Records are `evaluate`'s (two attempts) plus "feedback" (text), "feedback_tokens",
    "feedback_truncated" and "feedback_says_correct". Metrics are `evaluate`'s plus
    "samples_per_problem_mean" (generated turns per problem: attempt 1 + feedback + the
    refinement when there is one, so 2..3) and "feedback_says_correct" (fraction of problems).
    """
    check_applicable(task)
    fb_prompt, ref_prompt, marker = self_refine_prompts(
        task, feedback_prompt=feedback_prompt, refine_prompt=refine_prompt, correct_marker=correct_marker)
    if not problems:
        raise ValueError(f"task {task.name!r}: no problems to evaluate")
    fmt = ChatFormat(tokenizer, model)
    settings = SamplingSettings(greedy=True, max_new_tokens=max_new_tokens)
    pad_id = tokenizer.pad_token_id
    # the glue ids come from the conversation as it stands at each turn
    messages = task.first_turn(problems[0])
    between_fb = fmt.between_ids(messages, fb_prompt)
    between_ref = fmt.between_ids(messages + [{"role": "assistant", "content": "..."},
                                              {"role": "user", "content": fb_prompt}], ref_prompt)
    model.eval()

    def run(contexts: list[list[int]]) -> tuple[list[list[int]], list[bool]]:
        if not contexts:
            return [], []
        return generate(model, contexts, settings, stop_ids=fmt.stop_ids, pad_id=pad_id, batch_size=batch_size)

    def text(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    # several processes: each rank a contiguous block, gathered in problem order (as `evaluate`)
    lo, hi = distributed.shard_bounds(len(problems))
    problems = problems[lo:hi]
    correct = np.zeros((len(problems), 2))
    says = np.zeros(len(problems), dtype=bool)
    records: list[dict] = []
    bar = progress_report(len(problems), desc, enabled=progress and distributed.is_main())
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        firsts = [fmt.first_ids(task.first_turn(p)) for p in chunk]
        # up to three turns of max_new_tokens, and two stretches of glue
        check_context_fits(model, chunk, firsts, 3, max_new_tokens, max(len(between_fb), len(between_ref)))
        y1, y1_cut = run(firsts)
        fb_rows = [f + y + fmt.join_ids(y, between_fb) for f, y in zip(firsts, y1)]
        fb, fb_cut = run(fb_rows)
        fb_text = [text(ids) for ids in fb]
        stop = [feedback_says_correct(t, marker) for t in fb_text]
        todo = [j for j in range(len(chunk)) if not stop[j]]
        refined, refined_cut = run([fb_rows[j] + fb[j] + fmt.join_ids(fb[j], between_ref) for j in todo])
        y2 = list(y1)
        y2_cut = list(y1_cut)
        for j, ids, cut in zip(todo, refined, refined_cut):
            y2[j], y2_cut[j] = ids, cut
        t1 = [text(ids) for ids in y1]
        t2 = [text(ids) for ids in y2]
        v1 = task.score(chunk, t1)
        v2 = list(v1)  # an unrefined attempt 2 is attempt 1: the same verdict, not a second check
        for j, v in zip(todo, task.score([chunk[j] for j in todo], [t2[j] for j in todo]) if todo else []):
            v2[j] = v
        for j, problem in enumerate(chunk):
            verdicts = (v1[j], v2[j])
            correct[start + j] = rewards_row(verdicts)
            says[start + j] = stop[j]
            record = problem_record(problem, [t1[j], t2[j]], list(verdicts), [y1[j], y2[j]], [y1_cut[j], y2_cut[j]])
            records.append({**record, "feedback": fb_text[j], "feedback_tokens": len(fb[j]),
                            "feedback_truncated": fb_cut[j], "feedback_says_correct": stop[j]})
        bar.update(len(chunk))
    bar.close()
    correct, records, says = gather_problems(correct, records, says.tolist())
    says = np.asarray(says, dtype=bool)
    metrics, intervals = summarise(correct, records, bootstrap=bootstrap, seed=seed)
    metrics["samples_per_problem_mean"] = float(np.mean(3 - says.astype(np.float64)))
    metrics["feedback_says_correct"] = float(says.mean())
    return EvalResult(metrics, intervals, records)
