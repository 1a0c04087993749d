"""The one-line suggestion to train in bf16 on CPUs that multiply bf16 natively."""

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
