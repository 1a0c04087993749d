"""`selfcorrect compare`: the paper's comparison on one model and task, in one command.

A comparison is one YAML file (configs/compare-demo.yaml is a ready one):

    title: SCoRe vs baselines, demo task
    output_dir: runs/compare-demo
    seeds: [0, 1, 2]
    base: recipes/demo.yaml        # a train config (path, relative to this file or the package), or a mapping
    overrides: {eval: {scaling: false}}   # applied to every method
    methods:                       # names from METHODS; a mapping adds per-method overrides
      - base
      - score
      - star: {sft: {lr: 3.0e-4}}
    scaling: [base, score]         # methods whose inference-time scaling is measured

Every method starts from the same base model, trains on the same problems with the same turn-2
instruction and the same budget (the base config's RL settings: stage1_steps + stage2_steps
updates of problems_per_step x samples_per_problem episodes; see methods/sft_baselines.py), and
is evaluated with the same greedy protocol. Each method x seed is a run folder
`<output_dir>/<method>/seed-<s>/` like `train` makes, plus `eval/` and `summary.json`.
Re-running skips finished units and resumes an interrupted RL run from its last checkpoint (an
SFT baseline restarts). Each unit records the settings it was made with (compare-unit.yaml); a
re-run whose settings differ for a unit is refused, unless `overrides: {run: {overwrite: true}}`
asks to start such units over. At the end the report is written (selfcorrect/report).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path

import yaml

from .atomic import temporaries, write_text_atomic
from .config import Config, changed_settings, flat_settings, from_dict, load_yaml, read_yaml, save_yaml, to_dict
from .tasks import FIRST_SPLIT_RULE, split_rule

#: method name -> (display label, config overrides). "base" and "self_refine" train nothing.
METHODS: dict[str, tuple[str, dict]] = {
    "base": ("Base", {}),
    "self_refine": ("Self-Refine", {"eval": {"method": "self_refine"}}),
    "star": ("STaR w/ D_STaR", {"algo": {"method": "star"}}),
    "star_plus": ("STaR w/ D+_STaR", {"algo": {"method": "star_plus"}}),
    "pair_sft": ("Pair-SFT w/ D_SFT", {"algo": {"method": "pair_sft"}}),
    "pair_sft_plus": ("Pair-SFT w/ D+_SFT", {"algo": {"method": "pair_sft_plus"}}),
    "single_turn": ("Single-turn RL", {"algo": {"method": "single_turn"}}),
    "score": ("SCoRe", {}),
    "score_no_stage1": ("SCoRe w/o Stage I", {"algo": {"stage1_steps": 0}}),  # its steps go to Stage II
    "score_no_shaping": ("SCoRe w/o reward shaping", {"algo": {"alpha": 0.0}}),
    "score_star_stage2": ("SCoRe w/ STaR in Stage II", {"algo": {"stage2": "star"}}),
    "score_offline_turn1": ("SCoRe w/o on-policy turn 1", {"algo": {"turn1": "base"}}),
}
UNTRAINED = ("base", "self_refine")

#: the file in each unit folder holding the config the unit was made with (model.name as the
#: comparison names it: config.yaml and eval/config.yaml hold the resolved model path instead)
SETTINGS_FILE = "compare-unit.yaml"
#: keys that cannot change a unit's numbers, so a re-run may differ in them and still reuse it:
#: where the folder is, bookkeeping of checkpoints and progress, and eval.scaling (is_finished
#: already asks for scaling.json when a method is added to `scaling:`, and evaluates it again)
SETTINGS_IGNORED = frozenset({
    "run.output_dir", "run.resume", "run.overwrite", "run.progress", "run.save_every", "run.keep_checkpoints",
    "distributed.timeout_s", "eval.scaling",
})
#: sections only training reads: a method that trains nothing (UNTRAINED) may differ in them
TRAINING_SECTIONS = frozenset({"algo", "optim", "sft"})
MAX_SEED = 2**32  # numpy and torch seeds must be below it


@dataclass
class Comparison:
    """A resolved comparison file."""

    title: str
    output_dir: Path
    seeds: list[int]
    base: Config
    methods: dict[str, dict] = field(default_factory=dict)  # name -> extra overrides
    scaling: list[str] = field(default_factory=list)
    quick: bool = False
    raw: dict = field(default_factory=dict)


def _merge(into: dict, extra: dict) -> dict:
    """Nested dict merge (extra wins), without touching either input."""
    out = copy.deepcopy(into)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _base_config(value, where: Path) -> Config:
    """`base:` as a mapping, a YAML path relative to the comparison file, or recipes/<name>."""
    if isinstance(value, dict):
        return from_dict(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: 'base' must be a config file or a mapping, got {value!r}")
    path = (where.parent / value) if not Path(value).is_absolute() else Path(value)
    if path.exists():
        return load_yaml(path)
    for packaged in (files("selfcorrect") / value, files("selfcorrect") / "recipes" / value):
        if packaged.is_file():  # "demo.yaml" in a copy of the packaged comparison is the packaged recipe
            with as_file(packaged) as p:
                return load_yaml(p)
    raise FileNotFoundError(f"{where}: base config {value!r} found neither beside it nor in the package")


def load_comparison(path: str | Path, *, quick: bool = False, seeds: list[int] | None = None,
                    methods: list[str] | None = None, output_dir: str | None = None) -> Comparison:
    """Read and check a comparison file; command-line choices override it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"comparison file {path} does not exist")
    raw = read_yaml(path, "comparison file")
    raw = {} if raw is None else raw  # an empty file: every default
    known = {"title", "output_dir", "seeds", "base", "overrides", "methods", "scaling", "quick"}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ValueError(f"{path}: unknown keys {sorted(set(raw) - known) if isinstance(raw, dict) else raw!r}; "
                         f"known: {sorted(known)}")
    base = _base_config(raw.get("base", {}), path)
    try:
        base = from_dict(raw.get("overrides") or {}, base)
    except ValueError as exc:
        raise ValueError(f"{path}: 'overrides': {exc}") from None
    listed = parse_methods(raw.get("methods"), path)
    if methods:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
        listed = {m: listed.get(m, {}) for m in methods}
    if not isinstance(raw.get("quick", False), bool):
        raise ValueError(f"{path}: 'quick' must be true or false, got {raw['quick']!r}")
    quick = quick or raw.get("quick", False)
    file_output = raw.get("output_dir", "runs/compare")
    if not isinstance(file_output, str) or not file_output.strip():
        raise ValueError(f"{path}: 'output_dir' must be a folder path, got {file_output!r}")
    seeds = check_seeds(seeds, "--seeds") if seeds is not None else \
        check_seeds(raw.get("seeds", [0, 1, 2]), f"{path}: 'seeds'")
    comparison = Comparison(
        title=str(raw.get("title", path.stem)), output_dir=Path(output_dir or file_output),
        seeds=seeds, base=base, methods=listed,
        scaling=[m for m in parse_scaling(raw.get("scaling"), path) if m in listed], quick=quick, raw=raw)
    if quick:
        make_quick(comparison)
    for name in comparison.methods:  # every method's config must be valid before anything runs
        try:
            method_config(comparison, name, comparison.seeds[0])
        except ValueError as exc:
            raise ValueError(f"{path}: method {name!r}: {exc}") from None
    return comparison


