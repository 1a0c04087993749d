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

from .tasks.base import Problem, Task, Verdict

_SENTINEL = "\u2063SELFCORRECT_SENTINEL\u2063"


class ChatFormat:
    """Turns messages into ids through the tokenizer's chat template (plain text without one).

    Layout [our reading of SCORE.md §1]: user = problem, assistant = y1, user = instruction,
    assistant = y2. The ids between two attempts are taken from the template rendered around a
    sentinel assistant message, so they match what the template would produce for the turn.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self._between_cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def first_ids(self, messages: list[dict]) -> list[int]:
        """Ids of the conversation up to the start of attempt 1."""
        if self.has_template:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.encode(text)
        text = "\n\n".join(m["content"] for m in messages)
        return self.tok(text, add_special_tokens=True)["input_ids"]

    def between_ids(self, messages: list[dict], instruction: str) -> list[int]:
        """Ids that close an attempt and ask for the next one (end of turn, user: p, assistant:).

        The leading end-of-turn token equals eos for chat models; `join_ids` drops it when the
        attempt already ended with eos."""
        if instruction in self._between_cache:
            return self._between_cache[instruction]
        if self.has_template:
            convo = list(messages) + [{"role": "assistant", "content": _SENTINEL},
                                      {"role": "user", "content": instruction}]
            text = self.tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
            cut = text.rfind(_SENTINEL)
            if cut < 0:
                raise ValueError("the chat template dropped the assistant message; cannot build turn 2")
            ids = self.encode(text[cut + len(_SENTINEL):])
        else:
            ids = [self.eos_id] + self.encode("\n\n" + instruction + "\n\n")
        self._between_cache[instruction] = ids
        return ids

    def join_ids(self, attempt: list[int], between: list[int]) -> list[int]:
        """`between` without its leading eos when the attempt already ended with one."""
        if attempt and attempt[-1] == self.eos_id and between and between[0] == self.eos_id:
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
        width = max(len(self.rows[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        turn = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            n = len(self.rows[i])
            ids[j, :n] = torch.tensor(self.rows[i])
            mask[j, :n] = 1
            turn[j, :n] = torch.tensor(self.turns[i])
        return ids.to(device), mask.to(device), turn.to(device)


def generate(model, contexts: list[list[int]], settings: SamplingSettings, *, eos_id: int,
             pad_id: int, batch_size: int) -> tuple[list[list[int]], list[bool]]:
    """Continue each context; return the new ids per row (up to and incl. the first eos) and
    whether the row was cut at max_new_tokens. Rows are left-padded in batches of `batch_size`."""
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(
        max_new_tokens=settings.max_new_tokens, do_sample=not settings.greedy,
        temperature=None if settings.greedy else settings.temperature,
        top_p=None if settings.greedy else settings.top_p, top_k=None,
        eos_token_id=eos_id, pad_token_id=pad_id)
    device = next(model.parameters()).device
    outputs: list[list[int]] = []
    cut: list[bool] = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        width = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, c in enumerate(chunk):
            ids[j, width - len(c):] = torch.tensor(c)
            mask[j, width - len(c):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=gen_cfg)
        for row in out[:, width:].tolist():
            if eos_id in row:
                outputs.append(row[: row.index(eos_id) + 1])
                cut.append(False)
            else:
                outputs.append(row)
                cut.append(len(row) >= settings.max_new_tokens)
    return outputs, cut


def check_context_fits(model, problems: list[Problem], contexts: list[list[int]], n_attempts: int,
                       max_new_tokens: int) -> None:
    """Fail before generating when a prompt cannot fit the model's context window."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return
    for problem, ctx in zip(problems, contexts):
        if len(ctx) + n_attempts * max_new_tokens > limit:
            raise ValueError(
                f"problem {problem.id!r}: prompt of {len(ctx)} tokens + {n_attempts} attempts x "
                f"{max_new_tokens} new tokens exceeds the model's context of {limit} tokens; "
                "lower max_new_tokens or shorten the prompt")


def rollout(model, tokenizer, task: Task, problems: list[Problem], *, n_attempts: int,
            samples_per_problem: int, settings: SamplingSettings, batch_size: int,
            fmt: ChatFormat | None = None) -> Rollout:
    """Generate `samples_per_problem` episodes of `n_attempts` attempts for each problem.

    Rows are grouped by problem (row b answers problem b // samples_per_problem), which is the
    [P, k] layout RLOO expects."""
    fmt = fmt or ChatFormat(tokenizer)
    pad_id = tokenizer.pad_token_id
    out = Rollout(problems=list(problems),
                  problem_index=[p for p in range(len(problems)) for _ in range(samples_per_problem)])
    firsts = [fmt.first_ids(task.first_turn(p)) for p in problems]
    check_context_fits(model, problems, firsts, n_attempts, settings.max_new_tokens)
    out.rows = [list(firsts[p]) for p in out.problem_index]
    out.turns = [[0] * len(r) for r in out.rows]
    out.attempts = [[] for _ in out.rows]
    out.truncated = [[] for _ in out.rows]
    between = fmt.between_ids(task.first_turn(problems[0]), task.correction_instruction) if n_attempts > 1 else []
    start = time.perf_counter()
    for attempt in range(1, n_attempts + 1):
        new_ids, cut = generate(model, out.rows, settings, eos_id=fmt.eos_id, pad_id=pad_id,
                                batch_size=batch_size)
        for b, ids in enumerate(new_ids):
            out.rows[b] += ids
            out.turns[b] += [attempt] * len(ids)
            out.attempts[b].append(ids)
            out.truncated[b].append(cut[b])
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
