"""Multi-turn episodes: attempt 1, the correction instruction as tokens, attempt 2, ...

Token-in-token-out: the ids a model generated are kept as they are and the next turn is built
by appending the instruction's ids — never by decoding and re-encoding the conversation, which
can tokenise differently from what the model produced and silently shift the log-probs.

An episode row is [x, y1, p, y2, ...] with a parallel turn-id row (0 = context, i = attempt i),
so one forward pass gives the log-probs of every attempt.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from .batches import pad_rows
from .tasks.base import Problem, Task, Verdict

_SENTINEL = "\u2063SELFCORRECT_SENTINEL\u2063"


class ChatFormat:
    """Turns messages into ids through the tokenizer's chat template (plain text without one).

    Layout [our reading of SCORE.md §1]: user = problem, assistant = y1, user = instruction,
    assistant = y2. The ids between two attempts are taken from the template rendered around a
    sentinel assistant message, so they match what the template would produce for the turn.

    Stop tokens: a turn ends at the tokenizer's eos, at any eos the model's generation config
    names, and at the template's own end-of-turn token (Gemma's <end_of_turn>, ChatML's
    <|im_end|> in a base model's tokenizer, Phi-3's <|end|>), which is often not the eos.
    """

    def __init__(self, tokenizer, model=None):
        self.tok = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self._between_cache: dict[str, list[int]] = {}
        self.end_of_turn_id = self._template_end_of_turn()
        stops = {self.eos_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        stops.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
        if self.end_of_turn_id is not None:
            stops.add(self.end_of_turn_id)
        self.stop_ids: frozenset[int] = frozenset(stops)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def first_ids(self, messages: list[dict]) -> list[int]:
        """Ids of the conversation up to the start of attempt 1."""
        if self.has_template:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.encode(text)
        text = "\n\n".join(m["content"] for m in messages)
        return self.tok(text, add_special_tokens=True)["input_ids"]

    def _after_assistant(self, messages: list[dict], instruction: str) -> str:
        """The template's text after an assistant message: its end of turn, the user's
        `instruction` and the next generation prompt."""
        convo = list(messages) + [{"role": "assistant", "content": _SENTINEL},
                                  {"role": "user", "content": instruction}]
        text = self.tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        cut = text.rfind(_SENTINEL)
        if cut < 0:
            raise ValueError("the chat template dropped the assistant message; cannot build turn 2")
        return text[cut + len(_SENTINEL):]

    def _template_end_of_turn(self) -> int | None:
        """The special token that closes an assistant turn in the template, if there is one."""
        if not self.has_template:
            return None
        try:
            ids = self.encode(self._after_assistant([{"role": "user", "content": "q"}], "p"))
        except Exception:  # an unusual template: fall back to eos alone (between_ids will say more)
            return None
        special = set(self.tok.all_special_ids) | {
            i for i, t in getattr(self.tok, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
        return ids[0] if ids and ids[0] in special else None

    def between_ids(self, messages: list[dict], instruction: str) -> list[int]:
        """Ids that close an attempt and ask for the next one (end of turn, user: p, assistant:).

        `join_ids` drops the leading end-of-turn token when the attempt already ended with a
        stop token, so a row never holds two end markers."""
        if instruction in self._between_cache:
            return self._between_cache[instruction]
        if self.has_template:
            ids = self.encode(self._after_assistant(messages, instruction))
        else:
            ids = [self.eos_id] + self.encode("\n\n" + instruction + "\n\n")
        self._between_cache[instruction] = ids
        return ids

    def join_ids(self, attempt: list[int], between: list[int]) -> list[int]:
        """`between` without its leading end-of-turn token when the attempt already stopped."""
        if attempt and attempt[-1] in self.stop_ids and between and between[0] in self.stop_ids:
            return between[1:]
        return between


@dataclass
class SamplingSettings:
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256


@dataclass
class Rollout:
    """Episodes of one batch. Row b answers problems[problem_index[b]]."""

    problems: list[Problem]
    problem_index: list[int]
    rows: list[list[int]] = field(default_factory=list)        # [x, y1, p, y2, ...] ids
    turns: list[list[int]] = field(default_factory=list)       # turn id per token of `rows`
    attempts: list[list[list[int]]] = field(default_factory=list)  # [row][attempt] generated ids
    texts: list[list[str]] = field(default_factory=list)       # [row][attempt] decoded, for verifiers
    truncated: list[list[bool]] = field(default_factory=list)  # [row][attempt] hit max_new_tokens
    verdicts: list[list[Verdict]] = field(default_factory=list)  # [row][attempt], after `verify`
    generated_tokens: int = 0
    generation_seconds: float = 0.0

    @property
    def n_attempts(self) -> int:
        return len(self.attempts[0]) if self.attempts else 0

    def rewards(self) -> torch.Tensor:
        """[B, n] float: r_i per row and attempt, NaN where the verifier returned None."""
        return torch.tensor([[float("nan") if v.reward is None else v.reward for v in row]
                             for row in self.verdicts], dtype=torch.float32)

    def tensors(self, rows: Sequence[int], pad_id: int, device) -> tuple[torch.Tensor, ...]:
        """Right-padded (input_ids [b,T], attention_mask [b,T], turn_ids [b,T]) for `rows`."""
        ids, mask = pad_rows([self.rows[i] for i in rows], pad_id)
        turn, _ = pad_rows([self.turns[i] for i in rows], 0)
        return ids.to(device), mask.to(device), turn.to(device)


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


def generate(model, contexts: list[list[int]], settings: SamplingSettings, *, stop_ids,
             pad_id: int, batch_size: int, row_seeds: list[int] | None = None) -> tuple[list[list[int]], list[bool]]:
    """Continue each context; return the new ids per row (up to and incl. the first stop token)
    and whether the row was cut at max_new_tokens. Rows are left-padded in batches of
    `batch_size`. stop_ids: the ids that end a turn (ChatFormat.stop_ids). row_seeds: when
    sampling, one seed per row, so each row's tokens depend only on its seed
    (sampling.GumbelSampler) instead of on the process's RNG stream."""
    from transformers import LogitsProcessorList

    from .sampling import GumbelSampler

    stop_ids = frozenset(stop_ids)
    seeded = row_seeds is not None and not settings.greedy
    if seeded and settings.top_p < 1.0:
        raise ValueError("per-row seeded sampling draws from the full softmax(z / T); it needs top_p 1.0")
    if row_seeds is not None and len(row_seeds) != len(contexts):
        raise ValueError(f"row_seeds has {len(row_seeds)} seeds for {len(contexts)} rows")
    # seeded: argmax of z / T + the row's own Gumbel noise, i.e. greedy decoding of perturbed logits
    gen_settings = replace(settings, greedy=True) if seeded else settings
    gen_cfg = generation_config(gen_settings, stop_ids=stop_ids, pad_id=pad_id)
    device = next(model.parameters()).device
    outputs: list[list[int]] = []
    cut: list[bool] = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        ids, mask = pad_rows(chunk, pad_id, side="left")
        extra = {}
        if seeded:
            sampler = GumbelSampler(row_seeds[start:start + batch_size], settings.temperature, device)
            extra["logits_processor"] = LogitsProcessorList([sampler])
        with torch.no_grad(), _own_generation_defaults(model):
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=gen_cfg, **extra)
        for row in out[:, ids.shape[1]:].tolist():
            end = next((i for i, t in enumerate(row) if t in stop_ids), None)
            if end is not None:
                outputs.append(row[: end + 1])
                cut.append(False)
            else:
                outputs.append(row)
                cut.append(len(row) >= settings.max_new_tokens)
    return outputs, cut