def check_seeds(value, where: str) -> list[int]:
    """`seeds:` (or --seeds) as a non-empty list of distinct ints in [0, 2**32): each is a run
    folder seed-<s> and seeds numpy and torch, which refuse anything else only once training starts."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of integers such as [0, 1, 2], got {value!r}")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
            raise ValueError(f"{where}: {seed!r} is not an integer in [0, 2**32)")
    repeated = sorted({s for s in value if value.count(s) > 1})
    if repeated:  # the same folder twice: the second run would overwrite the first
        raise ValueError(f"{where}: seed(s) {repeated} listed twice")
    return list(value)


def parse_methods(value, path: Path) -> dict[str, dict]:
    """`methods:` as method name -> its extra overrides. Written as a list of names and {name:
    overrides} items, or as one mapping {name: overrides} (the report reads both forms); left
    out, every method."""
    if value is None:
        return {name: {} for name in METHODS}
    if isinstance(value, (dict, list)) and not value:  # surely a slip: a comparison of nothing
        raise ValueError(f"{path}: 'methods' is empty; list the methods to compare, or leave it out for all")
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = [_method_item(item, path) for item in value]
    else:
        raise ValueError(f"{path}: 'methods' must be a list of method names (an item may be {{name: overrides}}) "
                         f"or a mapping of name to overrides, got {value!r}")
    listed: dict[str, dict] = {}
    for name, extra in items:
        if not isinstance(name, str) or name not in METHODS:
            raise ValueError(f"{path}: unknown method {name!r}; known: {', '.join(METHODS)}")
        if extra is not None and not isinstance(extra, dict):
            raise ValueError(f"{path}: method {name!r}: its overrides must be a mapping of config sections "
                             f"such as {{sft: {{lr: 1.0e-4}}}}, got {extra!r}")
        if name in listed:  # two entries of one method: one would silently win
            raise ValueError(f"{path}: method {name!r} listed twice")
        listed[name] = extra or {}
    return listed


def _method_item(item, path: Path) -> tuple:
    """(name, overrides) of one `methods:` list item: a name, or a mapping with exactly one key."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        return next(iter(item.items()))
    raise ValueError(f"{path}: each 'methods' item must be a method name or {{name: overrides}} with one name, "
                     f"got {item!r}")


