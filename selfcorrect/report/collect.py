"""Read a comparison folder (finished or still running) into plain data for the report.

The runner writes `<compare_dir>/<method>/seed-<s>/` while it works, so anything may be missing,
half-written or unfinished when the report is built. Nothing here raises on a bad run: a file
that cannot be read becomes a note on its run, and a run without finished evaluation numbers is
*pending* (listed in the report, left out of the tables) instead of a crash or a wrong number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .styles import method_label, method_sort_key

SEED_PREFIX = "seed-"
NOT_RUN_FOLDERS = {"figures"}  # written by the report itself, never a method


@dataclass
class Outcomes:
    """What the report needs from eval/records.jsonl, without keeping every field of every record.

    correct: [N problems, A attempts] of 1.0 / 0.0 / NaN (verifier failed, or the attempt is
    absent in a ragged file). first_two_texts: (attempt 1, attempt 2) text per problem that has
    both, for the edit-distance ratio.
    """

    correct: np.ndarray
    first_two_texts: list[tuple[str, str]]

    @property
    def attempts(self) -> int:
        return int(self.correct.shape[1])


@dataclass
class Run:
    """One method trained and evaluated with one seed."""

    method: str
    seed: int
    folder: Path
    summary: dict | None = None
    curve: list[dict] = field(default_factory=list)
    metrics: dict | None = None
    intervals: dict = field(default_factory=dict)
    outcomes: Outcomes | None = None
    records_path: Path | None = None
    scaling: dict | None = None
    """scaling.json, beside summary.json or in eval/."""
    notes: list[str] = field(default_factory=list)
    """Why something of this run could not be read (shown in the report)."""

    @property
    def done(self) -> bool:
        return bool(self.summary and self.summary.get("done"))

    @property
    def finished(self) -> bool:
        """Counted in the tables: training is done and the evaluation numbers exist."""
        return self.done and self.metrics is not None

    @property
    def status(self) -> str:
        """Why a run is not finished, in a few words ('finished' when it is)."""
        if self.finished:
            return "finished"
        if self.summary is None:
            return "started (no summary.json yet)"
        if self.summary.get("skipped"):
            return f"skipped: {self.summary['skipped']}"
        if not self.done:
            return "training"
        return "trained, not evaluated"

    def budget(self, key: str) -> float | None:
        value = (self.summary or {}).get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Method:
    """All seeds of one method, with the display name the runner gave it."""

    name: str
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def finished_runs(self) -> list[Run]:
        return [r for r in self.runs if r.finished]

    @property
    def not_applicable(self) -> str | None:
        """The reason when every run of the method was skipped as not applicable (Self-Refine
        on a model that cannot follow feedback prompts), else None."""
        reasons = {(r.summary or {}).get("skipped") for r in self.runs}
        return reasons.pop() if self.runs and len(reasons) == 1 and None not in reasons else None


@dataclass
class Pending:
    """A run the report cannot count yet: its method, seed and why."""

    method: str
    label: str
    seed: int | None
    status: str


@dataclass
class Comparison:
    folder: Path
    title: str
    quick: bool
    config: dict
    methods: list[Method]
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [run for m in self.methods for run in m.runs]

    def pending(self) -> list[Pending]:
        """Runs that exist but are not finished, and runs compare.yaml asks for that have no folder."""
        out = []
        for m in self.methods:
            if m.not_applicable:
                continue  # reported as not applicable, not as waiting
            for run in m.runs:
                if not run.finished:
                    out.append(Pending(m.name, m.label, run.seed, run.status))
            seen = {run.seed for run in m.runs}
            missing = [s for s in expected_seeds(self.config) if s not in seen]
            for seed in missing:
                out.append(Pending(m.name, m.label, seed, "not started"))
            if not m.runs and not missing:
                out.append(Pending(m.name, m.label, None, "not started"))
        return out


def collect(compare_dir: str | Path) -> Comparison:
    """Read every run under `compare_dir`, grouped by method in the paper's order.

    Methods named in compare.yaml (a 'methods' list or mapping) but without a folder yet are
    included with no runs, so the report lists them as pending instead of forgetting them.
    """
    folder = Path(compare_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"comparison folder {folder} does not exist")
    notes: list[str] = []
    config = _read_config(folder / "compare.yaml", notes)
    by_name: dict[str, list[Run]] = {name: [] for name in expected_methods(config)}
    for method_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        seed_dirs = [p for p in method_dir.iterdir() if p.is_dir() and _seed_of(p) is not None]
        if method_dir.name in NOT_RUN_FOLDERS or method_dir.name.startswith(".") or not seed_dirs:
            continue
        runs = by_name.setdefault(method_dir.name, [])
        runs.extend(read_run(method_dir.name, p) for p in sorted(seed_dirs, key=_seed_of))
    methods = [Method(name, _label(name, runs), runs) for name, runs in by_name.items()]
    methods.sort(key=lambda m: method_sort_key(m.name))
    title = str(config.get("title") or "Self-correction comparison")
    return Comparison(folder, title, bool(config.get("quick")), config, methods, notes)


def read_run(method: str, folder: Path) -> Run:
    """Read one `<method>/seed-<s>/` folder; every unreadable file becomes a note, not an error."""
    run = Run(method=method, seed=_seed_of(folder), folder=folder)
    summary = _read_json(folder / "summary.json", run.notes)
    run.summary = summary if isinstance(summary, dict) else None
    run.curve = _read_jsonl(folder / "metrics.jsonl", run.notes)
    metrics_path = _eval_file(folder, "metrics.json")
    evaluation = _read_json(metrics_path, run.notes) if metrics_path else None
    if isinstance(evaluation, dict) and isinstance(evaluation.get("metrics"), dict):
        run.metrics = {k: v for k, v in evaluation["metrics"].items() if _is_number(v)}
        run.intervals = {k: (float(v[0]), float(v[1])) for k, v in (evaluation.get("intervals") or {}).items()
                         if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v)}
    elif evaluation is not None:
        run.notes.append(f"{metrics_path.relative_to(folder)} has no 'metrics' object")
    run.records_path = _eval_file(folder, "records.jsonl")
    if run.records_path:
        run.outcomes = read_outcomes(_read_jsonl(run.records_path, run.notes))
    scaling_path = folder / "scaling.json" if (folder / "scaling.json").is_file() else _eval_file(folder, "scaling.json")
    scaling = _read_json(scaling_path, run.notes) if scaling_path else None
    run.scaling = scaling if isinstance(scaling, dict) else None
    return run


def read_outcomes(records: list[dict]) -> Outcomes | None:
    """Per-problem rewards and the first two texts from evaluation records (None when there are none)."""
    rows = [r["attempts"] for r in records if isinstance(r.get("attempts"), list) and r["attempts"]]
    if not rows:
        return None
    width = max(len(row) for row in rows)
    correct = np.full((len(rows), width), np.nan)
    texts = []
    for i, attempts in enumerate(rows):
        for a, attempt in enumerate(attempts):
            reward = attempt.get("reward") if isinstance(attempt, dict) else None
            if _is_number(reward):
                correct[i, a] = 1.0 if reward >= 1.0 else 0.0
        if len(attempts) >= 2 and all(isinstance(x, dict) and isinstance(x.get("text"), str) for x in attempts[:2]):
            texts.append((attempts[0]["text"], attempts[1]["text"]))
    return Outcomes(correct, texts)


def expected_methods(config: dict) -> list[str]:
    """Method names compare.yaml lists under 'methods': a list of names, of {name: overrides} or of
    {'name': ...}, or a mapping from name to overrides."""
    listed = config.get("methods")
    if isinstance(listed, dict):
        return [str(k) for k in listed]
    names = []
    for item in listed if isinstance(listed, list) else []:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            names.append(item["name"])
        elif isinstance(item, dict) and len(item) == 1:  # {method: overrides}
            names.append(str(next(iter(item))))
    return names


def expected_seeds(config: dict) -> list[int]:
    """Seeds compare.yaml asks for: a 'seeds' list, or a count meaning 0..count-1."""
    seeds = config.get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return list(range(seeds))
    if isinstance(seeds, list):
        return [s for s in seeds if isinstance(s, int) and not isinstance(s, bool)]
    return []


def _label(name: str, runs: list[Run]) -> str:
    for run in runs:
        if run.summary and isinstance(run.summary.get("label"), str) and run.summary["label"].strip():
            return run.summary["label"].strip()
    return method_label(name)


def _seed_of(folder: Path) -> int | None:
    if not folder.name.startswith(SEED_PREFIX):
        return None
    try:
        return int(folder.name[len(SEED_PREFIX):])
    except ValueError:
        return None


def _eval_file(run_folder: Path, name: str) -> Path | None:
    """eval/<name>, or the one eval/<label>/<name> that `selfcorrect eval` writes, else None."""
    direct = run_folder / "eval" / name
    if direct.is_file():
        return direct
    nested = sorted((run_folder / "eval").glob(f"*/{name}"))
    return nested[0] if len(nested) == 1 else None


def _read_config(path: Path, notes: list[str]) -> dict:
    if not path.is_file():
        notes.append("compare.yaml is missing")
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        notes.append(f"compare.yaml could not be read: {e}")
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _read_json(path: Path, notes: list[str]):
    """The parsed file, or None when it is absent (silently) or unreadable (with a note)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"{path.name} could not be read: {e}")
        return None


def _read_jsonl(path: Path, notes: list[str]) -> list[dict]:
    """Every object line of a JSONL file. A bad last line is a line still being written and is
    dropped quietly; a bad line elsewhere is noted."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        notes.append(f"{path.name} could not be read: {e}")
        return []
    rows, bad = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += i < len(lines) - 1
            continue
        if isinstance(row, dict):
            rows.append(row)
    if bad:
        notes.append(f"{path.name}: {bad} unreadable line(s) skipped")
    return rows


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
