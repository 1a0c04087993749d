"""The embedded default: a tiny Llama the project builds itself, on CPU, in a few minutes.

`selfcorrect demo` needs a base model that behaves like a weak real LLM on a task where checking
an answer is easier than finding it, with no download. This module makes one from nothing:

1. Problems: the arithmetic task (2-digit a+b, demo style), train split only; the test split
   stays held out for evaluation.
2. A warm-start corpus of two-turn chats [user x, assistant y1, user p, assistant y2]:
   - y1, a "sloppy solver": the right sum, except that a units carry is forgotten with
     probability `p_forget_carry` (> 0.5, so a greedy model forgets it every time and is right
     on about the 55% of problems without a carry, while sampling still finds the carry often)
     and a rare random digit slip. y1 is right-aligned to 3 characters (" 85", "112"): with
     answers of one width every digit sits at a fixed distance from the operand digits it
     needs, which a tiny model finds far more reliably than routing by content.
   - y2, drawn independently of whether y1 was right (a base model cannot tell): COPY y1,
     BREAK it (one digit moved by one: sometimes a lucky fix of the forgotten carry, usually a
     new mistake) or, rarely, CHECK: a digit-by-digit scratchpad with carries that ends in the
     right sum ("7+8=15;4+3+1=8;85"). The scratchpad is easy for a tiny model, so RL can learn
     to choose it; SFT alone only copies its share.
3. A character-level tokenizer trained in process with `tokenizers`, whose chat template is a
   plain concatenation and whose eos token `<|end|>` also ends every assistant turn.
4. A tiny LlamaForCausalLM trained from scratch on the corpus (loss on assistant tokens only).

The result is cached as a Hugging Face folder (model + tokenizer + recipe.json), keyed by the
recipe and seed; a build writes to a temporary folder and moves it into place with os.replace.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from selfcorrect.atomic import atomic_folder
from selfcorrect.rollout import SamplingSettings, rollout, verify
from selfcorrect.sft import encode_chat, sft_train
from selfcorrect.tasks.arithmetic import ArithmeticTask
from selfcorrect.tasks.base import Problem

#: Bump when the build code changes what a recipe produces, so old caches are rebuilt.
RECIPE_VERSION = 3  # 2: fused AdamW (other rounding than the for-loop AdamW of 1); 3: the split keeps commuted twins together

PAD, EOS, USER, ASSISTANT, SYSTEM = "<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = [PAD, EOS, USER, ASSISTANT, SYSTEM]
# A plain concatenation: every message renders the same way wherever it stands, so the rollout
# may render [user x, assistant SENTINEL, user p] and keep the text after SENTINEL.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}" + USER + "{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}" + ASSISTANT + "{{ message['content'] }}" + EOS +
    "{%- elif message['role'] == 'system' -%}" + SYSTEM + "{{ message['content'] }}"
    "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT + "{%- endif -%}"
)
MODES = ("copy", "check", "break")
RECIPE_MAX_POSITIONS = 128


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides what `build_demo_base` produces (the cache key)."""

    digits: int = 2
    """Operand digits of the arithmetic task the model is trained on (ops '+', style 'demo')."""
    n_test: int = 500
    """Held-out test problems of that task (never in the corpus)."""
    task_seed: int = 0
    """Split seed of that task."""
    p_forget_carry: float = 0.65
    """Probability that y1 forgets the units carry (> 0.5 makes greedy forget it always)."""
    p_slip: float = 0.04
    """Probability that y1 has one random wrong digit on top (keeps y1 noisy under sampling)."""
    align_answers: bool = True
    """Right-align y1 to digits + 1 characters (" 82", "120"), so every answer digit sits at a
    fixed distance from the operand digits it depends on. Without it the model must find the
    units digits by content: 6 of 16 such builds (seeds, lr, sizes) stalled on them."""
    p_copy: float = 0.66
    """Share of y2 that repeats y1."""
    p_check: float = 0.17
    """Share of y2 that recomputes digit by digit and ends in the right sum; the rest BREAK."""
    conversations: int = 76_800
    """Corpus size (two-turn chats), drawn over the train problems."""
    hidden_size: int = 128
    """Model width."""
    layers: int = 3
    """Transformer blocks."""
    heads: int = 4
    """Attention heads."""
    intermediate_size: int = 384
    """MLP width."""
    max_positions: int = RECIPE_MAX_POSITIONS
    """Context length; a demo episode is under 60 tokens."""
    lr: float = 3e-3
    """Peak AdamW learning rate (warmup then cosine)."""
    steps: int = 1200
    """Optimizer steps of the warm start."""
    batch_size: int = 64
    """Chats per step."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices."""
    min_learned_acc: float = 0.9
    """Greedy y1 accuracy the build expects on carry-free train problems. Small models learn
    addition after a plateau of varying length; a seed still on it gets more training."""
    max_extra_rounds: int = 2
    """At most this many extra rounds of steps // 2 (half the peak lr, cosine) for such seeds."""

    def __post_init__(self):
        if not 0.0 <= self.p_copy + self.p_check <= 1.0:
            raise ValueError(f"DemoRecipe: p_copy + p_check = {self.p_copy + self.p_check} is not in [0, 1]")
        for name in ("p_forget_carry", "p_slip", "p_copy", "p_check"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DemoRecipe.{name} = {getattr(self, name)} is not a probability")

    def task_options(self) -> dict:
        """Options of the task this model speaks: `tasks.arithmetic.build(**options)`."""
        return {"digits": self.digits, "ops": "+", "style": "demo", "n_test": self.n_test,
                "seed": self.task_seed}

    def task(self) -> ArithmeticTask:
        """The task this model speaks (the demo evaluates and RL-trains on the same one)."""
        return ArithmeticTask(**self.task_options())

    def fingerprint(self) -> str:
        blob = json.dumps({"version": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


#: The real recipe (about 3 minutes on 2 CPU threads).
RECIPE = DemoRecipe()
#: A seconds-long variant for tests: same corpus rules, a model that learns almost nothing.
QUICK_RECIPE = replace(RECIPE, conversations=256, hidden_size=32, layers=1, heads=2,
                       intermediate_size=64, steps=10, batch_size=16, min_learned_acc=0.0)


# ---------------------------------------------------------------- the corpus

def _digits_of(n: int) -> list[int]:
    return [int(c) for c in str(n)]


def sloppy_answer(a: int, b: int, recipe: DemoRecipe, rng: random.Random) -> str:
    """y1 for a+b: forgets the units carry with probability p_forget_carry, slips one digit
    with probability p_slip, and is right-aligned to digits + 1 characters when
    recipe.align_answers (" 82", "120")."""
    total = a + b
    if (a % 10) + (b % 10) >= 10 and rng.random() < recipe.p_forget_carry:
        total -= 10  # the carry into the tens column was dropped
    text = str(total)
    if rng.random() < recipe.p_slip:
        text = _nudge_digit(text, rng, any_digit=True)
    return text.rjust(recipe.digits + 1) if recipe.align_answers else text


def _nudge_digit(text: str, rng: random.Random, any_digit: bool = False) -> str:
    """`text` with one digit changed: by +-1 (a carry-shaped mistake) or, with any_digit, to any
    other digit. Padding is kept, and a leading digit never becomes 0."""
    first = len(text) - len(text.lstrip())
    pos = rng.randrange(first, len(text))
    old = int(text[pos])
    if any_digit:
        choices = [d for d in range(10) if d != old]
    else:
        choices = [(old + 1) % 10, (old - 1) % 10]
    if pos == first and len(text) - first > 1:
        choices = [d for d in choices if d != 0] or [old + 1 if old < 9 else old - 1]
    return text[:pos] + str(rng.choice(choices)) + text[pos + 1:]


def check_scratchpad(a: int, b: int) -> str:
    """The CHECK second attempt: column sums from the units up with the carry, then the sum.
    47+38 -> "7+8=15;4+3+1=8;85"."""
    xs, ys = _digits_of(a)[::-1], _digits_of(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        terms = [xs[i] if i < len(xs) else 0, ys[i] if i < len(ys) else 0] + ([carry] if carry else [])
        column = sum(terms)
        steps.append("+".join(map(str, terms)) + f"={column}")
        carry = column // 10
    return ";".join(steps) + f";{a + b}"


def second_attempt(a: int, b: int, y1: str, recipe: DemoRecipe, rng: random.Random) -> tuple[str, str]:
    """(mode, y2): the mode is drawn without looking at whether y1 is right."""
    u = rng.random()
    if u < recipe.p_copy:
        return "copy", y1
    if u < recipe.p_copy + recipe.p_check:
        return "check", check_scratchpad(a, b)
    return "break", _nudge_digit(y1, rng)


def classify_second_attempt(y1: str, y2: str) -> str:
    """Which mode a generated y2 looks like: 'check' (has a scratchpad), 'copy' (== y1),
    'break' (another bare number) or 'other'."""
    if "=" in y2 or ";" in y2:
        return "check"
    if y2 == y1:
        return "copy"
    return "break" if y2.strip().isdigit() else "other"


def build_corpus(problems: list[Problem], recipe: DemoRecipe, correction: str,
                 seed: int) -> list[list[dict]]:
    """`recipe.conversations` two-turn chats over `problems` (cycled in a seeded order):
    [user x, assistant y1, user correction, assistant y2]."""
    if any(p.meta.get("op") != "+" for p in problems):
        raise ValueError("build_corpus: the demo corpus only knows a+b problems")
    rng = random.Random(seed)
    chats: list[list[dict]] = []
    order: list[Problem] = []
    while len(chats) < recipe.conversations:
        if not order:
            order = list(problems)
            rng.shuffle(order)
        p = order.pop()
        a, b = p.meta["a"], p.meta["b"]
        y1 = sloppy_answer(a, b, recipe, rng)
        _, y2 = second_attempt(a, b, y1, recipe, rng)
        chats.append([{"role": "user", "content": p.question}, {"role": "assistant", "content": y1},
                      {"role": "user", "content": correction}, {"role": "assistant", "content": y2}])
    return chats


# ---------------------------------------------------------------- tokenizer and model

def build_tokenizer(texts: list[str], max_length: int = RECIPE_MAX_POSITIONS) -> PreTrainedTokenizerFast:
    """A character-level tokenizer trained on `texts`, covering all printable ASCII, with the
    special tokens, pad, eos = end of turn, and the demo chat template."""
    alphabet = sorted(set(string.printable) | {c for t in texts for c in t})
    # BPE with a vocabulary no bigger than alphabet + specials learns no merges: one token per
    # character, so every string has exactly one tokenization and decode(encode(s)) == s.
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + len(SPECIAL_TOKENS),
                                  special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet,
                                  show_progress=False)
    core = Tokenizer(models.BPE(unk_token=None))
    core.decoder = decoders.Fuse()
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS,
                                        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
                                        clean_up_tokenization_spaces=False, model_max_length=max_length)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(recipe: DemoRecipe, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama sized by the recipe."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=recipe.hidden_size,
                         intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.layers,
                         num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
                         max_position_embeddings=recipe.max_positions, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def encode_corpus(tokenizer, chats: list[list[dict]]) -> tuple[list[list[int]], list[list[int]]]:
    """Token rows and loss masks (1 on y1, y2 and their eos) for the corpus.

    The template is a plain concatenation, so a chat's tokens are its messages' tokens laid end
    to end; building rows from cached pieces is ~50x faster than rendering tens of thousands
    of chats. The first chats are also rendered through the real template (`encode_chat`) and
    must match exactly, so the corpus can never drift from what rollout will see.
    """
    role_id = {"user": tokenizer.convert_tokens_to_ids(USER),
               "assistant": tokenizer.convert_tokens_to_ids(ASSISTANT)}
    eos, pieces = tokenizer.eos_token_id, {}
    rows, masks = [], []
    for chat in chats:
        row, mask = [], []
        for m in chat:
            if m["content"] not in pieces:
                pieces[m["content"]] = tokenizer(m["content"], add_special_tokens=False)["input_ids"]
            content = pieces[m["content"]]
            trained = m["role"] == "assistant"
            row += [role_id[m["role"]], *content] + ([eos] if trained else [])
            mask += [0] + [int(trained)] * (len(content) + trained)
        rows.append(row)
        masks.append(mask)
    for i, chat in enumerate(chats[:64]):
        if encode_chat(tokenizer, chat) != (rows[i], masks[i]):
            raise ValueError(f"encode_corpus: chat {i} differs from its chat-template rendering: {chat}")
    return rows, masks


def _write_build(folder: Path, recipe: DemoRecipe, seed: int, progress: bool) -> dict:
    started = time.time()
    task = recipe.task()
    train = task.load("train")
    chats = build_corpus(train, recipe, task.correction_instruction, seed)
    tokenizer = build_tokenizer([m["content"] for chat in chats[:2000] for m in chat], recipe.max_positions)
    rows, masks = encode_corpus(tokenizer, chats)
    if progress:
        print(f"demo base: {len(rows)} chats over {len(train)} train problems, "
              f"vocab {len(tokenizer)}, encoded in {time.time() - started:.0f}s", flush=True)
    model = build_model(recipe, tokenizer, seed)
    train_kw = dict(batch_size=recipe.batch_size, pad_id=tokenizer.pad_token_id,
                    weight_decay=recipe.weight_decay, progress=progress)
    losses = sft_train(model, rows, masks, lr=recipe.lr, steps=recipe.steps, seed=seed, **train_kw)
    # Sanity check on train problems without a carry, where y1 is right whatever the carry
    # coin says: a model still on the plateau (wrong units digits) trains on instead.
    no_carry = [p for p in train if p.meta["a"] % 10 + p.meta["b"] % 10 < 10][:256]
    learned, extra_rounds = first_attempt_accuracy(model, tokenizer, task, no_carry), 0
    while learned < recipe.min_learned_acc and extra_rounds < recipe.max_extra_rounds:
        extra_rounds += 1
        if progress:
            print(f"demo base: greedy accuracy {learned:.2f} on carry-free train problems is under "
                  f"{recipe.min_learned_acc}; extra round {extra_rounds}", flush=True)
        losses += sft_train(model, rows, masks, lr=recipe.lr / 2, steps=max(1, recipe.steps // 2),
                            seed=seed + 1000 * extra_rounds, **train_kw)
        learned = first_attempt_accuracy(model, tokenizer, task, no_carry)
    if learned < recipe.min_learned_acc:
        warnings.warn(f"demo base (seed {seed}) reached only {learned:.2f} greedy accuracy on carry-free "
                      f"train problems after {extra_rounds} extra rounds; the demo will be weak")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {"version": RECIPE_VERSION, "fingerprint": recipe.fingerprint(), "seed": seed,
            "recipe": asdict(recipe), "task": {"name": "arithmetic", **recipe.task_options()},
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": sum(losses[-20:]) / len(losses[-20:]), "steps_trained": len(losses),
            "extra_rounds": extra_rounds, "no_carry_train_acc": learned,
            "build_seconds": round(time.time() - started, 1)}
    (folder / "recipe.json").write_text(json.dumps(info, indent=2))
    return info


def _cache_valid(folder: Path, recipe: DemoRecipe, seed: int) -> bool:
    try:
        info = json.loads((folder / "recipe.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == recipe.fingerprint() and info.get("seed") == seed


def build_demo_base(cache_dir: Path, seed: int = 0, progress: bool = True, force: bool = False,
                    quick: bool = False, recipe: DemoRecipe | None = None) -> Path:
    """Build (or reuse) the demo base model; return its Hugging Face folder.

    cache_dir: where builds live, one subfolder per (recipe, seed).
    quick: use QUICK_RECIPE (seconds, for tests); recipe: any other recipe (overrides quick).
    force: rebuild even when a valid cache exists.
    The folder loads with AutoModelForCausalLM / AutoTokenizer.from_pretrained and holds
    recipe.json (recipe, task options, build time, final loss).
    """
    recipe = recipe or (QUICK_RECIPE if quick else RECIPE)
    cache_dir = Path(cache_dir)
    final = cache_dir / f"demo-base-{recipe.fingerprint()}-seed{seed}"
    if not force and _cache_valid(final, recipe, seed):
        return final
    with atomic_folder(final) as tmp:  # an interrupted build never leaves a half cache
        info = _write_build(tmp, recipe, seed, progress)
    if progress:
        print(f"demo base: built {final} ({info['parameters']} parameters, "
              f"final loss {info['final_loss']:.3f}, {info['build_seconds']}s)", flush=True)
    return final


# ---------------------------------------------------------------- the build's own check

@torch.no_grad()
def first_attempt_accuracy(model, tokenizer, task: ArithmeticTask, problems: list[Problem],
                           batch_size: int = 512) -> float:
    """Greedy accuracy of attempt 1 alone: cheap enough to tell, mid-build, whether the model
    has left the plateau (the calibration probe in demo_probe.py measures the rest)."""
    model.eval()
    settings = SamplingSettings(greedy=True, max_new_tokens=task.digits + 3)
    ro = rollout(model, tokenizer, task, problems, n_attempts=1, samples_per_problem=1,
                 settings=settings, batch_size=batch_size)
    verify(task, ro)
    return sum(row[0].reward for row in ro.verdicts) / len(problems)
