"""`selfcorrect demo`: the whole pipeline, offline, on CPU, in minutes.

build (or load) the small base → evaluate it greedily on the held-out split → SCoRe Stage I →
Stage II → evaluate again → print base vs SCoRe, and leave a run folder with the config, the
training metrics, per-problem records and the final model.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from importlib.resources import as_file, files
from pathlib import Path

from .config import Config, load_yaml, save_yaml


def demo_config(quick: bool = False) -> Config:
    """The demo recipe, read from selfcorrect/recipes/demo.yaml (shipped with the package; the
    one source of its values). quick: a seconds-long smoke run whose numbers mean little."""
    with as_file(files("selfcorrect") / "recipes" / "demo.yaml") as path:
        cfg = load_yaml(path)
    if quick:
        cfg.algo.stage1_steps = cfg.algo.stage2_steps = 2
        cfg.optim.problems_per_step = 4
        cfg.eval.limit = 40
        cfg.eval.bootstrap = 100
        cfg.run.output_dir = "runs/demo-quick"
    return cfg


def run_demo(cfg: Config, quick: bool = False) -> dict:
    """Build or load the base, evaluate, train, evaluate; on ONE torch thread. The demo's model
    is small enough that more threads do not make it faster, and float sums split over threads
    round differently with their number: pinned, the base build and the training produce the
    same numbers on any machine of the same kind (the README's tables come from this)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(cfg, quick)
    finally:
        torch.set_num_threads(threads)


DEMO_MARKER = "demo-run.txt"


def claim_demo_folder(out: Path, overwrite: bool) -> None:
    """Make `out` the demo's folder, refusing one that holds another command's results. The demo
    replaces its own earlier run by default (its recipe sets run.overwrite), so a training run or
    evaluations of another command there would be lost: those are refused whatever overwrite says.
    A demo's folder is marked by DEMO_MARKER (or results.md, which demos wrote before the marker)."""
    from .train import existing_run

    held = existing_run(out) + ([out / "eval"] if (out / "eval").exists() else [])
    names = ", ".join(p.name for p in held)
    if held and not ((out / DEMO_MARKER).exists() or (out / "results.md").exists()):
        raise FileExistsError(f"{out} holds results the demo did not make ({names}); the demo replaces "
                              f"only its own runs: choose another --output, or move that folder away")
    if held and not overwrite:
        raise FileExistsError(f"{out} already holds a demo run ({names}); pass --run.overwrite true to "
                              f"replace it, or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("made by `selfcorrect demo`, which may replace this folder's run\n")


def _run_demo(cfg: Config, quick: bool) -> dict:
    from .demo_model import build_demo_base
    from .distributed import main_first, on_main, say
    from .evaluate import evaluate_config, evaluation_problems
    from .metrics import format_table
    from .models import cache_root, load
    from .tasks import build_task
    from .train import Trainer

    start = time.perf_counter()
    out = Path(cfg.run.output_dir)
    on_main(lambda: claim_demo_folder(out, cfg.run.overwrite))  # before anything is written there
    with build_task(cfg.task.name, cfg.task.options) as task:
        evaluation_problems(cfg, task)  # the data first: a bad path is reported before the build
        say(f"[1/4] base model ({'quick build' if quick else cfg.model.name})")
        model_cfg = cfg.model
        if quick and cfg.model.name == "demo":
            quick_base = main_first(lambda: build_demo_base(cache_root() / "demo-base-quick", seed=cfg.run.seed,
                                                            quick=True, progress=cfg.run.progress))
            model_cfg = replace(cfg.model, name=str(quick_base))
        model, tok = load(model_cfg, progress=cfg.run.progress)
        say(f"[2/4] evaluating the base model on the held-out split ({cfg.task.test_split})")
        base = evaluate_config(cfg, model=model, tokenizer=tok, task=task, name="base")
        say(f"      base: Acc@t1 {base.metrics['acc_t1']:.1%}  Acc@t2 {base.metrics['acc_t2']:.1%}")
        say(f"[3/4] SCoRe: Stage I {cfg.algo.stage1_steps} steps, Stage II {cfg.algo.stage2_steps} steps")
        trainer = Trainer(cfg, task, model=model, tokenizer=tok)
        trainer.train()
        say("[4/4] evaluating the SCoRe model on the held-out split")
        score = evaluate_config(cfg, model=trainer.model, tokenizer=tok, task=task, name="SCoRe")
    table = format_table([("Base", base.metrics), ("SCoRe", score.metrics)],
                         {"Base": base.intervals, "SCoRe": score.intervals})
    minutes = (time.perf_counter() - start) / 60
    summary = (f"Held-out {cfg.task.name} problems: {base.metrics['n']}, greedy, seed {cfg.run.seed}, "
               f"{minutes:.1f} min\n\n{table}\n")
    def write() -> None:
        (out / "results.md").write_text(summary)
        (out / "results.json").write_text(json.dumps({"base": base.metrics, "score": score.metrics,
                                                      "base_intervals": base.intervals,
                                                      "score_intervals": score.intervals}, indent=1))
        save_yaml(cfg, out / "config.yaml")

    on_main(write)
    say("\n" + summary)
    say(f"run folder: {out}  (config.yaml, metrics.jsonl, eval/*/records.jsonl, final/)")
    return {"base": base.metrics, "score": score.metrics}
