"""The paged (continuous batching) engine: its sizing, its refusals, and training with it (its
results are checked with every engine in test_engines.py)."""

import pytest
import torch

from selfcorrect.engines import make_engine, paged
from selfcorrect.engines.base import SamplingSettings
from test_train import make_trainer, tiny_config
from tiny import chat_contexts, tiny_model, tiny_tokenizer


def test_the_cache_holds_the_batch_size_longest_rows_at_full_length():
    page = paged.PAGE_SIZE
    # rows of 1, 2 and 3 pages once max_new_tokens is added; 2 run at once: 3 + 2 pages, plus 2 spare
    assert paged.cache_pages([page - 4, 2 * page - 4, 3 * page - 4], 4, batch_size=2) == 7
    assert paged.cache_pages([1], 1, batch_size=8) == 3


def test_the_same_torch_seed_draws_the_same_rows():
    """One generator for the batch, reseeded by the manager from its own stream: a seed fixes a
    call's samples (what exact resume needs), and the process's stream moves on after it."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=5)
    contexts = chat_contexts(tok, (1, 4, 9)) * 3
    settings = SamplingSettings(greedy=False, temperature=1.0, max_new_tokens=8)

    def draw():
        torch.manual_seed(7)
        out = make_engine("paged").generate(model, contexts, settings, stop_ids={tok.eos_token_id},
                                            pad_id=tok.pad_token_id, batch_size=4)
        return out.ids, torch.rand(1).item()

    first, second = draw(), draw()
    assert first == second
    assert len({tuple(ids) for ids in first[0]}) > 3


def test_a_request_that_cannot_run_is_an_error_not_a_hang(monkeypatch):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3)
    monkeypatch.setattr(paged, "cache_pages", lambda *args: 1)  # smaller than any row
    with pytest.raises(RuntimeError, match="requests did not finish"):
        make_engine("paged").generate(model, chat_contexts(tok, (40, 3)), SamplingSettings(max_new_tokens=30),
                                      stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, batch_size=2)


def test_a_model_without_continuous_batching_is_refused():
    with pytest.raises(ValueError, match="needs a Hugging Face model"):
        make_engine("paged").generate(torch.nn.Linear(2, 2), [[1, 2]], SamplingSettings(max_new_tokens=2),
                                      stop_ids={0}, pad_id=0, batch_size=1)


def test_training_with_the_paged_engine_logs_its_gap_and_resumes_exactly(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.rollout.engine = "paged"
    history = make_trainer(cfg).train()
    assert all(m["engine_logprob_gap"] < 1e-4 for m in history)
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step-000002")
    cfg2 = tiny_config(tmp_path)
    cfg2.rollout.engine = "paged"
    cfg2.run.resume = True
    tail = [m["loss"] for m in make_trainer(cfg2).train()]
    assert tail == pytest.approx([m["loss"] for m in history[2:]], rel=1e-5, abs=1e-7)


def test_per_row_seeding_is_refused_before_training_starts(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.rollout.engine = "paged"
    cfg.rollout.seeding = "problem"
    with pytest.raises(ValueError, match="paged cannot seed rows"):
        make_trainer(cfg)


def test_a_bf16_lora_run_samples_as_the_hf_engine_under_the_callers_autocast():
    """The manager's thread does not inherit autocast; without the wrapper the fp32 adapters
    meet bf16 activations and every request fails."""
    from selfcorrect.models import LoraSettings, apply_lora
    from selfcorrect.optim import autocast, fp32_master_weights

    tok = tiny_tokenizer()
    model = apply_lora(tiny_model(tok).to(torch.bfloat16), LoraSettings(4, 8, 0.0, ["q_proj", "v_proj"]))
    dtype = fp32_master_weights(model)
    settings = SamplingSettings(greedy=True, max_new_tokens=4)
    runs = {}
    for name in ("hf", "paged"):
        with autocast(torch.device("cpu"), dtype, model):
            runs[name] = make_engine(name).generate(model, chat_contexts(tok, (3, 8)), settings,
                                                    stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, batch_size=2)
    assert runs["paged"].ids == runs["hf"].ids
    for paged_row, hf_row in zip(runs["paged"].logprobs, runs["hf"].logprobs):
        assert paged_row == pytest.approx(hf_row, abs=1e-3)


def test_mixed_sliding_and_full_attention_layers_fit_the_cache():
    """Layers of two attention kinds take cache in separate groups (on transformers 5.17 the
    page count is per group); greedy rows must equal the hf engine's at any batch size."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    layers = ["sliding_attention"] * 4 + ["full_attention"] * 2
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=len(layers),
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      use_sliding_window=True, sliding_window=32, layer_types=layers, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).eval()
    contexts = [[5 + i % 20 for i in range(n)] for n in (3, 50, 90)]
    settings = SamplingSettings(greedy=True, max_new_tokens=40)
    no_stop = {len(tok) + 1}  # every row runs to max_new_tokens
    want = make_engine("hf").generate(model, contexts, settings, stop_ids=no_stop, pad_id=tok.pad_token_id,
                                      batch_size=3).ids
    for batch_size in (1, 3):
        out = make_engine("paged").generate(model, contexts, settings, stop_ids=no_stop, pad_id=tok.pad_token_id,
                                            batch_size=batch_size)
        assert out.ids == want


def test_a_failure_before_the_loop_starts_restores_the_models_attention(monkeypatch):
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3)
    model.set_attn_implementation("eager")  # continuous batching switches eager models to paged|eager

    def refuse(*args, **kwargs):
        raise RuntimeError("queue refused")

    monkeypatch.setattr(ContinuousBatchingManager, "add_requests", refuse)
    with pytest.raises(RuntimeError, match="queue refused"):
        make_engine("paged").generate(model, chat_contexts(tok, (3,)), SamplingSettings(max_new_tokens=2),
                                      stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, batch_size=1)
    assert model.config._attn_implementation == "eager"


def test_a_greedy_call_leaves_torchs_generator_as_it_found_it():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    make_engine("paged").generate(model, chat_contexts(tok, (3, 5)), SamplingSettings(greedy=True, max_new_tokens=3),
                                  stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, batch_size=2)
    assert torch.equal(torch.rand(3), expected)
