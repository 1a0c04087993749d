"""The reference engine: Hugging Face `generate` on left-padded batches.

Every row of a batch runs until the longest one stops, attempt 2 re-reads [x, y1, p] from
scratch, and the k samples of a problem each prefill the prompt: simple, and the behaviour the
other engines are tested against.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch

from ..batches import pad_rows
from .base import Generated, SamplingSettings, check_request, split_at_stop


def generation_config(settings: SamplingSettings, *, stop_ids, pad_id: int):
    """A GenerationConfig that samples from exactly softmax(z / T) (or takes the argmax).

    transformers fills every field we leave unset from the model's generation_config.json and
    then from its own defaults (top_k = 50); models ship top_k, top_p, repetition penalties and
    min_p. The policy gradient is only right for the distribution we sample from, so every
    field that could filter or reshape the logits is set here to its neutral value, and
    `generate` hides the model's own generation config while it runs.
    """
    from transformers import GenerationConfig

    sample = not settings.greedy
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens, min_length=0, do_sample=sample,
        temperature=settings.temperature if sample else 1.0, top_p=settings.top_p if sample else 1.0,
        # top_k: 0 = off when sampling; None when greedy (unused there, and 0 draws a warning)
        top_k=0 if sample else None, min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, length_penalty=1.0, num_beams=1, num_return_sequences=1,
        bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None, sequence_bias=None,
        forced_bos_token_id=None, forced_eos_token_id=None, exponential_decay_length_penalty=None,
        renormalize_logits=False, remove_invalid_values=False, guidance_scale=None,
        eos_token_id=sorted(stop_ids), pad_token_id=pad_id, bos_token_id=None)


@contextmanager
def _own_generation_defaults(model):
    """Hide the model's shipped generation_config.json during `generate` (see generation_config)."""
    from transformers import GenerationConfig

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    shipped = hf.generation_config
    hf.generation_config = GenerationConfig()
    try:
        yield
    finally:
        hf.generation_config = shipped


class HFGenerate:
    """`model.generate` in batches of `batch_size` left-padded rows; stateless (no reset needed).
    The sampling log-probs come from a logits processor (SampledLogprobs)."""

    name = "hf"

    def reset(self) -> None:
        pass

    def generate(self, model, contexts, settings: SamplingSettings, *, stop_ids, pad_id: int,
                 batch_size: int, row_seeds: list[int] | None = None) -> Generated:
        """row_seeds: when sampling, one seed per row, so each row's tokens depend only on its
        seed (sampling.GumbelSampler) instead of on the process's RNG stream."""
        check_request(contexts, settings, row_seeds)
        stop_ids = frozenset(stop_ids)
        seeded = row_seeds is not None and not settings.greedy
        # seeded: argmax of z / T + the row's own Gumbel noise, i.e. greedy decoding of perturbed logits
        gen_settings = replace(settings, greedy=True) if seeded else settings
        gen_cfg = self._config(generation_config(gen_settings, stop_ids=stop_ids, pad_id=pad_id))
        result = Generated([], [], [])
        for start in range(0, len(contexts), batch_size):
            chunk = contexts[start:start + batch_size]
            seeds = row_seeds[start:start + batch_size] if seeded else None
            rows, logprobs = self._generate_batch(model, chunk, seeds, settings, gen_cfg, pad_id, batch_size)
            for row, lps in zip(rows, logprobs):
                new, was_cut = split_at_stop(row, stop_ids, settings.max_new_tokens)
                result.ids.append(new)
                result.cut.append(was_cut)
                result.logprobs.append(lps[:len(new)])
        return result

    def _config(self, gen_cfg):
        """The GenerationConfig `generate` runs with (a subclass may change the cache)."""
        return gen_cfg

    def _batch(self, chunk, seeds, pad_id: int, batch_size: int):
        """(ids [B, L], mask [B, L], seeds) for generate; rows beyond len(chunk), if any, are filler."""
        ids, mask = pad_rows(chunk, pad_id, side="left")
        return ids, mask, seeds

    def _generate_batch(self, model, chunk, seeds, settings, gen_cfg, pad_id: int, batch_size: int):
        """New ids [len(chunk)][steps] and their log-probs at the sampling temperature."""
        from transformers import LogitsProcessorList

        from ..sampling import GumbelSampler

        device = next(model.parameters()).device
        ids, mask, seeds = self._batch(chunk, seeds, pad_id, batch_size)
        recorder = SampledLogprobs(1.0 if settings.greedy else settings.temperature)
        processors = [recorder]  # first: it must see the raw logits
        if seeds is not None:
            processors.append(GumbelSampler(seeds, settings.temperature, device))
        with torch.no_grad(), _own_generation_defaults(model):
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=gen_cfg, logits_processor=LogitsProcessorList(processors))
        new = out[:, ids.shape[1]:]
        logprobs = recorder.finish(new)
        return new[:len(chunk)].tolist(), logprobs[:len(chunk)].tolist()


class SampledLogprobs:
    """A transformers LogitsProcessor that records log softmax(z / T)[token] of each sampled token.

    Placed first among the custom processors, it sees the model's raw logits z (transformers
    applies its temperature and top-p warpers after the custom processors, and our generation
    config turns every other processor off). A step's token is only known at the next call (the
    last column of input_ids), so it holds one step's log-probs [B, V] until then; `finish`
    reads the last step's from the generated ids."""

    def __init__(self, temperature: float):
        self.temperature = float(temperature)
        self._pending: torch.Tensor | None = None
        self._steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self._pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self._pending is not None:
            self._steps.append(self._pending.gather(1, tokens[:, None]).squeeze(1))
            self._pending = None

    def finish(self, new_ids: torch.Tensor) -> torch.Tensor:
        """[B, steps] fp32 on the CPU; new_ids [B, steps]: what generate appended."""
        if new_ids.shape[1]:
            self._take(new_ids[:, -1])
        if not self._steps:
            return torch.zeros(new_ids.shape[0], 0)
        return torch.stack(self._steps, dim=1).cpu()