def parse_scaling(value, path: Path) -> list[str]:
    """`scaling:`: method names; a name that is no method is refused, not silently dropped."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ValueError(f"{path}: 'scaling' must be a list of method names, got {value!r}")
    unknown = [m for m in value if m not in METHODS]
    if unknown:
        raise ValueError(f"{path}: 'scaling': unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    return list(value)


def make_quick(c: Comparison) -> None:
    """Tiny budgets so a new user sees a report in minutes; the numbers mean nothing."""
    cfg = c.base
    cfg.algo.stage1_steps = cfg.algo.stage2_steps = 2
    cfg.optim.problems_per_step = 8
    cfg.eval.limit, cfg.eval.bootstrap = 40, 100
    cfg.eval.scaling_k = "1,2"
    cfg.sft.iterations = 2
    c.seeds = c.seeds[:1]
    c.title = f"{c.title} (quick: meaningless numbers)"


def method_config(c: Comparison, method: str, seed: int) -> Config:
    """The full config of one unit: base + the method's preset + its listed overrides."""
    cfg = copy.deepcopy(c.base)
    if method == "score_no_stage1":  # the whole update budget goes to Stage II
        cfg.algo.stage2_steps += cfg.algo.stage1_steps
    cfg = from_dict(_merge(METHODS[method][1], c.methods.get(method, {})), cfg)
    cfg.run.seed = seed
    cfg.run.output_dir = str(unit_dir(c, method, seed))
    cfg.eval.scaling = method in c.scaling
    return cfg.validate()


def unit_dir(c: Comparison, method: str, seed: int) -> Path:
    return c.output_dir / method / f"seed-{seed}"


def is_finished(c: Comparison, method: str, seed: int) -> bool:
    folder = unit_dir(c, method, seed)
    summary = folder / "summary.json"
    if not summary.exists() or not json.loads(summary.read_text()).get("done"):
        return False
    if json.loads(summary.read_text()).get("skipped"):
        return True
    needs = [folder / "eval" / "metrics.json"] + ([folder / "eval" / "scaling.json"] if method in c.scaling else [])
    return all(p.exists() for p in needs)


def unit_settings(c: Comparison, method: str, seed: int) -> dict:
    """The config a unit is made with, as plain data, its model named as in the comparison, and
    the task's split rule where a built-in task's has changed (`split_rule`)."""
    settings = to_dict(method_config(c, method, seed))
    rule = split_rule(settings["task"]["name"])
    if rule is not None:
        settings["split_rule"] = rule
    return settings


def settings_differences(recorded: dict, wanted: dict, *, trains: bool = True) -> list[str]:
    """'section.key: old -> new' for every key that differs and can change a unit's numbers
    (`trains` False: the training sections cannot). Only keys both sides have are compared: a
    field added or removed by another version of selfcorrect is no change the user made."""
    out = []
    for key, old, new in changed_settings(flat_settings(recorded), flat_settings(wanted)):
        section, dotted, _ = key.partition(".")
        if not dotted or key in SETTINGS_IGNORED or (not trains and section in TRAINING_SECTIONS):
            continue  # no section (a damaged record), bookkeeping, or training settings of no training
        out.append(f"{key}: {old!r:.40} -> {new!r:.40}")
    return out


