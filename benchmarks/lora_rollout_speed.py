"""A LoRA policy's rollout with peft's adapter forward against adapters folded into the weights
(selfcorrect/merged_lora.py), side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/lora_rollout_speed.py                   # SmolLM2, fp32, vs_trl settings
    OMP_NUM_THREADS=2 python benchmarks/lora_rollout_speed.py --dtype bfloat16  # bf16 autocast, bf16 base
    python benchmarks/lora_rollout_speed.py --model tiny --repeats 1            # a smoke run

The trainer of benchmarks/vs_trl.py with --lora (P problems x k samples, 2 attempts of exactly
--max-new-tokens tokens: stop tokens ignored, so both ways generate the same number of tokens).
The adapter is first moved off its zero start (B = 0 makes both ways trivially equal) by
--adapter-scale x a random normal per LoRA weight. Per repeat, each way in turn (after one
warm-up each) draws one two-attempt rollout of the same problems from the same seed.
Precision: each way's engine log-prob gap, the mean |log π_train − log π_engine| over the
generated tokens of its last rollout, with π_train the trainer's log-probs (adapters unfolded,
as the update computes them).

The last line printed is one JSON object: median seconds per way, the speedup (peft's forward's
time / the folded one's) and the gaps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_attention_speed import draw, fixed_length_trainer  # noqa: E402
from vs_trl import add_step_arguments, parse_step_arguments  # noqa: E402

from selfcorrect.train import Trainer, engine_gap  # noqa: E402

WAYS = {"peft": False, "folded": True}  # way -> cfg.rollout.merge_lora


def move_adapters(model, scale: float, seed: int = 0) -> None:
    """Every LoRA weight (A and B) to `scale` x a standard normal: a trained-looking adapter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def mean_engine_gap(trainer: Trainer, ro) -> float:
    """Mean |trainer log-prob − engine log-prob| over the generated tokens of `ro`, as training logs it."""
    gap = engine_gap(*trainer.attempt_logprobs(ro))
    return gap["engine_gap_sum"] / gap["engine_gap_n"] if gap["engine_gap_n"] else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts per way (after a warm-up)")
    parser.add_argument("--adapter-scale", type=float, default=0.02,
                        help="the LoRA weights' standard deviation (their trained-looking state)")
    args = parse_step_arguments(parser)
    args.lora = True

    trainer = fixed_length_trainer(args, "lora-rollout-")
    move_adapters(trainer.model, args.adapter_scale)
    problems = trainer.next_problems()
    print(f"model {args.model}, LoRA r {trainer.cfg.model.lora_r}, {args.dtype}, {args.device}, "
          f"{len(problems)} problems x {args.samples} samples x 2 attempts of {args.max_new_tokens} tokens, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    seconds = {way: [] for way in WAYS}
    last = {}
    for turn in range(args.repeats + 1):
        for way, folded in WAYS.items():
            trainer.cfg.rollout.merge_lora = folded
            start = time.perf_counter()
            last[way] = draw(trainer, problems, seed=turn + 1)
            took = time.perf_counter() - start
            if turn:  # turn 0 warms up
                seconds[way].append(took)
            print(f"{way:7} rollout {took:.2f} s{'' if turn else ' (warm-up)'}", flush=True)
    gaps = {way: mean_engine_gap(trainer, ro) for way, ro in last.items()}

    median = {way: round(statistics.median(v), 4) for way, v in seconds.items()}
    result = {"peft_rollout_seconds": median["peft"], "folded_rollout_seconds": median["folded"],
              "runs": {way: [round(x, 4) for x in v] for way, v in seconds.items()},
              "rollout_speedup": round(median["peft"] / median["folded"], 4),
              "engine_gap_mean": {way: float(f"{g:.4g}") for way, g in gaps.items()},
              "settings": {"model": args.model, "dtype": args.dtype, "device": args.device,
                           "problems": args.problems, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
                           "adapter_scale": args.adapter_scale, "repeats": args.repeats,
                           "threads": torch.get_num_threads()}}
    print(f"LoRA rollout: peft's forward {median['peft']:.2f} s, folded {median['folded']:.2f} s "
          f"({result['rollout_speedup']:.2f}x); engine log-prob gap: peft {gaps['peft']:.2e}, "
          f"folded {gaps['folded']:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
