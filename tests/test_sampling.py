"""Sampling is exactly softmax(z / T), whatever the model ships; turns stop at the template's
end-of-turn token; log-probs use the sampling temperature."""

import math

import pytest
import torch

from selfcorrect.batches import token_logprobs
from selfcorrect.engines import make_engine
from selfcorrect.engines.cached import categorical
from selfcorrect.losses import selective_log_softmax
from selfcorrect.rollout import ChatFormat, SamplingSettings, generate
from tiny import ENGINE_HIDDEN, engine_params, tiny_model, tiny_tokenizer


def _ship_sampling_defaults(model):
    """What Hub models put in generation_config.json (Qwen2.5-Instruct ships top_k 20 and a
    repetition penalty): none of it may reach our sampling. Built as a loaded file would be
    (a config derived from the model config is treated differently by transformers)."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(top_k=20, top_p=0.8, min_p=0.05, repetition_penalty=1.5,
                                               no_repeat_ngram_size=1, eos_token_id=model.config.eos_token_id)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic with cells of expected count < 5 pooled; (statistic, degrees of freedom)."""
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), int(keep.sum()) - 1


def _critical_value(df: int) -> float:
    """Upper 0.1% point of chi-square(df), Wilson–Hilferty approximation."""
    z = 3.09
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("engine", engine_params())
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_token_frequencies_match_softmax_over_temperature(temperature, engine):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=5, hidden=ENGINE_HIDDEN)
    with torch.no_grad():  # a flat-ish distribution over all ~100 tokens: top_k 50 would cut half of it
        model.lm_head.weight.mul_(0.2)
    _ship_sampling_defaults(model)
    context = ChatFormat(tok).first_ids([{"role": "user", "content": "abc"}])
    with torch.no_grad():
        z = model(input_ids=torch.tensor([context])).logits[0, -1].double()
    probs = torch.softmax(z / temperature, dim=-1)
    n = 4000
    torch.manual_seed(0)
    out, _ = generate(model, [context] * n, SamplingSettings(greedy=False, temperature=temperature,
                                                              max_new_tokens=1),
                      stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, batch_size=n,
                      engine=make_engine(engine))
    counts = torch.bincount(torch.tensor([o[0] for o in out]), minlength=len(probs)).double()
    stat, df = _chi_square(counts, probs)
    assert stat < _critical_value(df), (stat, df)
    assert int((counts > 0).sum()) > 60  # top_k=50 would give at most 50 distinct tokens


def test_categorical_draws_match_the_row_probabilities():
    """The cached engine's sampler: frequencies pass a chi-square test per row (rows not
    normalised, one of them spread over 4000 tokens with a long tail of tiny probabilities),
    and a zero-probability token never comes up."""
    g = torch.Generator().manual_seed(1)
    spread = torch.rand(4000, generator=g) ** 8  # many tokens of probability ~1e-8 .. 1e-3
    peaked = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.0])  # sums to 4; zeros between the mass
    n = 20000
    torch.manual_seed(0)
    draws = categorical(torch.stack([spread] * n))
    counts = torch.bincount(draws, minlength=len(spread)).double()
    stat, df = _chi_square(counts, spread.double() / spread.double().sum())
    assert stat < _critical_value(df), (stat, df)
    draws = categorical(torch.stack([peaked] * n))
    assert set(draws.tolist()) == {1, 3}
    assert abs(float((draws == 1).double().mean()) - 0.75) < 0.02  # 4 standard errors


def test_categorical_never_draws_a_zero_at_the_end_of_a_row():
    """The last tokens of the row have probability 0: the running sum stops growing before the
    end, and no uniform may fall past it."""
    probs = torch.zeros(50000, 6)
    probs[:, :2] = torch.tensor([1e-9, 1.0])
    torch.manual_seed(0)
    assert set(categorical(probs).tolist()) <= {0, 1}


