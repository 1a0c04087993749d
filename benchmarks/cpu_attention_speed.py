"""Attention under bf16 autocast on a CPU: autocast's bf16 attention against fp32 attention
(selfcorrect/fp32_attention.py, the default), side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/cpu_attention_speed.py               # SmolLM2, full weights, vs_trl settings
    python benchmarks/cpu_attention_speed.py --model tiny --repeats 1        # a smoke run

The trainer of benchmarks/vs_trl.py (bf16 autocast over fp32 master weights, P problems x k
samples, 2 attempts of exactly --max-new-tokens tokens: stop tokens ignored, so both ways
generate the same number of tokens). Per repeat, each way in turn (after one warm-up each):
- rollout: one two-attempt rollout of the same problems from the same seed;
- update: reference and policy log-probs, loss and backward over one fixed rollout
  (`Trainer._accumulate_gradients`, as benchmarks/update_speed.py times it).
Precision, once: the log-probs of that rollout's attempt tokens under each way against the same
model in fp32 without autocast (the values bf16 approximates): rms and max error.

The last line printed is one JSON object: medians per way and phase, the speedups (autocast's
time / fp32 attention's) and the errors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_speed import save_tiny  # noqa: E402
from vs_trl import add_step_arguments, our_config, parse_step_arguments  # noqa: E402

from selfcorrect import fp32_attention, models  # noqa: E402
from selfcorrect.rollout import verify  # noqa: E402
from selfcorrect.tasks import build_task  # noqa: E402
from selfcorrect.train import Trainer  # noqa: E402

WAYS = {"autocast": False, "fp32": True}  # way -> fp32_attention.ENABLED


def fixed_length_trainer(args, prefix: str) -> Trainer:
    """The vs_trl.py trainer for `args` (SmolLM2 or a saved tiny model in a fresh temporary
    folder), its attempts running to --max-new-tokens: stop tokens ignored, so every way
    compared generates the same number of tokens."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    name = models.SMOLLM2_NAME if args.model == "smollm2" else save_tiny(work / "tiny-model")
    cfg = our_config(SimpleNamespace(**vars(args), engine="auto", steps=0, full_rows=False), name, work / "run")
    trainer = Trainer(cfg, build_task(cfg.task.name, cfg.task.options))
    trainer.fmt.stop_ids = frozenset()
    return trainer


def draw(trainer: Trainer, problems, seed: int):
    """One two-attempt rollout as the trainer samples, from `seed`."""
    torch.manual_seed(seed)
    return trainer.draw(problems, 2)


def _attention_switch(enabled: bool):
    def switch():
        fp32_attention.ENABLED = enabled
    return switch


def time_ways(trainer: Trainer, problems, fixed, ways: dict, repeats: int) -> dict:
    """Per repeat (after one warm-up), each way in turn: `ways[way]()` switches it on, then one
    rollout of `problems` (seeded by the repeat) and one update (`Trainer._accumulate_gradients`,
    as benchmarks/update_speed.py times it) over the rollout `fixed`, each timed.
    Returns {(way, "rollout" | "update"): [seconds per repeat]}."""
    verify(trainer.task, fixed)
    _, _, adv, valid = trainer.advantages(fixed, 1)
    seconds = {(way, phase): [] for way in ways for phase in ("rollout", "update")}
    for turn in range(repeats + 1):
        for way, switch in ways.items():
            switch()
            start = time.perf_counter()
            draw(trainer, problems, seed=turn + 1)
            rollout_s = time.perf_counter() - start
            trainer.optimizer.zero_grad(set_to_none=True)
            start = time.perf_counter()
            trainer._accumulate_gradients(fixed, adv, valid, 1)
            update_s = time.perf_counter() - start
            trainer.optimizer.zero_grad(set_to_none=True)
            if turn:  # turn 0 warms up
                seconds[way, "rollout"].append(rollout_s)
                seconds[way, "update"].append(update_s)
            print(f"{way:8} rollout {rollout_s:.2f} s, update {update_s:.2f} s{'' if turn else ' (warm-up)'}",
                  flush=True)
    return seconds


def summarise_ways(seconds: dict, slow: str, fast: str) -> dict:
    """time_ways' seconds as the benchmarks print them: per way and phase the median
    (`<way>_<phase>_seconds`) and the runs, and per phase the speedup (slow's median / fast's)."""
    median = {f"{way}_{phase}_seconds": round(statistics.median(v), 4) for (way, phase), v in seconds.items()}
    return {**median, "runs": {f"{way}_{phase}": [round(x, 4) for x in v] for (way, phase), v in seconds.items()},
            **{f"{phase}_speedup": round(median[f"{slow}_{phase}_seconds"] / median[f"{fast}_{phase}_seconds"], 4)
               for phase in ("rollout", "update")}}


def summarise_difference(diff) -> dict:
    """A tensor of log-prob differences as the benchmarks print it: root mean square and largest size."""
    return {"rms": float(diff.pow(2).mean().sqrt()), "max": float(diff.abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.set_defaults(dtype="bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts and updates per way (after a warm-up)")
    args = parse_step_arguments(parser)
    if args.dtype != "bfloat16" or args.device != "cpu":
        parser.error("this compares attention under bf16 autocast on a CPU: --dtype bfloat16 --device cpu")

    trainer = fixed_length_trainer(args, "cpu-attention-")
    problems = trainer.next_problems()
    print(f"model {args.model}, {'LoRA' if args.lora else 'full weights'}, bf16 autocast, cpu, {len(problems)} "
          f"problems x {args.samples} samples x 2 attempts of {args.max_new_tokens} tokens, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    fixed = draw(trainer, problems, seed=0)
    seconds = time_ways(trainer, problems, fixed, {way: _attention_switch(on) for way, on in WAYS.items()},
                        args.repeats)

    errors = {}
    compute_dtype, trainer.compute_dtype = trainer.compute_dtype, None  # fp32 masters, no autocast: exact
    exact = trainer.attempt_logprobs(fixed)[0]
    trainer.compute_dtype = compute_dtype
    for way, enabled in WAYS.items():
        fp32_attention.ENABLED = enabled
        diff = trainer.attempt_logprobs(fixed)[0] - exact
        errors[way] = summarise_difference(diff)
    fp32_attention.ENABLED = True

    result = summarise_ways(seconds, "autocast", "fp32")
    result |= {"logprob_error_vs_fp32": errors, "scored_tokens": int(exact.numel()),
               "settings": {"model": args.model, "lora": args.lora, "problems": args.problems, "samples": args.samples,
                            "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                            "threads": torch.get_num_threads()}}
    print(f"rollout: autocast attention {result['autocast_rollout_seconds']:.2f} s, fp32 attention "
          f"{result['fp32_rollout_seconds']:.2f} s ({result['rollout_speedup']:.2f}x); update: "
          f"{result['autocast_update_seconds']:.2f} s against {result['fp32_update_seconds']:.2f} s "
          f"({result['update_speedup']:.2f}x); log-prob rms error against fp32: autocast "
          f"{errors['autocast']['rms']:.2e}, fp32 attention {errors['fp32']['rms']:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
