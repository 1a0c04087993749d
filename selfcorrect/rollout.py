"""Multi-turn episodes: attempt 1, the correction instruction as tokens, attempt 2, ...

Token-in-token-out: the ids a model generated are kept as they are and the next turn is built
by appending the instruction's ids — never by decoding and re-encoding the conversation, which
can tokenise differently from what the model produced and silently shift the log-probs.

An episode row is [x, y1, p, y2, ...] with a parallel turn-id row (0 = context, i = attempt i),
so one forward pass gives the log-probs of every attempt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .batches import pad_rows
from .engines.base import Engine, Generated, SamplingSettings
from .engines import make_engine
from .engines.hf import HFGenerate
from .head_input import contiguous_head_input
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
        self._special_ids = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
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
        end = self._leading_end(ids, self._special_ids)
        return None if end is None else ids[end]

    def between_ids(self, messages: list[dict], instruction: str) -> list[int]:
        """Ids that close an attempt and ask for the next one (end of turn, user: p, assistant:).

        `join_ids` drops the leading end-of-turn token (and blanks before it) when the attempt
        already ended with a stop token, so a row never holds two end markers."""
        if instruction in self._between_cache:
            return self._between_cache[instruction]
        if self.has_template:
            ids = self.encode(self._after_assistant(messages, instruction))
        else:
            ids = [self.eos_id] + self.encode("\n\n" + instruction + "\n\n")
        self._between_cache[instruction] = ids
        return ids

    def join_ids(self, attempt: list[int], between: list[int]) -> list[int]:
        """`between` without its leading end-of-turn token (and the blanks before it) when the
        attempt already stopped: the model's own stop token closes the turn."""
        if attempt and attempt[-1] in self.stop_ids:
            end = self._leading_end(between, self.stop_ids)
            if end is not None:
                return between[end + 1:]
        return between

    def _leading_end(self, ids: list[int], ends) -> int | None:
        """Index of the first of `ids` in `ends` when only blank tokens come before it (Llama 2's
        template closes a turn with " </s>": a space token, then the end), or None."""
        for i, token in enumerate(ids):
            if token in ends:
                return i
            if not self._blank(token):
                return None
        return None

    def turn_end(self, ids: list[int], start: int, end: int) -> int:
        """Where the assistant turn rendered as ids[start:end] ends as the model writes it: blank
        tokens a template puts after the turn's stop token (ChatML's "<|im_end|>\n") are never
        generated (generation stops at the stop token), so they are cut; blank tokens that no
        stop token precedes stay (in a template without an end token they end the turn)."""
        cut = end
        while cut - 1 > start and self._blank(ids[cut - 1]):
            cut -= 1
        return cut if cut < end and ids[cut - 1] in self.stop_ids else end

    def _blank(self, token: int) -> bool:
        return not self.tok.decode([token]).strip()


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
    # [row][attempt]: the engine's log-prob per generated token, None where it has none (or given)
    sample_logprobs: list[list[list[float] | None]] = field(default_factory=list)
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

    def engine_logprobs(self, rows: Sequence[int], width: int) -> torch.Tensor:
        """[b, width] fp32: the engine's log-prob of each generated token of `rows`, at its
        column of `tensors(rows)`; NaN on context, padding and attempts without engine log-probs."""
        out = torch.full((len(rows), width), float("nan"))
        for j, i in enumerate(rows):
            for turn, values in enumerate(self.sample_logprobs[i] if self.sample_logprobs else [], start=1):
                if values and turn in self.turns[i]:  # attempt tokens are contiguous in the row
                    col = self.turns[i].index(turn)
                    out[j, col:col + len(values)] = torch.tensor(values)
        return out


def generate(model, contexts: list[list[int]], settings: SamplingSettings, *, stop_ids, pad_id: int,
             batch_size: int, row_seeds: list[int] | None = None,
             engine: Engine | None = None) -> tuple[list[list[int]], list[bool]]:
    """Continue each context with `engine` (default: Hugging Face generate); (new ids, cut) per row."""
    out = run_engine(engine or HFGenerate(), model, contexts, settings, stop_ids=stop_ids, pad_id=pad_id,
                     batch_size=batch_size, row_seeds=row_seeds)
    return out.ids, out.cut