def test_greedy_ignores_a_shipped_repetition_penalty():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=7)
    _ship_sampling_defaults(model)
    context = ChatFormat(tok).first_ids([{"role": "user", "content": "abcabc"}])
    # more new tokens than the vocabulary has: some token must repeat, which a shipped
    # no_repeat_ngram_size / repetition penalty would forbid or discourage
    n_new = len(tok) + 5
    out, _ = generate(model, [context], SamplingSettings(greedy=True, max_new_tokens=n_new),
                      stop_ids=set(), pad_id=tok.pad_token_id, batch_size=1)
    ids = list(context)
    with torch.no_grad():  # plain argmax, one token at a time
        for _ in range(n_new):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert out[0] == ids[len(context):]
    assert model.generation_config.repetition_penalty == 1.5  # the model's own config is left as it was


def _turn_end_tokenizer():
    """A chat template whose turns end with <|system|>, while the tokenizer's eos is <|end|>."""
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|system|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tok


def test_turn_stops_at_the_templates_end_of_turn_token_not_only_eos():
    tok = _turn_end_tokenizer()
    eot = tok.convert_tokens_to_ids("<|system|>")
    assert eot != tok.eos_token_id
    model = tiny_model(tok, seed=2)
    fmt = ChatFormat(tok, model)
    assert fmt.end_of_turn_id == eot and {eot, tok.eos_token_id} <= fmt.stop_ids
    calls = {"n": 0}

    def end_turn_at_third_token(module, inputs, output):
        calls["n"] += 1
        output.logits[:, -1, list(fmt.stop_ids)] = -1e4
        if calls["n"] == 3:
            output.logits[0, -1, eot] = 1e4
        return output

    model.register_forward_hook(end_turn_at_third_token)
    contexts = [fmt.first_ids([{"role": "user", "content": t}]) for t in ("abc", "de")]
    out, cut = generate(model, contexts, SamplingSettings(greedy=True, max_new_tokens=5), stop_ids=fmt.stop_ids,
                        pad_id=tok.pad_token_id, batch_size=2)
    assert len(out[0]) == 3 and out[0][-1] == eot
    assert cut == [False, True]
    between = fmt.between_ids([{"role": "user", "content": "abc"}], "again")
    assert between[0] == eot
    glued = out[0] + fmt.join_ids(out[0], between)
    assert glued.count(eot) == 2  # closes attempt 1 once, closes the instruction once: no double marker
    assert tok.decode(fmt.join_ids(out[0], between)) == "<|user|>again<|system|><|assistant|>"


def test_model_generation_config_eos_list_is_a_stop_token():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    extra = tok.convert_tokens_to_ids("<|user|>")
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    assert extra in ChatFormat(tok, model).stop_ids


def test_token_logprobs_use_the_sampling_temperature():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=1)
    ids = torch.tensor([[5, 9, 12, 7, 30, 2]])
    mask = torch.ones_like(ids)
    got = token_logprobs(model, ids, mask, first=2, temperature=0.5)
    with torch.no_grad():
        z = model(input_ids=ids).logits[0, 1:-1]
    want = torch.log_softmax(z / 0.5, dim=-1).gather(-1, ids[0, 2:].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got[0], want, atol=1e-5)
    assert not torch.allclose(got[0], torch.log_softmax(z, -1).gather(-1, ids[0, 2:, None])[:, 0], atol=1e-3)


def test_selective_log_softmax_gradient_with_temperature():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 7, (3, 4))
    assert torch.autograd.gradcheck(lambda x: selective_log_softmax(x, ids, chunk_rows=2, temperature=0.7),
                                    (logits,))


def test_a_template_that_closes_turns_with_a_blank_then_eos_gets_one_end_marker():
    """Llama 2's template renders an assistant turn as "answer </s>": the ids after the answer
    start with a space token. An attempt that stopped at eos must not get a second eos."""
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}<|assistant|>"
                         "{% else %}{{ m['content'] }} <|end|>{% endif %}{% endfor %}")
    fmt = ChatFormat(tok)
    eos = tok.eos_token_id
    assert fmt.end_of_turn_id == eos
    between = fmt.between_ids([{"role": "user", "content": "q"}], "again")
    assert tok.decode(between) == " <|end|><|user|>again<|assistant|>"
    stopped = tok.encode("ab", add_special_tokens=False) + [eos]
    assert tok.decode(stopped + fmt.join_ids(stopped, between)) == "ab<|end|><|user|>again<|assistant|>"
    cut = tok.encode("ab", add_special_tokens=False)  # hit the length limit: the template's close stays
    assert fmt.join_ids(cut, between) == between
