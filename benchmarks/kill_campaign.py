"""Kill campaign: `kill -9` a small training run at random moments, resume it, and check that
nothing was lost or corrupted.

A tiny random Llama (tests/tiny.py) trains SCoRe on 1-digit arithmetic for --steps steps with a
checkpoint after every step. First an uninterrupted reference run; then the same run is started,
SIGKILLed, and resumed (`--run.resume true`), --kills times, then left to finish. Each kill is
aimed either somewhere in a step (rollout, loss, optimizer: a random moment after start-up) or
just after a step's metrics line (the checkpoint write); which phase a kill hit is recorded from
what it left (a temporary folder means it hit a checkpoint write). After every kill: the LATEST
checkpoint must load (every file read, weights finite). At the end: every step's loss equals the
reference run's (|diff| <= 1e-6), no temporary folder is left, the lock is released.

    PYTHONPATH=. python benchmarks/kill_campaign.py --kills 20

prints `kills: 20, resumed: 20, identical_losses: true, leftover_temp_folders: 0` and exits 0 when
every check holds (1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.01


def save_tiny_model(folder: Path) -> Path:
    """The tests' tiny Llama + character tokenizer as a Hugging Face folder (no download)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_model(tok, seed=4).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def train_command(model: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """`selfcorrect train` on the tiny model: `steps` steps (half Stage I), a checkpoint each step."""
    return [sys.executable, "-m", "selfcorrect", "train", "--model", str(model), "--model.device", "cpu",
            "--task", "arithmetic", "--task.options.digits", "1", "--task.options.ops", "+",
            "--task.options.style", "chat", "--rollout.samples_per_problem", "2", "--rollout.max_new_tokens", "4",
            "--optim.problems_per_step", "3", "--optim.micro_batch_size", "8", "--optim.lr", "0.01",
            "--algo.stage1_steps", str(steps // 2), "--algo.stage2_steps", str(steps - steps // 2),
            "--run.save_every", "1", "--run.keep_checkpoints", "2", "--run.progress", "false",
            "--output", str(out), *extra]


def child_env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start a run in its own process group (so a kill reaches exactly it and its children)."""
    with open(log, "a") as fh:
        return subprocess.Popen(cmd, env=child_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the run's own process group (started by `launch`), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def metric_lines(out: Path) -> int:
    """Complete lines in metrics.jsonl (a kill can cut the last one short)."""
    try:
        text = (out / "metrics.jsonl").read_text()
    except OSError:
        return 0
    return text.count("\n")


def losses(out: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row["loss"] for row in rows}


def temp_folders(out: Path) -> list[Path]:
    from selfcorrect.atomic import temporaries

    return [p for p in temporaries(out) + temporaries(out / "checkpoints") if p.is_dir()]


def latest_step(out: Path) -> int:
    """The step of the LATEST checkpoint after reading all its files (0 when there is none)."""
    from selfcorrect import checkpoint

    folder = checkpoint.latest(out)
    return 0 if folder is None else int(checkpoint.check(folder)["step"])


def reference_run(model: Path, out: Path, steps: int, timeout_s: float) -> tuple[dict[int, float], float, float]:
    """Run uninterrupted; return (losses, start-up seconds, seconds per step) as seen from outside."""
    start = time.monotonic()
    proc = launch(train_command(model, out, steps), out.with_suffix(".log"))
    seen, stamps = 0, []
    while proc.poll() is None:
        if time.monotonic() - start > timeout_s:
            kill9(proc)
            raise RuntimeError("the reference run timed out")
        n = metric_lines(out)
        if n > seen:
            stamps += [time.monotonic() - start] * (n - seen)
            seen = n
        time.sleep(POLL_S)
    if proc.returncode != 0:
        raise RuntimeError(f"the reference run failed ({proc.returncode}); see {out.with_suffix('.log')}")
    per_step = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1) if stamps else 1.0
    return losses(out), (stamps[0] - per_step) if stamps else 5.0, per_step


def one_kill(proc: subprocess.Popen, out: Path, mode: str, startup: float, per_step: float,
             rng: random.Random, timeout_s: float, before: int, finished: bool) -> bool:
    """Kill `proc` in `mode` ('step': a random moment of its first step, or at once when a step
    finishes first; 'checkpoint': 0-500 ms after a step's metrics line). `before`: the resumed step
    (the run drops later lines on resuming); `finished`: every step is checkpointed, only the
    final save is left, so kill during start-up. False: it ended first."""
    start = time.monotonic()
    if finished:
        deadline = start + rng.uniform(0.3 * startup, 0.9 * startup)
    elif mode == "step":
        deadline = start + rng.uniform(0.5 * startup, startup + 0.8 * per_step)
    else:
        deadline = start + timeout_s
    while proc.poll() is None:
        if metric_lines(out) > before:
            if mode == "checkpoint":
                time.sleep(rng.uniform(0.0, 0.5))
            break
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    if proc.poll() is not None:
        return False
    kill9(proc)
    return True


def campaign(kills: int, steps: int, seed: int, work: Path, timeout_s: float) -> dict:
    rng = random.Random(seed)
    model = save_tiny_model(work / "model")
    ref, startup, per_step = reference_run(model, work / "reference", steps, timeout_s)
    out = work / "run"
    done_kills = resumed = temps_seen = 0
    phases = {"step": 0, "checkpoint_write": 0, "after_checkpoint": 0}
    bad: list[str] = []
    while done_kills < kills:
        have = latest_step(out) if (out / "checkpoints").exists() else 0
        extra = ("--run.resume", "true") if have else ("--run.overwrite", "true")
        resumed += done_kills > 0
        # spare steps must last for the kills left: aim at checkpoint writes only that often
        spare = steps - have - 2
        mode = "checkpoint" if rng.random() < min(1.0, max(spare, 0) / (kills - done_kills)) else "step"
        proc = launch(train_command(model, out, steps, *extra), out.with_suffix(".log"))
        lines = metric_lines(out)
        if not one_kill(proc, out, mode, startup, per_step, rng, timeout_s, have, have >= steps):
            bad.append(f"launch {done_kills + 1} ended before its kill (exit {proc.returncode})")
            break
        done_kills += 1
        temps = temp_folders(out)
        temps_seen += bool(temps)
        phases["checkpoint_write" if temps else "after_checkpoint" if metric_lines(out) > lines else "step"] += 1
        try:
            latest_step(out)
        except Exception as exc:  # the point of the campaign: any unreadable checkpoint is a failure
            bad.append(f"after kill {done_kills}: the latest checkpoint does not load: {exc}")
    resumed += done_kills > 0
    have = latest_step(out) if (out / "checkpoints").exists() else 0
    extra = ("--run.resume", "true") if have else ("--run.overwrite", "true")
    proc = launch(train_command(model, out, steps, *extra), out.with_suffix(".log"))
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill9(proc)
        code = "timeout"
    if code != 0:
        bad.append(f"the final resume failed ({code}); see {out.with_suffix('.log')}")
    got = losses(out) if (out / "metrics.jsonl").exists() else {}
    identical = sorted(got) == sorted(ref) and all(abs(got[s] - ref[s]) <= 1e-6 for s in ref)
    exact = identical and all(got[s] == ref[s] for s in ref)
    leftover = len(temp_folders(out))
    if (out / ".lock").exists():
        bad.append("the run lock was not released")
    return {"kills": done_kills, "resumed": resumed, "identical_losses": identical, "bit_identical": exact,
            "leftover_temp_folders": leftover, "phases": phases, "kills_leaving_temp_folders": temps_seen,
            "steps": steps, "problems": bad, "max_abs_loss_diff": max((abs(got.get(s, float("nan")) - ref[s])
                                                                        for s in ref), default=0.0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="working folder (default: a temporary one, removed)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds any one launch may take")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kill-campaign-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        r = campaign(args.kills, args.steps, args.seed, work, args.timeout)
    print(f"kills: {r['kills']}, resumed: {r['resumed']}, identical_losses: {str(r['identical_losses']).lower()}, "
          f"leftover_temp_folders: {r['leftover_temp_folders']}")
    print(f"details: steps {r['steps']}, bit-identical {str(r['bit_identical']).lower()}, max |loss diff| "
          f"{r['max_abs_loss_diff']:.3g}, kills by phase {r['phases']}, kills that left a temporary folder "
          f"(removed on resume) {r['kills_leaving_temp_folders']}")
    for problem in r["problems"]:
        print(f"PROBLEM: {problem}")
    ok = (not r["problems"] and r["identical_losses"] and r["leftover_temp_folders"] == 0
          and r["kills"] == args.kills)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