def check_context_fits(model, problems: list[Problem], contexts: list[list[int]], n_attempts: int,
                       max_new_tokens: int, between_tokens: int = 0) -> None:
    """Fail before generating when an episode could outgrow the model's context window:
    prompt + n attempts x max_new_tokens + (n - 1) x the between-turn tokens."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return
    glue = (n_attempts - 1) * between_tokens
    for problem, ctx in zip(problems, contexts):
        if len(ctx) + n_attempts * max_new_tokens + glue > limit:
            raise ValueError(
                f"problem {problem.id!r}: prompt of {len(ctx)} tokens + {n_attempts} attempts x "
                f"{max_new_tokens} new tokens + {glue} tokens between attempts exceeds the model's "
                f"context of {limit} tokens; lower max_new_tokens or shorten the prompt")


def rollout(model, tokenizer, task: Task, problems: list[Problem], *, n_attempts: int,
            samples_per_problem: int, settings: SamplingSettings, batch_size: int,
            fmt: ChatFormat | None = None, first_attempts: list[list[int]] | None = None,
            row_seeds: list[int] | None = None) -> Rollout:
    """Generate `samples_per_problem` episodes of `n_attempts` attempts for each problem.

    Rows are grouped by problem (row b answers problem b // samples_per_problem), which is the
    [P, k] layout RLOO expects. first_attempts: attempt-1 ids per row, taken as given instead of
    generated (fixed samples of another model: the 'w/o on-policy turn 1' ablation).
    row_seeds: one seed per row for per-row seeded sampling (see `generate`); attempt a of row b
    samples with seed mix(row_seeds[b], a)."""
    from .sampling import row_seed

    fmt = fmt or ChatFormat(tokenizer, model)
    pad_id = tokenizer.pad_token_id
    out = Rollout(problems=list(problems),
                  problem_index=[p for p in range(len(problems)) for _ in range(samples_per_problem)])
    firsts = [fmt.first_ids(task.first_turn(p)) for p in problems]
    between = fmt.between_ids(task.first_turn(problems[0]), task.correction_instruction) if n_attempts > 1 else []
    check_context_fits(model, problems, firsts, n_attempts, settings.max_new_tokens, len(between))
    out.rows = [list(firsts[p]) for p in out.problem_index]
    out.turns = [[0] * len(r) for r in out.rows]
    out.attempts = [[] for _ in out.rows]
    out.truncated = [[] for _ in out.rows]
    start = time.perf_counter()
    if first_attempts is not None and len(first_attempts) != len(out.rows):
        raise ValueError(f"first_attempts has {len(first_attempts)} rows, the rollout {len(out.rows)}")
    for attempt in range(1, n_attempts + 1):
        if attempt == 1 and first_attempts is not None:
            new_ids = [list(ids) for ids in first_attempts]
            cut = [bool(ids) and ids[-1] not in fmt.stop_ids and len(ids) >= settings.max_new_tokens
                   for ids in new_ids]
        else:
            seeds = None if row_seeds is None else [row_seed(s, attempt) for s in row_seeds]
            new_ids, cut = generate(model, out.rows, settings, stop_ids=fmt.stop_ids, pad_id=pad_id,
                                    batch_size=batch_size, row_seeds=seeds)
        for b, ids in enumerate(new_ids):
            out.rows[b] += ids
            out.turns[b] += [attempt] * len(ids)
            out.attempts[b].append(ids)
            out.truncated[b].append(cut[b])
            if not (attempt == 1 and first_attempts is not None):
                out.generated_tokens += len(ids)
            if attempt < n_attempts:
                glue = fmt.join_ids(ids, between)
                out.rows[b] += glue
                out.turns[b] += [0] * len(glue)
    out.generation_seconds = time.perf_counter() - start
    out.texts = [[tokenizer.decode(a, skip_special_tokens=True) for a in row] for row in out.attempts]
    return out


def verify(task: Task, ro: Rollout) -> None:
    """Score every attempt of every row with the task's verifier (batched per attempt)."""
    row_problems = [ro.problems[i] for i in ro.problem_index]
    per_attempt = [task.score(row_problems, [t[a] for t in ro.texts]) for a in range(ro.n_attempts)]
    ro.verdicts = [[per_attempt[a][b] for a in range(ro.n_attempts)] for b in range(len(ro.rows))]