def run_engine(engine: Engine, model, contexts, settings: SamplingSettings, **kwargs) -> Generated:
    """engine.generate(model, contexts, settings, **kwargs) with the output layer handed
    contiguous hidden states (head_input.py: a sliced prefill costs a copy of its weights per row)."""
    with contiguous_head_input(model):
        return engine.generate(model, contexts, settings, **kwargs)


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
            row_seeds: list[int] | None = None, engine: Engine | None = None) -> Rollout:
    """Generate `samples_per_problem` episodes of `n_attempts` attempts for each problem.

    Rows are grouped by problem (row b answers problem b // samples_per_problem), which is the
    [P, k] layout RLOO expects. first_attempts: attempt-1 ids per row, taken as given instead of
    generated (fixed samples of another model: the 'w/o on-policy turn 1' ablation).
    row_seeds: one seed per row for per-row seeded sampling (see `generate`); attempt a of row b
    samples with seed mix(row_seeds[b], a). engine: what generates (default: engines 'auto');
    its state (e.g. the KV cache attempt 2 continues) is dropped when this returns."""
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
    out.sample_logprobs = [[] for _ in out.rows]
    engine = engine or make_engine("auto", model)
    start = time.perf_counter()
    if first_attempts is not None and len(first_attempts) != len(out.rows):
        raise ValueError(f"first_attempts has {len(first_attempts)} rows, the rollout {len(out.rows)}")
    try:
        for attempt in range(1, n_attempts + 1):
            _add_attempt(out, attempt, model, engine, fmt, settings, between, batch_size, pad_id,
                         first_attempts if attempt == 1 else None, row_seeds, n_attempts)
    finally:
        engine.reset()  # a cache of this policy's keys and values is stale after the next update
    out.generation_seconds = time.perf_counter() - start
    out.texts = [[tokenizer.decode(a, skip_special_tokens=True) for a in row] for row in out.attempts]
    return out


def _add_attempt(out: Rollout, attempt: int, model, engine: Engine, fmt: ChatFormat, settings, between,
                 batch_size: int, pad_id: int, given: list[list[int]] | None, row_seeds, n_attempts: int) -> None:
    """Generate (or take as `given`) attempt `attempt` of every row and append it, plus the
    between-turn ids when another attempt follows."""
    from .sampling import row_seed

    logprobs = None
    if given is not None:
        new_ids = [list(ids) for ids in given]
        cut = [bool(ids) and ids[-1] not in fmt.stop_ids and len(ids) >= settings.max_new_tokens
               for ids in new_ids]
    else:
        seeds = None if row_seeds is None else [row_seed(s, attempt) for s in row_seeds]
        gen = run_engine(engine, model, out.rows, settings, stop_ids=fmt.stop_ids, pad_id=pad_id,
                         batch_size=batch_size, row_seeds=seeds)
        new_ids, cut, logprobs = gen.ids, gen.cut, gen.logprobs
    for b, ids in enumerate(new_ids):
        out.rows[b] += ids
        out.turns[b] += [attempt] * len(ids)
        out.attempts[b].append(ids)
        out.truncated[b].append(cut[b])
        out.sample_logprobs[b].append(None if logprobs is None else logprobs[b])
        if given is None:
            out.generated_tokens += len(ids)
        if attempt < n_attempts:
            glue = fmt.join_ids(ids, between)
            out.rows[b] += glue
            out.turns[b] += [0] * len(glue)


def verify(task: Task, ro: Rollout) -> None:
    """Score every attempt of every row with the task's verifier (batched per attempt)."""
    row_problems = [ro.problems[i] for i in ro.problem_index]
    per_attempt = [task.score(row_problems, [t[a] for t in ro.texts]) for a in range(ro.n_attempts)]
    ro.verdicts = [[per_attempt[a][b] for a in range(ro.n_attempts)] for b in range(len(ro.rows))]
