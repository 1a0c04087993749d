"""Data-parallel training and evaluation: 2 CPU processes (gloo) against one process.

Each test starts its ranks through tests/launch.py (a free port, OMP_NUM_THREADS=1, a 60 s hard
timeout that kills the process group) and compares what they wrote with a one-process run made
here. The one-process runs use rollout.seeding problem, so they draw exactly the rows the ranks
draw and the comparison is of the maths alone.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from dist_worker import Recording, UnevenTask, dist_config, make_trainer, trainable
from launch import bare_ranks, start_bare_ranks, torchrun, wait_ranks
from selfcorrect import distributed
from tiny import tiny_model, tiny_tokenizer

UNTIMED = ("time_", "gen_tokens_per_s")  # wall-clock numbers: equal across ranks, not across runs


def load_ranks(out: Path, world: int = 2) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want), start=1):
        assert g.keys() == w.keys()
        for key, value in w.items():
            if key.startswith(UNTIMED):
                continue
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(g[key]), (step, key)
            else:
                assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key, g[key], value)


def assert_close_params(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def run_worker(scenario: str, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    code, log = torchrun(["tests/dist_worker.py", scenario, str(out)])
    assert code == 0, log[-4000:]
    return log


def test_two_ranks_make_the_one_process_update_on_the_concatenated_batch(tmp_path):
    run_worker("step", tmp_path / "ddp")
    r0, r1 = load_ranks(tmp_path / "ddp")
    one = Recording(dist_config(tmp_path / "one"), UnevenTask(), model=tiny_model(tiny_tokenizer(), seed=0),
                    tokenizer=tiny_tokenizer())
    history = one.train()

    # the ranks' problems are disjoint and, in rank order, are the one-process batch (1 + 2 of 3:
    # with one row per micro-batch rank 0 makes 2 passes and rank 1 4, so rank 0 pads with 2 dummies)
    for step, (a, b, both) in enumerate(zip(r0["seen"], r1["seen"], one.seen)):
        assert (len(a), len(b)) == (1, 2)
        assert not set(a) & set(b)
        assert a + b == both, step
    # after every step the parameters are bit-identical on both ranks, and equal the one-process ones
    for step, (p0, p1, p) in enumerate(zip(r0["params"], r1["params"], one.params)):
        assert all(torch.equal(p0[n], p1[n]) for n in p0), f"ranks differ after step {step + 1}"
        assert_close_params(p0, p)
    # all-reduced metrics: the same on both ranks, and the one-process metrics
    assert r0["history"] == r1["history"]
    assert_same_metrics(r0["history"], history)
    # only rank 0 wrote the run folder, once per step
    lines = (tmp_path / "ddp" / "full" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert (tmp_path / "ddp" / "full" / "final" / "config.json").exists()
    assert (tmp_path / "ddp" / "full" / "checkpoints" / "LATEST").read_text() == "step-000002"

    # LoRA under DDP: the adapters agree across ranks and with one process
    assert all(torch.equal(r0["lora_params"][n], r1["lora_params"][n]) for n in r0["lora_params"])
    lora = make_trainer(dist_config(tmp_path / "one-lora", **{"algo.stage2_steps": 0}), lora=True)
    lora_history = lora.train()
    assert_close_params(r0["lora_params"], trainable(lora.model))
    assert r0["lora_history"] == r1["lora_history"]
    assert_same_metrics(r0["lora_history"], lora_history)

    # sharded evaluation: gathered in problem order, the one-process result of the same weights
    from selfcorrect.evaluate import evaluate

    model = tiny_model(tiny_tokenizer(), seed=0)
    model.load_state_dict(r0["params"][-1])
    want = evaluate(model, tiny_tokenizer(), UnevenTask(), UnevenTask().items, attempts=2, max_new_tokens=5,
                    batch_size=2, bootstrap=50, progress=False)
    assert r0["eval"] == r1["eval"]
    assert r0["eval"]["records"] == want.records
    assert r0["eval"]["metrics"] == want.metrics
    assert r0["eval"]["intervals"] == want.intervals


def test_a_killed_rank_ends_the_job_and_resume_continues_exactly(tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    code, log = torchrun(["tests/dist_worker.py", "crash", str(out)])
    assert code != 0
    assert "SIGKILL" in log  # torchrun names the rank that died, then stops the others
    run = out / "run"
    assert (run / "checkpoints" / "LATEST").read_text() == "step-000002"

    # a different number of processes is refused with the reason
    with pytest.raises(ValueError, match="written by a run on 2 process"):
        make_trainer(dist_config(run, **{"algo.stage1_steps": 2, "algo.stage2_steps": 2, "run.resume": True}))

    run_worker("resume", out)
    r0, r1 = load_ranks(out)
    assert r0["start"] == 2 and r0["history"] == r1["history"]
    full = make_trainer(dist_config(tmp_path / "one", **{"algo.stage1_steps": 2, "algo.stage2_steps": 2}))
    history = full.train()
    assert_same_metrics(r0["history"], history[2:])
    assert_close_params(r0["params"], trainable(full.model))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    assert_same_metrics(logged, [{k: v for k, v in m.items()} for m in history])


def test_fsdp_full_shard_matches_one_process_and_resumes(tmp_path):
    run_worker("fsdp", tmp_path / "fsdp")
    r0, r1 = load_ranks(tmp_path / "fsdp")
    assert r0["history"] == r1["history"]
    one = make_trainer(dist_config(tmp_path / "one"))
    history = one.train()
    assert_same_metrics(r0["history"], history)
    assert_close_params(r0["weights"], trainable(one.model))
    assert_same_metrics(r0["tail"], history[1:])  # resumed from the step-1 checkpoint
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "run" / "final")
    assert_close_params({n: p for n, p in final.named_parameters()}, trainable(one.model))


def test_fsdp_trains_a_bf16_model_from_kl_zero(tmp_path):
    run_worker("fsdp_bf16", tmp_path / "bf16")
    r0, r1 = load_ranks(tmp_path / "bf16")
    assert r0["reference_dtypes"] == ["torch.bfloat16", "torch.float32"]  # mixed, and FSDP gathers it
    assert r0["history"] == r1["history"]
    first = r0["history"][0]
    assert first["kl_t1"] == 0.0 and first["kl_t2"] == 0.0 and first["loss"] == first["loss"]


def test_cli_eval_under_torchrun_equals_one_process(tmp_path, saved_tiny):
    from selfcorrect.cli import main

    args = ["--model", str(saved_tiny), "--task", "arithmetic", "--limit", "7", "--eval.batch_size", "3",
            "--eval.max_new_tokens", "4", "--eval.bootstrap", "20", "--run.progress", "false"]
    code, log = torchrun(["-m", "selfcorrect", "eval", *args, "--output", str(tmp_path / "two")])
    assert code == 0, log[-4000:]
    assert log.count("per-problem records") == 1  # rank 0 prints, the others do not
    assert main(["eval", *args, "--output", str(tmp_path / "one")]) == 0
    from selfcorrect.evaluate import _slug

    folder = _slug(str(saved_tiny))
    for name in ("metrics.json", "records.jsonl"):
        two = (tmp_path / "two" / "eval" / folder / name).read_text()
        assert two == (tmp_path / "one" / "eval" / folder / name).read_text(), name


def test_cli_error_is_one_line_and_exit_2_on_every_rank(tmp_path, saved_tiny):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # a run already there: rank 0 finds it, both ranks report it
    results = bare_ranks(["-m", "selfcorrect", "train", "--model", str(saved_tiny), "--task", "arithmetic",
                          "--output", str(run), "--model.device", "cpu", "--run.progress", "false"])
    for rank, (code, err) in enumerate(results):
        assert code == 2, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("selfcorrect train: error:")]
        assert len(lines) == 1 and f"[rank {rank}]" in lines[0] and "already holds a run" in lines[0], err[-3000:]


def test_cli_rank_losing_its_peer_says_so_in_one_line(tmp_path, saved_tiny):
    """Without torchrun to stop the job: rank 1 is killed mid-run, rank 0's next collective fails
    and it exits with one line naming the cause instead of waiting forever."""
    run = tmp_path / "run"
    procs = start_bare_ranks(["-m", "selfcorrect", "train", "--model", str(saved_tiny), "--task", "arithmetic",
                              "--output", str(run), "--model.device", "cpu", "--run.progress", "false",
                              "--algo.stage1_steps", "500", "--algo.stage2_steps", "0", "--run.save_every", "1",
                              "--optim.problems_per_step", "2", "--rollout.samples_per_problem", "2",
                              "--rollout.max_new_tokens", "3", "--distributed.timeout_s", "30"])
    deadline = time.monotonic() + 45
    while not (run / "checkpoints" / "LATEST").exists() and time.monotonic() < deadline:
        assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGKILL)
    (code, err), _ = wait_ranks(procs)
    assert code == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("selfcorrect train: error:")]
    assert len(lines) == 1 and "[rank 0] lost contact with another process" in lines[0], err[-3000:]


LAUNCH_TRAPS = [
    ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "accelerate started a single"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK=2 is outside"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
     "LOCAL_WORLD_SIZE=4 disagrees"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR / MASTER_PORT are not set"),
    ({"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "WORLD_SIZE is not"),
    ({"WORLD_SIZE": "two"}, "not an integer"),
]


@pytest.mark.parametrize("env, message", LAUNCH_TRAPS)
def test_misconfigured_launches_are_named(env, message):
    with pytest.raises(ValueError, match=message):
        distributed.expected_world_size(env)


def test_single_process_launches_need_no_process_group():
    assert distributed.expected_world_size({}) == 1
    assert distributed.expected_world_size({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_WORLD_SIZE": "1"}) == 1
    assert distributed.expected_world_size({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h",
                                            "MASTER_PORT": "1"}) == 2


def test_a_process_group_smaller_than_world_size_is_refused(monkeypatch, tmp_path):
    """What a plain Accelerator() under torchrun on CPU leaves: a group of 1 where WORLD_SIZE says 2."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", "1")
        with pytest.raises(ValueError, match="the process group has 1 process"):
            distributed.init()
    finally:
        dist.destroy_process_group()


