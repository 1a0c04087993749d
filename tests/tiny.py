"""A randomly initialised tiny Llama and a character tokenizer trained in process: no download."""

from __future__ import annotations

import string

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from selfcorrect.tasks.base import CORRECT, WRONG_ANSWER, Problem, Task, Verdict

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<pad>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.WordLevel(unk_token="?"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    raw.decoder = decoders.Fuse()
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n"
    raw.train_from_iterator([alphabet], trainers.WordLevelTrainer(special_tokens=SPECIALS + ["?"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<|end|>",
                                  unk_token="?", additional_special_tokens=SPECIALS[2:])
    tok.chat_template = TEMPLATE
    return tok


# models the engine contract is checked on: 4 heads of 32, the smallest vLLM's CPU attention takes
ENGINE_HIDDEN = 128


def engine_params() -> list:
    """Every registered engine as a pytest parameter, skipped where its optional package is missing."""
    from selfcorrect.engines import ENGINES, NEEDS, installed

    have = installed()
    return [pytest.param(n, marks=pytest.mark.skipif(n not in have, reason=f"needs the {NEEDS.get(n)} package"))
            for n in sorted(ENGINES)]


def tiny_model(tok, seed: int = 0, layers: int = 2, hidden: int = 32, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


class EchoTask(Task):
    """Toy task: a response is right when it contains one of the characters of `answer` ('a' by
    default; training tests pass many so that a random model's rewards vary). Prompts of varied length."""

    name = "echo"
    correction_instruction = "again"

    def __init__(self, n: int = 8, answer: str = "a"):
        self.answer = answer
        self.items = [Problem(id=str(i), question="x" * (1 + 3 * i), reference=answer) for i in range(n)]

    def load(self, split: str) -> list[Problem]:
        return list(self.items)

    def first_turn(self, problem: Problem) -> list[dict]:
        return [{"role": "user", "content": problem.question}]

    def score(self, problems, responses):
        return [Verdict(1.0, r, CORRECT) if any(c in r for c in p.reference) else Verdict(0.0, r, WRONG_ANSWER)
                for p, r in zip(problems, responses)]


def chat_contexts(tok, lengths=(1, 7, 20, 3)) -> list[list[int]]:
    """Chat-templated first-turn contexts of one user message of 'x' * n, one per length."""
    from selfcorrect.rollout import ChatFormat

    fmt = ChatFormat(tok)
    return [fmt.first_ids([{"role": "user", "content": "x" * n}]) for n in lengths]


def echo_rollouts():
    """The multi-turn engine check: (tokenizer, EchoTask(3), run) where run(engine=None) is a greedy
    3-attempt rollout of 2 samples per problem on one tiny model (None: the hf reference)."""
    from selfcorrect.engines.base import SamplingSettings
    from selfcorrect.rollout import rollout

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=1, hidden=ENGINE_HIDDEN)
    task = EchoTask(3)
    problems = task.load("train")
    settings = SamplingSettings(greedy=True, max_new_tokens=6)

    def run(engine=None):
        return rollout(model, tok, task, problems, n_attempts=3, samples_per_problem=2, settings=settings,
                       batch_size=4, engine=engine)

    return tok, task, run
