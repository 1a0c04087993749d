"""`selfcorrect demo | train | eval`: thin commands over the library.

Every config field is an option (`--section.field VALUE`); a YAML file given with --config is
applied first, then the options. A few shortcuts cover the common cases (--model, --task, --data,
--limit, --output). The work is the library's (evaluate.py, train.py, demo.py): this module
parses and prints."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from . import config as C
from . import tasks
from .tasks import eval_data_option

OPTION_PREFIX = "task.options."

SHORTCUTS = {  # flag -> (config key, help)
    "--model": ("model.name", "same as --model.name"),
    "--task": ("task.name", "same as --task.name"),
    "--data": ("data", "a local data file for evaluation (the task's test_path; data_path for humaneval / mbpp)"),
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


def command_defaults(command: str) -> C.Config:
    """The values a command starts from, shown as the defaults in its --help: the demo's recipe
    for `demo`, the plain defaults elsewhere."""
    if command == "demo":
        from .demo import demo_config

        return demo_config()
    return C.Config()


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (`selfcorrect train: error: ...`, no usage
    block) and exit code 2, like every other bad-input error of the commands."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: object) -> str:
    """A message on one line: errors of the commands are one line on stderr, whatever raised them."""
    return " ".join(str(text).split())


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="selfcorrect", description="Train language models to correct their own mistakes with SCoRe "
        "(two-stage multi-turn RL), and measure how well any model self-corrects. "
        "`selfcorrect COMMAND --help` lists every option.")
    subs = parser.add_subparsers(dest="command", required=True)
    epilog = tasks.options_help()
    for name, text in DESCRIPTIONS.items():
        # raw text: the epilog is a table of task options; the description is wrapped here
        sub = subs.add_parser(name, help=text.split(":")[0].split(";")[0], description=textwrap.fill(text, 100),
                              epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--config", help="a YAML config file (configs/*.yaml); options below override it")
        for flag, (key, help_text) in SHORTCUTS.items():
            sub.add_argument(flag, dest=key, default=argparse.SUPPRESS, help=help_text,
                             metavar=flag.strip("-").upper())
        defaults = command_defaults(name)
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
    add_compare_parser(subs)
    return parser


def add_compare_parser(subs) -> None:
    """`selfcorrect compare`: its own file format (selfcorrect/compare.py), so its own options."""
    from .compare import methods_help

    sub = subs.add_parser(
        "compare", help="the paper's comparison: baselines, ablations, inference-time scaling, a report",
        description=textwrap.fill(
            "Train and evaluate every method and ablation from the same base model on the same task and "
            "budget, over several seeds, then write report.md and report.html (tables with 95% intervals, "
            "training curves, transitions, edit distances, inference-time scaling). Finished runs are "
            "skipped and an interrupted RL run resumes, so re-running continues a comparison.", 100),
        epilog="methods (use these names in the file's `methods:` list or in --methods):\n" + methods_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--config", default=None,
                     help="the comparison file [default: the packaged recipes/compare-demo.yaml, "
                          "also configs/compare-demo.yaml]")
    sub.add_argument("--quick", action="store_true",
                     help="tiny budgets and one seed: a report in minutes on 2 CPU cores, numbers meaningless")
    sub.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (overrides the file)")
    sub.add_argument("--methods", help="comma-separated method names (overrides the file's list)")
    sub.add_argument("--output", help="output folder (overrides the file's output_dir)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line. `--task.options.KEY VALUE` (or =VALUE) sets the one task option
    KEY: the keys depend on the task, so they cannot all be argparse options (the help's
    epilog lists them)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    rest = []
    while unknown:
        flag = unknown.pop(0)
        if flag.startswith("--" + OPTION_PREFIX) and len(flag) > len(OPTION_PREFIX) + 2:
            key, has_value, value = flag[2:].partition("=")
            if not has_value:
                if not unknown:
                    _command_parser(parser, args).error(f"argument {flag}: expected one argument")
                value = unknown.pop(0)
            setattr(args, key, value)
        else:
            rest.append(flag)
    if rest:
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The subcommand's parser, so an error reads `selfcorrect train: error: ...`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(args, "command", None), parser)
    return parser


def resolve_config(args: argparse.Namespace, base: C.Config) -> C.Config:
    """base, then the --config YAML file, then every option in command-line order. Task
    options are merged into the dict built so far (config.set_value), never replace it."""
    cfg = C.load_yaml(args.config, base) if getattr(args, "config", None) else base
    fields = dict(C.iter_fields())
    for key, text in vars(args).items():
        if key == "data":
            continue  # below, once the task is known whatever the flags' order
        if key.startswith(OPTION_PREFIX):
            C.set_value(cfg, "task.options", {key[len(OPTION_PREFIX):]: text})
        elif key in fields:
            C.set_value(cfg, key, C.parse_cli_value(text, fields[key].type))
    if getattr(args, "data", None) is not None:
        C.set_value(cfg, "task.options", {eval_data_option(cfg.task.name): args.data})
    return cfg.validate()


def main(argv: list[str] | None = None) -> int:
    """Run one command. Under torchrun every rank runs this: each joins the process group once
    its config is known (`launch`), only rank 0 prints results, and an error is one line on
    stderr and exit code 2 on every rank (errors found by rank 0 alone are shared with the
    others, see distributed.on_main, so no rank is left waiting)."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # a usage error (one line, already printed) or --help
        return exc.code if isinstance(exc.code, int) else 2
    if not sys.stderr.isatty():  # transformers' own bars would write every redraw into a log file
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from . import distributed
    from .faults import TrainingFault, TrainingStopped

    ok = False
    try:
        if args.command == "demo":
            from .demo import demo_config, run_demo

            cfg = launch(resolve_config(args, demo_config(quick=args.quick)))
            run_demo(cfg, quick=args.quick)
        elif args.command == "train":
            run_train(launch(resolve_config(args, C.Config())))
        elif args.command == "compare":
            if distributed.expected_world_size() > 1:
                raise ValueError("compare runs its methods one after another on one process; launch it "
                                 "without torchrun / accelerate")
            run_compare(args)
        else:
            run_eval(launch(resolve_config(args, C.Config())))
        ok = True
    except TrainingStopped as exc:  # a stop signal, honoured with a checkpoint: not a failure
        print(f"selfcorrect {args.command}: {_rank_prefix()}{exc}", file=sys.stderr)
        ok = True
        return 0
    except (ValueError, OSError, TrainingFault) as exc:  # bad input (config, data, model, path) or a fault
        print(f"selfcorrect {args.command}: error: {_rank_prefix()}{one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if not distributed.lost_peer(exc):
            raise
        # a collective failed: another rank died or timed out (its own log says why)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"selfcorrect {args.command}: error: {_rank_prefix()}lost contact with another process of the "
              f"job (it failed, was killed or timed out): {first[:300]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # faults.Interrupted (a second stop signal) carries 128 + signal
        print(f"selfcorrect {args.command}: interrupted; the last checkpoint is kept", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    finally:
        distributed.shutdown(wait=ok)
    return 0


def entry() -> None:
    """`selfcorrect ...` and `python -m selfcorrect ...`: run main() and exit with its code (a
    process of a torchrun job by distributed.exit_process, which avoids an abort at exit)."""
    from . import distributed

    distributed.exit_process(main())


def launch(cfg: C.Config) -> C.Config:
    """Join the process group when launched by torchrun / accelerate (a no-op otherwise), after
    checking that the launch is what it claims to be (distributed.expected_world_size)."""
    from . import distributed
    from .models import pick_device

    distributed.init(cfg.distributed.timeout_s, cuda=pick_device(cfg.model.device).type == "cuda",
                     group_of_one=cfg.distributed.strategy == "fsdp")
    return cfg


def _rank_prefix() -> str:
    from . import distributed

    return f"[rank {distributed.rank()}] " if distributed.world_size() > 1 else ""


def run_train(cfg: C.Config) -> None:
    """Train cfg.algo.method; every method reads the train split before it loads the model."""
    from . import distributed, models
    from .distributed import say
    from .methods import train_method

    try:
        device = models.pick_device(cfg.model.device)
        hint = models.cpu_bf16_hint(device, models.pick_dtype(cfg.model.dtype, device))
    except ValueError:  # a bad device or dtype: reported where the model is loaded, in its order
        hint = None
    if hint and cfg.run.progress and distributed.is_main():
        print(f"selfcorrect train: {hint}", file=sys.stderr)
    with tasks.build_task(cfg.task.name, cfg.task.options) as task:
        spent = train_method(cfg, task)
    say(f"{cfg.algo.method}: {spent['gradient_updates']} updates, {spent['episodes_sampled']} episodes "
          f"in {spent['train_seconds']:.0f} s; model saved to {Path(cfg.run.output_dir) / 'final'}")
    best = Path(cfg.run.output_dir) / "best.json"
    if cfg.run.keep_best and best.is_file():
        chosen = json.loads(best.read_text())
        say(f"best training reward (mean of {chosen['window']} steps, {chosen['mean_reward']:.3f}) at step "
            f"{chosen['step']}: {best.with_name('best')}")


def run_compare(args: argparse.Namespace) -> None:
    """Load the comparison file, run what is not finished, print where the report is."""
    from importlib.resources import as_file, files

    from .compare import load_comparison, run_comparison

    def split(text, kind=str):
        return [kind(x) for x in text.split(",") if x.strip()] if text else None

    try:
        seeds = split(args.seeds, int)
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    import yaml

    if args.seeds is not None and not seeds:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers")
    with as_file(files("selfcorrect") / "recipes" / "compare-demo.yaml") as default:
        path = Path(args.config or default)
        try:
            comparison = load_comparison(path, quick=args.quick, seeds=seeds,
                                         methods=split(args.methods), output_dir=args.output)
        except yaml.YAMLError as exc:
            raise ValueError(f"comparison file {path}:{C.yaml_error_where(exc)} not valid YAML: "
                             f"{getattr(exc, 'problem', None) or type(exc).__name__}") from None
    if not comparison.seeds:
        raise ValueError(f"comparison file {path}: no seeds to run")
    if args.quick and not args.output:
        comparison.output_dir = comparison.output_dir.with_name(comparison.output_dir.name + "-quick")
    check_comparison(comparison)
    md, html = run_comparison(comparison)
    print(f"report: {md}\n        {html}")


def check_comparison(comparison) -> None:
    """What `selfcorrect train` and `eval` check before a model is loaded, for every method of a
    comparison, before its output folder is written: every method's config, its test split (and
    train split when it trains), then the base model's folder, tokenizer and context window."""
    from . import models
    from .compare import UNTRAINED, method_config
    from .evaluate import evaluation_problems
    from .train import check_training_config

    checked: dict[tuple, list] = {}
    base = comparison.base
    for name in comparison.methods:
        cfg = method_config(comparison, name, comparison.seeds[0])
        if name not in UNTRAINED:
            check_training_config(cfg)
        key = (cfg.task.name, repr(sorted(cfg.task.options.items())), cfg.task.test_split,
               cfg.task.train_split if name not in UNTRAINED else None)
        if key in checked:
            continue
        with tasks.build_task(cfg.task.name, cfg.task.options) as task:
            problems = evaluation_problems(cfg, task)
            if name not in UNTRAINED and not task.load(cfg.task.train_split):
                raise ValueError(f"task {task.name!r} split {cfg.task.train_split!r} has no problems")
            checked[key] = problems
            if len(checked) == 1:  # the model once, against the base task's prompts
                tokens = base.eval.max_new_tokens or base.rollout.max_new_tokens
                models.preflight(base.model, task, problems, max_new_tokens=max(tokens, base.rollout.max_new_tokens),
                                 key="eval.max_new_tokens / rollout.max_new_tokens", progress=base.run.progress)


def run_eval(cfg: C.Config) -> None:
    """Evaluate (evaluate.evaluate_config) and print the table."""
    from .distributed import say
    from .evaluate import evaluate_config
    from .metrics import format_table

    result = evaluate_config(cfg)
    label = cfg.model.name
    say(f"\n{cfg.task.name} {cfg.task.test_split}: {result.metrics['n']} problems, {cfg.eval.attempts} attempts")
    say(format_table([(label, result.metrics)], {label: result.intervals}))
    if cfg.eval.attempts > 2:
        extra = {k: v for k, v in result.metrics.items() if k.startswith(("acc_t", "delta_t1_t"))}
        say("  ".join(f"{k}={v * 100:.1f}" for k, v in extra.items()))
    failed = result.metrics.get("n_verifier_failed", 0)
    if failed:  # in the table they count as not correct; say how many, so a 0.0 is not misread
        say(f"{failed} attempts could not be verified (verifier timeout or crash): counted as not correct")
    say(f"per-problem records: {result.folder / 'records.jsonl'}")


if __name__ == "__main__":
    sys.exit(main())
