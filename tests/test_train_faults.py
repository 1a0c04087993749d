"""Training faults: preemption signals, NaN/inf steps, two runs in one folder, a full disk, kill -9.

The signal and kill tests run `python -m selfcorrect train` in a subprocess (own process group,
hard timeouts) on the saved tiny model; the others drive a Trainer in process."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfcorrect import checkpoint, cli
from selfcorrect.atomic import temporaries
from selfcorrect.faults import LOCK_NAME, CheckpointWriteError, NonFiniteTraining, RunLocked, acquire_lock
from test_train import make_trainer, tiny_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import kill_campaign as kc  # noqa: E402

TIMEOUT_S = 240


def run_to_end(cmd, log) -> int:
    proc = kc.launch(cmd, log)
    try:
        return proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kc.kill9(proc)
        raise


def wait_for_metrics(proc, out: Path, lines: int = 1) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while kc.metric_lines(out) < lines:
        if proc.poll() is not None or time.monotonic() > deadline:
            kc.kill9(proc)
            pytest.fail(f"no metrics line (exit {proc.returncode}): {out.with_suffix('.log').read_text()[-2000:]}")
        time.sleep(0.01)


def test_sigterm_checkpoints_the_last_step_exits_0_and_resume_matches(tmp_path, saved_tiny):
    steps = 4
    ref = tmp_path / "ref"
    assert run_to_end(kc.train_command(saved_tiny, ref, steps), tmp_path / "ref.log") == 0
    out = tmp_path / "run"
    cmd = kc.train_command(saved_tiny, out, steps)
    proc = kc.launch(cmd, out.with_suffix(".log"))
    wait_for_metrics(proc, out)
    proc.send_signal(signal.SIGTERM)
    code = wait_or_kill(proc)
    log = out.with_suffix(".log").read_text()
    assert code == 0, log[-2000:]
    assert "stopped by SIGTERM" in log
    done = max(kc.losses(out))
    assert done < steps  # it stopped early ...
    assert kc.latest_step(out) == done  # ... with a checkpoint of the last finished step
    assert not (out / "final").exists() and not (out / LOCK_NAME).exists() and not kc.temp_folders(out)
    assert run_to_end(cmd + ["--run.resume", "true"], out.with_suffix(".log")) == 0
    assert kc.losses(out) == pytest.approx(kc.losses(ref), abs=1e-6)
    assert (out / "final").exists()


def wait_or_kill(proc) -> int:
    """The process's exit code; a process still running after TIMEOUT_S is killed and the test fails."""
    try:
        return proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kc.kill9(proc)
        raise


def test_a_second_sigterm_exits_at_once_with_a_failure_code(tmp_path, saved_tiny):
    out = tmp_path / "run"
    # longer steps, so that the second signal lands inside one (two signals sent together merge)
    slow = ["--rollout.max_new_tokens", "48", "--optim.problems_per_step", "12"]
    proc = kc.launch(kc.train_command(saved_tiny, out, 40, *slow), out.with_suffix(".log"))
    wait_for_metrics(proc, out)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while "SIGTERM received" not in out.with_suffix(".log").read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    code = wait_or_kill(proc)
    assert code == 128 + signal.SIGTERM, out.with_suffix(".log").read_text()[-2000:]
    assert kc.latest_step(out) >= 1 and not kc.temp_folders(out) and not (out / LOCK_NAME).exists()


def nan_logits_on(trainer, bad_steps: set[int]):
    """A forward hook making the policy's training logits NaN on the given (1-based) steps;
    generation and the reference run without gradients and stay finite."""
    head = trainer.model.get_output_embeddings()

    def hook(module, args, output):
        if torch.is_grad_enabled() and trainer.state["step"] + 1 in bad_steps:
            return output * float("nan")
        return output

    return head.register_forward_hook(hook)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.run.save_every = 1
    trainer = make_trainer(cfg)
    nan_logits_on(trainer, {2})
    seen = {}

    def snapshot_before_step(self_step=trainer.step):
        def wrapped(stage):
            seen[trainer.state["step"] + 1] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            return self_step(stage)
        return wrapped

    trainer.step = snapshot_before_step()
    history = trainer.train()
    assert [m["skipped_nonfinite"] for m in history] == [0, 1, 0, 0]
    assert [m["skipped_nonfinite_steps"] for m in history] == [0, 1, 1, 1]
    for name, p in seen[3].items():  # step 2 changed nothing
        assert torch.equal(p, seen[2][name]), name
    assert trainer.scheduler.last_epoch == 3  # the schedule moved on updates only
    assert all(p.grad is None for p in trainer.model.parameters())
    assert checkpoint.check(checkpoint.latest(tmp_path / "run"))["skipped_nonfinite_steps"] == 1


