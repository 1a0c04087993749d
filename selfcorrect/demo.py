"""`selfcorrect demo`: the whole pipeline, offline, on CPU, in minutes.

build (or load) the small base → evaluate it greedily on the held-out split → SCoRe Stage I →
Stage II → evaluate again → print base vs SCoRe, and leave a run folder with the config, the
training metrics, per-problem records and the final model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import Config, save_yaml


def demo_config(quick: bool = False) -> Config:
    """The demo recipe (configs/demo.yaml holds the same values; a test keeps them in sync)."""
    cfg = Config()
    cfg.model.name = "demo"
    cfg.task.name = "arithmetic"
    cfg.task.options = {"style": "demo"}
    cfg.rollout.attempts = 2
    cfg.rollout.samples_per_problem = 4
    cfg.rollout.temperature = 1.0
    cfg.rollout.max_new_tokens = 48
    cfg.rollout.batch_size = 128
    cfg.algo.stage1_steps = 40
    cfg.algo.stage2_steps = 40
    cfg.algo.alpha = 10.0
    cfg.algo.beta1 = 0.01
    cfg.algo.beta2 = 0.1
    cfg.optim.lr = 1e-4
    cfg.optim.warmup_steps = 5
    cfg.optim.problems_per_step = 64
    cfg.optim.micro_batch_size = 64
    cfg.eval.batch_size = 250
    cfg.run.output_dir = "runs/demo"
    cfg.run.save_every = 20
    cfg.run.overwrite = True  # the demo's run folder is disposable: a second demo replaces it
    if quick:
        cfg.algo.stage1_steps = cfg.algo.stage2_steps = 2
        cfg.optim.problems_per_step = 4
        cfg.eval.limit = 40
        cfg.eval.bootstrap = 100
        cfg.run.output_dir = "runs/demo-quick"
    return cfg


def run_demo(cfg: Config, quick: bool = False) -> dict:
    from .cli import run_eval
    from .demo_model import build_demo_base
    from .metrics import format_table
    from .models import cache_root, load_policy, load_tokenizer, pick_device, pick_dtype, resolve_model_path
    from .tasks import build_task
    from .train import Trainer

    start = time.perf_counter()
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] base model ({'quick build' if quick else cfg.model.name})", flush=True)
    if quick and cfg.model.name == "demo":
        path = str(build_demo_base(cache_root() / "demo-base-quick", seed=cfg.run.seed, quick=True,
                                   progress=cfg.run.progress))
    else:
        path = resolve_model_path(cfg.model.name, progress=cfg.run.progress)
    device = pick_device(cfg.model.device)
    tok = load_tokenizer(path)
    model = load_policy(path, device, pick_dtype(cfg.model.dtype, device))
    with build_task(cfg.task.name, cfg.task.options) as task:
        print(f"[2/4] evaluating the base model on the held-out split ({cfg.task.test_split})", flush=True)
        base = run_eval(cfg, model, tok, name="base", task=task)
        print(f"      base: Acc@t1 {base.metrics['acc_t1']:.1%}  Acc@t2 {base.metrics['acc_t2']:.1%}", flush=True)
        print(f"[3/4] SCoRe: Stage I {cfg.algo.stage1_steps} steps, Stage II {cfg.algo.stage2_steps} steps",
              flush=True)
        trainer = Trainer(cfg, task, model=model, tokenizer=tok)
        trainer.train()
        print("[4/4] evaluating the SCoRe model on the held-out split", flush=True)
        score = run_eval(cfg, trainer.model, tok, name="SCoRe", task=task)
    table = format_table([("Base", base.metrics), ("SCoRe", score.metrics)],
                         {"Base": base.intervals, "SCoRe": score.intervals})
    minutes = (time.perf_counter() - start) / 60
    summary = (f"Held-out {cfg.task.name} problems: {base.metrics['n']}, greedy, seed {cfg.run.seed}, "
               f"{minutes:.1f} min\n\n{table}\n")
    (out / "results.md").write_text(summary)
    (out / "results.json").write_text(json.dumps({"base": base.metrics, "score": score.metrics,
                                                  "base_intervals": base.intervals,
                                                  "score_intervals": score.intervals}, indent=1))
    save_yaml(cfg, out / "config.yaml")
    print("\n" + summary)
    print(f"run folder: {out}  (config.yaml, metrics.jsonl, eval/*/records.jsonl, final/)")
    return {"base": base.metrics, "score": score.metrics}
