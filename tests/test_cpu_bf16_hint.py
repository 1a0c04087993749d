"""The one-line suggestion to train in bf16 on CPUs that multiply bf16 natively, and the warning
when bf16 is asked for on a CPU that does not."""

from __future__ import annotations

import pytest
import torch

from selfcorrect import models


@pytest.mark.parametrize("native, device, dtype, hinted", [
    (True, "cpu", "float32", True), (False, "cpu", "float32", False), (True, "cpu", "bfloat16", False),
    (True, "cuda", "float32", False)])
def test_bf16_hint_only_for_fp32_on_a_cpu_with_bf16_instructions(monkeypatch, native, device, dtype, hinted):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    hint = models.cpu_bf16_hint(torch.device(device), models.pick_dtype(dtype, torch.device(device)))
    assert (hint is not None) == hinted
    if hinted:
        assert "--model.dtype bfloat16" in hint


@pytest.mark.parametrize("native, device, dtype, warned", [
    (False, "cpu", "bfloat16", True), (True, "cpu", "bfloat16", False), (None, "cpu", "bfloat16", False),
    (False, "cpu", "float32", False), (False, "cuda", "bfloat16", False)])
def test_bf16_warning_only_for_bf16_on_a_cpu_without_bf16_instructions(monkeypatch, native, device, dtype, warned):
    monkeypatch.setattr(models, "cpu_multiplies_bf16", lambda: native)
    warning = models.cpu_bf16_warning(torch.device(device), models.pick_dtype(dtype, torch.device(device)))
    assert (warning is not None) == warned
    if warned:
        assert "--model.dtype float32" in warning


@pytest.mark.parametrize("native", [False, True])
def test_loading_bf16_on_a_cpu_warns_only_without_bf16_instructions(monkeypatch, capsys, saved_tiny, native):
    from selfcorrect.config import ModelConfig

    monkeypatch.setattr(models, "cpu_multiplies_bf16", lambda: native)
    model, _ = models.load(ModelConfig(name=str(saved_tiny), device="cpu", dtype="bfloat16"), progress=False)
    assert next(model.parameters()).dtype == torch.bfloat16  # asked for explicitly: still runs in bf16
    assert ("no bf16 instructions" in capsys.readouterr().err) == (not native)


@pytest.mark.parametrize("native, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_takes_bf16_only_on_gpus_that_multiply_it_natively(monkeypatch, native, dtype):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert models.pick_dtype("auto", torch.device("cuda")) == dtype
    assert models.pick_dtype("auto", torch.device("cpu")) == torch.float32