def stale_unit(c: Comparison, method: str, seed: int) -> str | None:
    """Why the folder of a unit cannot be reused by this comparison (None when it can): it was
    made with other settings, or by a selfcorrect that kept no record of them."""
    folder = unit_dir(c, method, seed)
    record = folder / SETTINGS_FILE
    if not record.is_file():
        # the record is the first file a unit writes: a folder with other files and no record
        # was made before records were kept, with settings nobody can check (the leftover of an
        # interrupted atomic write of the record is no such file)
        has_files = folder.is_dir() and any(p not in temporaries(folder) for p in folder.iterdir())
        return "no record of its settings: made by an older selfcorrect" if has_files else None
    try:
        recorded = read_yaml(record, "unit settings")
    except ValueError as exc:
        return str(exc)
    if not isinstance(recorded, dict):
        return f"{record} is not a mapping of config sections"
    wanted = unit_settings(c, method, seed)
    was = recorded.get("split_rule", FIRST_SPLIT_RULE)
    if "split_rule" in wanted and was != wanted["split_rule"]:
        return (f"made on the {wanted['task']['name']} task's split rule {was}, and this "
                f"selfcorrect splits by rule {wanted['split_rule']} (other test and train problems)")
    differences = settings_differences(recorded, wanted, trains=method not in UNTRAINED)
    if not differences:
        return None
    more = f", and {len(differences) - 3} more" if len(differences) > 3 else ""
    return "; ".join(differences[:3]) + more


def check_reuse(c: Comparison) -> list[tuple[str, int]]:
    """Units whose folders hold runs made with other settings: refused (a ValueError naming the
    first one), or, when the base config sets run.overwrite, returned to be started over."""
    stale = []
    for seed in c.seeds:
        for method in c.methods:
            why = stale_unit(c, method, seed)
            if why is None:
                continue
            if not c.base.run.overwrite:
                raise ValueError(
                    f"{c.output_dir} holds a comparison run {method}/seed-{seed} made with other settings ({why}); "
                    f"use another --output, or set overrides: {{run: {{overwrite: true}}}} in the comparison "
                    f"file to start such runs over")
            stale.append((method, seed))
    return stale


def run_unit(c: Comparison, method: str, seed: int, base_model_name: str) -> dict:
    """Train (unless the method trains nothing) and evaluate one method x seed; write summary.json."""
    from .evaluate import evaluate_config, evaluation_problems
    from .methods import train_method
    from .tasks import build_task

    cfg = method_config(c, method, seed)
    folder = Path(cfg.run.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # first, so a folder's files are never without the settings they were made with (check_reuse);
    # atomic, so an interrupted write leaves no half record that would refuse the unit later
    write_text_atomic(folder / SETTINGS_FILE, yaml.safe_dump(unit_settings(c, method, seed), sort_keys=False))
    cfg.model.name = base_model_name
    label = METHODS[method][0]
    with build_task(cfg.task.name, cfg.task.options) as task:
        evaluation_problems(cfg, task)  # the data first
        summary_path = folder / "summary.json"
        trained = summary_path.exists() and json.loads(summary_path.read_text()).get("done")
        if method in UNTRAINED:
            summary = {"method": method, "episodes_sampled": 0, "gradient_updates": 0, "train_seconds": 0.0}
            if method == "self_refine":
                from .methods.self_refine import check_applicable

                try:
                    check_applicable(task)
                except ValueError as exc:  # e.g. the demo model: reported as not applicable
                    summary.update(skipped=str(exc), done=True)
                    _write_summary(folder, summary, label, seed)
                    return summary
            eval_model = base_model_name
        else:
            if not trained:
                cfg.run.resume = (folder / "checkpoints" / "LATEST").exists()
                cfg.run.overwrite = not cfg.run.resume
                save_yaml(cfg, folder / "config.yaml")
                summary = train_method(cfg, task)
            else:
                summary = json.loads(summary_path.read_text())
            eval_model = str(folder / "final")
        eval_cfg = copy.deepcopy(cfg)
        eval_cfg.model.name, eval_cfg.model.lora = eval_model, False
        eval_cfg.run.overwrite = True  # the unit is not finished (is_finished): its evaluation is redone whole
        started = time.perf_counter()
        result = evaluate_config(eval_cfg, task=task, name=label, folder=folder / "eval")
        summary["eval_seconds"] = round(time.perf_counter() - started, 1)
        if "samples_per_problem_mean" in result.metrics:
            summary["samples_per_problem_mean"] = result.metrics["samples_per_problem_mean"]
    summary["done"] = True
    _write_summary(folder, summary, label, seed)
    return summary


def _write_summary(folder: Path, summary: dict, label: str, seed: int) -> None:
    """summary.json of a unit, named by the comparison's method (an ablation's training method
    is 'score'; it stays in `trained_as`)."""
    method = folder.parent.name
    if summary.get("method", method) != method:
        summary["trained_as"] = summary["method"]
    summary.update(method=method, label=label, seed=seed)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))


