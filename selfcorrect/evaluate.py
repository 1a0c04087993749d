"""Evaluation: greedy attempts, the self-correction metrics with bootstrap intervals, and a
per-problem record of every attempt (text, extracted answer, verdict, reason).

`evaluate` scores a model on given problems; `evaluate_config` is the whole `selfcorrect eval`
(and the demo's evaluations): data, model, evaluation and the files of the eval folder.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cpu_linear, distributed, models
from .atomic import atomic_folder
from .config import Config, save_yaml
from .merged_lora import merged_lora
from .parallel import generation_view
from .progress import progress as progress_report
from .results import EvalResult, gather_problems, problem_record, rewards_row, summarise
from .engines import make_engine
from .rollout import ChatFormat, SamplingSettings, rollout, verify
from .tasks import build_task
from .tasks.base import Problem, Task


def evaluate(model, tokenizer, task: Task, problems: list[Problem], *, attempts: int = 2,
             max_new_tokens: int = 256, batch_size: int = 64, bootstrap: int = 1000, seed: int = 0,
             progress: bool = True, desc: str = "eval", engine: str = "auto") -> EvalResult:
    """Greedy (T = 0) evaluation of `attempts` attempts per problem, as in the paper.

    Launched on several processes, each rank evaluates a contiguous block of the problems and
    the per-problem results are gathered in problem order, so every rank returns exactly the
    result (and the same bootstrap intervals) one process would."""
    if not problems:
        raise ValueError(f"task {task.name!r}: no problems to evaluate")
    fmt = ChatFormat(tokenizer, model)
    settings = SamplingSettings(greedy=True, max_new_tokens=max_new_tokens)
    generator = make_engine(engine, model)
    model.eval()
    lo, hi = distributed.shard_bounds(len(problems))
    mine = problems[lo:hi]
    correct = np.zeros((len(mine), attempts))
    records: list[dict] = []
    bar = progress_report(len(mine), desc, enabled=progress and distributed.is_main())
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        ro = rollout(model, tokenizer, task, chunk, n_attempts=attempts, samples_per_problem=1,
                     settings=settings, batch_size=batch_size, fmt=fmt, engine=generator)
        verify(task, ro)
        for j, problem in enumerate(chunk):
            correct[start + j] = rewards_row(ro.verdicts[j])
            records.append(problem_record(problem, ro.texts[j], ro.verdicts[j], ro.attempts[j], ro.truncated[j]))
        bar.update(len(chunk))
    bar.close()
    correct, records = gather_problems(correct, records)
    metrics, intervals = summarise(correct, records, bootstrap=bootstrap, seed=seed)
    return EvalResult(metrics, intervals, records)


def evaluation_problems(cfg: Config, task: Task) -> list[Problem]:
    """The problems cfg evaluates on: the test split, cut to eval.limit. Raises (naming the
    file or split) when the data is unusable, so callers can check it before loading a model."""
    problems = task.load(cfg.task.test_split)
    if cfg.eval.limit:
        problems = problems[: cfg.eval.limit]
    if not problems:
        raise ValueError(f"task {task.name!r} split {cfg.task.test_split!r}: no problems to evaluate")
    return problems


def evaluate_config(cfg: Config, *, model=None, tokenizer=None, task: Task | None = None,
                    name: str | None = None, folder: Path | None = None) -> EvalResult:
    """Evaluate cfg.model (or `model` + `tokenizer`) on cfg.task's test split (or `task`'s).

    The data is loaded first, so a bad path is reported without loading a model. Writes
    records.jsonl, metrics.json and config.yaml to `folder` (default run.output_dir/eval/<name>,
    name default: the model name) and returns the result with that folder; with
    cfg.eval.scaling also the inference-time scaling curves as scaling.json. A task passed in
    is left open.
    """
    label = name or cfg.model.name
    owned = task is None  # only a task built here is closed here
    with build_task(cfg.task.name, cfg.task.options) if owned else nullcontext(task) as task:
        problems = evaluation_problems(cfg, task)
        refine = cfg.eval.method == "self_refine"
        if refine:
            from .methods.self_refine import check_applicable, self_refine_evaluate

            check_applicable(task)  # before loading a model
        distributed.init(cfg.distributed.timeout_s, cuda=models.pick_device(cfg.model.device).type == "cuda"
                         if model is None else next(model.parameters()).device.type == "cuda")
        out = Path(folder) if folder is not None else Path(cfg.run.output_dir) / "eval" / _slug(label)
        distributed.on_main(lambda: refuse_finished_evaluation(out, cfg.run.overwrite))  # before the model loads
        if model is None:  # the model's folder, tokenizer and context window, before its weights
            key = "eval.max_new_tokens" if cfg.eval.max_new_tokens else "rollout.max_new_tokens"
            models.preflight(cfg.model, task, problems, max_new_tokens=cfg.eval.max_new_tokens
                             or cfg.rollout.max_new_tokens, key=key, progress=cfg.run.progress)
            model, tokenizer = models.load(cfg.model, progress=cfg.run.progress)
        settings = dict(max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                        batch_size=cfg.eval.batch_size, bootstrap=cfg.eval.bootstrap, seed=cfg.run.seed,
                        progress=cfg.run.progress, desc=f"eval {label}")
        # an FSDP-sharded model (a policy trained under FSDP) is gathered for the evaluation; an
        # in-memory LoRA policy generates with its adapters folded in (merged_lora.py); on a CPU
        # the linears run through oneDNN with packed weights where model.cpu_linear says so
        onednn = cpu_linear.wanted(next(model.parameters()).device, cfg.model.cpu_linear, "rollout")
        with generation_view(model), merged_lora(model, cfg.rollout.merge_lora, cfg.rollout.engine), \
                cpu_linear.onednn_linears(model, onednn, pack=True, torch_only=cfg.model.cpu_linear == "torch"):
            if refine:
                result = self_refine_evaluate(model, tokenizer, task, problems, **settings)
            else:
                result = evaluate(model, tokenizer, task, problems, attempts=cfg.eval.attempts,
                                  engine=cfg.rollout.engine, **settings)
            if cfg.eval.scaling:
                from .scaling import inference_scaling, write_scaling

                curves = inference_scaling(model, tokenizer, task, problems, ks=cfg.eval.scaling_k,
                                           attempts=cfg.eval.scaling_attempts,
                                           temperature=cfg.eval.scaling_temperature,
                                           max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                                           batch_size=cfg.eval.batch_size, seed=cfg.run.seed,
                                           progress=cfg.run.progress, desc=f"scaling {label}")
    result.folder = out

    def write() -> None:  # rank 0 writes; every rank holds the same gathered result
        # the whole folder at once: a crash leaves the old one, and a replaced evaluation
        # leaves nothing of its own behind (an earlier run's scaling.json)
        with atomic_folder(out) as tmp:
            if cfg.eval.scaling:
                write_scaling(curves, tmp / "scaling.json")
            result.write_records(tmp / "records.jsonl")
            save_yaml(cfg, tmp / "config.yaml")
            (tmp / "metrics.json").write_text(
                json.dumps({"metrics": result.metrics, "intervals": result.intervals}, indent=1))

    distributed.on_main(write)
    return result


def refuse_finished_evaluation(folder: Path, overwrite: bool) -> None:
    """Raise when `folder` already holds a finished evaluation and `overwrite` is off: a second
    eval of the same model into the same --output would otherwise replace the first's results."""
    if (folder / "metrics.json").exists() and not overwrite:
        raise FileExistsError(f"{folder} already holds an evaluation (metrics.json); pass --run.overwrite "
                              f"true to replace it, or choose another --output")


def _slug(text: str) -> str:
    """A folder name for a model name or path (its last 80 safe characters)."""
    # leading dots stripped too: '~/.cache/x' must not make a hidden folder
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip("/.")).strip("_.")[-80:] or "model"