def test_shards_are_contiguous_disjoint_and_cover_the_batch():
    for n in (1, 2, 3, 7, 16):
        for world in (1, 2, 3, 8):
            bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


EXIT_SCRIPT = """
import atexit, pathlib, sys, threading, time
from selfcorrect import distributed
out = pathlib.Path(sys.argv[1])
distributed._joined_others = sys.argv[2] == "joined"  # what init() sets in a group of several
atexit.register(lambda: (out / "atexit").write_text("ran"))
threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
print("buffered, no newline", end="")
distributed.exit_process(3)
"""


@pytest.mark.parametrize("joined", ["joined", "alone"])
def test_exit_process_keeps_what_a_normal_exit_does(tmp_path, joined):
    """A rank ends by os._exit (no interpreter finalization), yet its exit code, buffered output,
    atexit handlers and non-daemon threads are what a normal exit would give."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tmp_path), joined], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"


def test_rank_zeros_training_faults_reach_every_rank_as_themselves(tmp_path):
    run_worker("on_main_errors", tmp_path)
    r0, r1 = load_ranks(tmp_path)
    # the CLI reports these in one line (exit 2) on every rank; anything else is a RuntimeError there
    assert r0["seen"][:3] == r1["seen"][:3] == ["CheckpointWriteError", "RunLocked", "ValueError"]
    assert r0["seen"][3] == "KeyError" and r1["seen"][3] == "RuntimeError"
