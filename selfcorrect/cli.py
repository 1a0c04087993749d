"""`selfcorrect demo | train | eval`: thin commands over the library.

Every config field is an option (`--section.field VALUE`); a YAML file given with --config is
applied first, then the options. A few shortcuts cover the common cases (--model, --task, --data,
--limit, --output)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import config as C

SHORTCUTS = {  # flag -> (config key, help)
    "--model": ("model.name", "same as --model.name"),
    "--task": ("task.name", "same as --task.name"),
    "--data": ("task.options.test_path", "a local data file for evaluation (sets task option test_path)"),
    "--limit": ("eval.limit", "same as --eval.limit"),
    "--output": ("run.output_dir", "same as --run.output_dir"),
    "--seed": ("run.seed", "same as --run.seed"),
}

DESCRIPTIONS = {
    "demo": "The whole pipeline offline on CPU: build (or load) the small base model, evaluate it, "
            "train SCoRe Stage I + II, evaluate again on the held-out split, print the table.",
    "train": "Train a causal LM with SCoRe (Stage I, then Stage II) on a task; writes checkpoints, "
             "metrics.jsonl and a final model loadable by transformers into run.output_dir.",
    "eval": "Greedy multi-attempt evaluation: Acc@t1, Acc@t2, Δ, Δi→c, Δc→i with 95% bootstrap "
            "intervals, and a per-problem JSONL of every attempt.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfcorrect", description="Train language models to correct their own mistakes with SCoRe "
        "(two-stage multi-turn RL), and measure how well any model self-corrects. "
        "`selfcorrect COMMAND --help` lists every option.")
    subs = parser.add_subparsers(dest="command", required=True)
    for name, text in DESCRIPTIONS.items():
        sub = subs.add_parser(name, help=text.split(":")[0].split(";")[0], description=text)
        sub.add_argument("--config", help="a YAML config file (configs/*.yaml); options below override it")
        for flag, (key, help_text) in SHORTCUTS.items():
            sub.add_argument(flag, dest=key, default=argparse.SUPPRESS, help=help_text,
                             metavar=flag.strip("-").upper())
        defaults = C.Config()
        for key, f in C.iter_fields():
            section, _, field_name = key.partition(".")
            default = getattr(getattr(defaults, section), field_name)
            extra = f" (one of {', '.join(f.metadata['choices'])})" if f.metadata.get("choices") else ""
            sub.add_argument(f"--{key}", dest=key, metavar=f.type.upper() if isinstance(f.type, str) else "V",
                             default=argparse.SUPPRESS,
                             help=f"{f.metadata['help']}{extra} [default: {default!r}]".replace("%", "%%"))
        if name == "demo":
            sub.add_argument("--quick", action="store_true",
                             help="a much smaller run (seconds, for smoke tests; numbers mean little)")
    return parser


def resolve_config(args: argparse.Namespace, base: C.Config) -> C.Config:
    cfg = C.load_yaml(args.config, base) if getattr(args, "config", None) else base
    fields = dict(C.iter_fields())
    for key, text in vars(args).items():
        if key.startswith("task.options."):
            cfg.task.options[key.split(".", 2)[2]] = text
        elif key in fields:
            C.set_value(cfg, key, C.parse_cli_value(text, fields[key].type))
    return cfg.validate()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import demo_config, run_demo

            cfg = resolve_config(args, demo_config(quick=args.quick))
            run_demo(cfg, quick=args.quick)
        elif args.command == "train":
            run_train(resolve_config(args, C.Config()))
        else:
            run_eval(resolve_config(args, C.Config()))
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"selfcorrect {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selfcorrect {args.command}: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    return 0


def run_train(cfg: C.Config) -> None:
    from .tasks import build_task
    from .train import Trainer

    with build_task(cfg.task.name, cfg.task.options) as task:
        trainer = Trainer(cfg, task)
        start = time.perf_counter()
        trainer.train()
    print(f"trained {len(trainer.plan)} steps in {time.perf_counter() - start:.0f} s; "
          f"model saved to {Path(cfg.run.output_dir) / 'final'}")


def run_eval(cfg: C.Config, model=None, tokenizer=None, name: str | None = None, task=None):
    """Evaluate cfg.model on cfg.task's test split; print the table, write metrics + records."""
    from .evaluate import evaluate
    from .metrics import format_table
    from .models import load_policy, load_tokenizer, pick_device, pick_dtype, resolve_model_path
    from .tasks import build_task

    own_task = task is None
    task = task or build_task(cfg.task.name, cfg.task.options)
    try:
        if model is None:
            path = resolve_model_path(cfg.model.name, progress=cfg.run.progress)
            device = pick_device(cfg.model.device)
            tokenizer = load_tokenizer(path)
            model = load_policy(path, device, pick_dtype(cfg.model.dtype, device))
        problems = task.load(cfg.task.test_split)
        if cfg.eval.limit:
            problems = problems[: cfg.eval.limit]
        label = name or cfg.model.name
        result = evaluate(model, tokenizer, task, problems, attempts=cfg.eval.attempts,
                          max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                          batch_size=cfg.eval.batch_size, bootstrap=cfg.eval.bootstrap, seed=cfg.run.seed,
                          progress=cfg.run.progress, desc=f"eval {label}")
    finally:
        if own_task:
            task.close()
    out = Path(cfg.run.output_dir) / "eval" / _slug(label)
    result.write_records(out / "records.jsonl")
    C.save_yaml(cfg, out / "config.yaml")
    (out / "metrics.json").write_text(json.dumps({"metrics": result.metrics, "intervals": result.intervals},
                                                 indent=1))
    if own_task:
        print(f"\n{task.name} {cfg.task.test_split}: {result.metrics['n']} problems, {cfg.eval.attempts} attempts")
        print(format_table([(label, result.metrics)], {label: result.intervals}))
        extra = {k: v for k, v in result.metrics.items() if k.startswith(("acc_t", "delta_t1_t"))}
        if cfg.eval.attempts > 2:
            print("  ".join(f"{k}={v * 100:.1f}" for k, v in extra.items()))
        print(f"per-problem records: {out / 'records.jsonl'}")
    return result


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip("/.")).strip("_")[-80:] or "model"


if __name__ == "__main__":
    sys.exit(main())
