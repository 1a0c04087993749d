"""Fast versions of the adversarial benchmarks (benchmarks/math_adversarial.py runs 1,000
answers, benchmarks/sandbox_soak.py 10,000 programs)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_fifty_adversarial_math_answers_never_hang():
    bench = _load("math_adversarial")
    summary = bench.run(count=50, timeout_s=2.0, workers=2, seed=1)
    assert summary["answers"] == 50 and summary["hangs"] == 0, summary
    assert summary["max_over_deadline_s"] <= 1.0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux only")
def test_hundred_hostile_programs_leak_no_process():
    bench = _load("sandbox_soak")
    summary = bench.run(count=100, workers=3, timeout_s=2.0, seed=2)
    assert summary["programs"] == 100 and summary["leaked_processes"] == 0, summary
    assert sum(summary["verdicts"].values()) == 100
    unexpected = summary["unexpected"]
    # a correct program never fails and a wrong one never passes (a timeout under load may)
    assert not {"correct->failed", "wrong->passed", "crash->passed"} & set(unexpected), unexpected