def resolve_base_model(c: Comparison) -> str:
    """The base model's folder, built or converted once for every unit (the demo base is built
    once and cached, a few minutes on 2 CPU cores; `selfcorrect demo` shares it)."""
    from .models import resolve_model_path

    return resolve_model_path(c.base.model.name, progress=c.base.run.progress)


def run_comparison(c: Comparison, *, stream=None) -> tuple[Path, Path]:
    """Every method x seed (finished ones skipped), then report.md and report.html."""
    from .progress import progress
    from .report import write_report

    stale = check_reuse(c)  # before anything is written: a refused comparison leaves the folder as it was
    for method, seed in stale:
        print(f"compare: {method}/seed-{seed} was made with other settings; starting it over (run.overwrite)",
              flush=True)
        shutil.rmtree(unit_dir(c, method, seed))
    c.output_dir.mkdir(parents=True, exist_ok=True)
    (c.output_dir / "compare.yaml").write_text(yaml.safe_dump(
        {**c.raw, "title": c.title, "seeds": c.seeds, "quick": c.quick, "methods": list(c.methods),
         "scaling": c.scaling, "resolved_base": to_dict(c.base)}, sort_keys=False))
    units = [(m, s) for s in c.seeds for m in c.methods]
    todo = [u for u in units if not is_finished(c, *u)]
    print(f"compare: {len(units)} runs ({len(units) - len(todo)} already finished) -> {c.output_dir}",
          flush=True)
    base_model = resolve_base_model(c) if todo else c.base.model.name
    bar = progress(len(units), "compare", enabled=c.base.run.progress, initial=len(units) - len(todo),
                   stream=stream, every_s=10)
    for method, seed in todo:
        bar.set_postfix(run=f"{method}/seed-{seed}")
        summary = run_unit(c, method, seed, base_model)
        bar.update(1)
        print(f"compare: {method} seed {seed} done: {summary.get('skipped') or _headline(c, method, seed)}",
              flush=True)
    bar.close()
    return write_report(c.output_dir)


def _headline(c: Comparison, method: str, seed: int) -> str:
    m = json.loads((unit_dir(c, method, seed) / "eval" / "metrics.json").read_text())["metrics"]
    return f"Acc@t1 {m['acc_t1']:.1%}  Acc@t2 {m['acc_t2']:.1%}  Δ {m['delta']:+.1%}"


def methods_help() -> str:
    """One line per method, for `selfcorrect compare --help`."""
    from .methods import DESCRIPTIONS

    lines = []
    for name, (label, overrides) in METHODS.items():
        if name == "base":
            text = "the base model, no training"
        elif name == "self_refine":
            text = "prompting only: feedback on attempt 1, then a refined answer (docs/SELF_REFINE.md)"
        elif name in DESCRIPTIONS:
            text = DESCRIPTIONS[name].split(": ", 1)[-1]
        else:
            text = "ablation: " + ", ".join(f"{s}.{k}={v}" for s, kv in overrides.items() for k, v in kv.items())
            if name == "score_no_stage1":
                text = "ablation: algo.stage1_steps=0 (its steps go to Stage II)"
        lines.append(f"  {name:<21} {label}: {text}")
    return "\n".join(lines)