def test_a_run_of_nonfinite_steps_stops_with_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.run.save_every = 1
    cfg.optim.max_nonfinite_steps = 2
    trainer = make_trainer(cfg)
    nan_logits_on(trainer, {2, 3, 4})
    with pytest.raises(NonFiniteTraining, match="2 steps in a row had a NaN/inf loss"):
        trainer.train()
    folder = checkpoint.latest(tmp_path / "run")
    assert checkpoint.check(folder)["step"] == 3  # finite weights: the skipped steps changed nothing
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 2, 0
    trainer = make_trainer(cfg)
    trainer.train()
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    trainer.state["step"] = 3
    with pytest.raises(NonFiniteTraining, match="not saving checkpoint step-000003"):
        trainer.save_checkpoint()
    assert checkpoint.latest(tmp_path / "run").name == "step-000002"
    assert not temporaries(tmp_path / "run" / "checkpoints")


def test_a_second_run_is_refused_while_the_owner_lives(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / LOCK_NAME).write_text(json.dumps({"pid": owner.pid, "host": os.uname().nodename, "since": "now"}))
        with pytest.raises(RunLocked, match=f"pid {owner.pid} on this host"):
            make_trainer(tiny_config(tmp_path))
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == owner.pid  # the owner's lock is kept
    finally:
        owner.kill()
        owner.wait(timeout=30)


def test_a_stale_lock_is_taken_over_with_a_warning_and_locks_are_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 0
    with pytest.warns(RuntimeWarning, match=f"stale lock of pid {dead.pid}"):
        trainer = make_trainer(cfg)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    trainer.train()
    assert not (run / LOCK_NAME).exists()  # released at the end
    with pytest.raises(FileExistsError):  # released on an exception too
        make_trainer(tiny_config(tmp_path))
    assert not (run / LOCK_NAME).exists()
    assert acquire_lock(run)["pid"] == os.getpid()


def test_a_stale_lock_taken_over_by_another_starter_first_is_not_removed(tmp_path, monkeypatch):
    """Two starters judge the same dead owner's lock stale; the first links its own lock in
    before the second removes 'the stale one': the second must put it back and refuse."""
    import socket
    import warnings as warnings_module

    from selfcorrect import faults

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = {"pid": other.pid, "host": socket.gethostname(), "started": faults.process_start_time(other.pid),
                 "since": "now", "token": "first-starter"}

        def the_other_starter_wins(*args, **kwargs):  # runs between our judgement and our removal
            lock.unlink()
            lock.write_text(json.dumps(first))

        monkeypatch.setattr(faults.warnings, "warn", the_other_starter_wins)
        with pytest.raises(RunLocked, match=f"pid {other.pid}"):
            acquire_lock(tmp_path)
        assert json.loads(lock.read_text())["token"] == "first-starter"
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
    finally:
        monkeypatch.setattr(faults.warnings, "warn", warnings_module.warn)
        other.kill()
        other.wait(timeout=30)


def full_disk_after(calls: int):
    """A safetensors writer that writes half a file, then fails with ENOSPC, from call `calls` on."""
    count = {"n": 0}
    real = checkpoint.save_file

    def save_file(tensors, path, *args, **kwargs):
        count["n"] += 1
        if count["n"] < calls:
            return real(tensors, path, *args, **kwargs)
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save_file


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_debris(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    cfg.run.save_every = 1
    trainer = make_trainer(cfg)
    monkeypatch.setattr(checkpoint, "save_file", full_disk_after(2))
    with pytest.raises(CheckpointWriteError, match="step-000002.*No space left on device.*step-000001.*intact"):
        trainer.train()
    run = tmp_path / "run"
    assert checkpoint.check(checkpoint.latest(run))["step"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step-000001"]
    assert not (run / LOCK_NAME).exists()


def test_cli_reports_a_full_disk_in_one_line_with_exit_2(tmp_path, saved_tiny, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "save_file", full_disk_after(1))
    argv = kc.train_command(saved_tiny, tmp_path / "run", 2)[3:]  # after `python -m selfcorrect`
    assert cli.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("selfcorrect train")]
    assert len(err) == 1 and "No space left on device" in err[0] and "previous checkpoint (none)" in err[0]
    assert not kc.temp_folders(tmp_path / "run")


def test_kill_campaign_with_three_kills(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kill_campaign.py"), "--kills", "3",
                           "--steps", "4", "--work", str(tmp_path)], env=kc.child_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S * 2, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "kills: 3, resumed: 3, identical_losses: true, leftover_temp_folders: 0" in proc.stdout


@pytest.mark.parametrize("pointer", ["", "step-000001"], ids=["empty", "pruned-step"])
def test_a_broken_latest_pointer_is_reported_and_no_checkpoint_is_deleted(tmp_path, pointer):
    make_trainer(tiny_config(tmp_path)).train()  # checkpoints at steps 2 and 4
    root = tmp_path / "run" / "checkpoints"
    (root / "LATEST").write_text(pointer)
    kept = sorted(p.name for p in root.glob("step-*"))
    assert kept == ["step-000002", "step-000004"]
    checkpoint.tidy(tmp_path / "run")
    assert sorted(p.name for p in root.glob("step-*")) == kept
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        checkpoint.latest(tmp_path / "run")
