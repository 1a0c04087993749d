"""Linear layers on a CPU: torch's kernels (MKL for fp32) against oneDNN with weights packed per
rollout (selfcorrect/cpu_linear.py), side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/cpu_linear_speed.py                    # SmolLM2, fp32, vs_trl settings
    OMP_NUM_THREADS=2 python benchmarks/cpu_linear_speed.py --dtype bfloat16   # bf16 autocast
    OMP_NUM_THREADS=2 python benchmarks/cpu_linear_speed.py --lora
    python benchmarks/cpu_linear_speed.py --model tiny --repeats 1             # a smoke run

The trainer of benchmarks/vs_trl.py (P problems x k samples, 2 attempts of exactly
--max-new-tokens tokens: stop tokens ignored, so both ways generate the same number of tokens).
Per repeat, each way in turn (after one warm-up each): one two-attempt rollout of the same
problems from the same seed, and one update (reference and policy log-probs, loss, backward)
over one fixed rollout. Both ways run whatever the CPU is: `auto` would pick oneDNN only where
torch reports AVX-512 (printed). Precision: the two ways' log-probs of that rollout's attempt
tokens against each other (rms and max), and each way's engine log-prob gap on it.

The last line printed is one JSON object: medians per way and phase, the speedups (torch's time
/ oneDNN's) and the differences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_attention_speed import (  # noqa: E402
    draw, fixed_length_trainer, summarise_difference, summarise_ways, time_ways,
)
from lora_rollout_speed import mean_engine_gap, move_adapters  # noqa: E402
from vs_trl import add_step_arguments, parse_step_arguments  # noqa: E402

from selfcorrect import cpu_linear  # noqa: E402

WAYS = {"torch": False, "onednn": True}  # way -> Trainer.onednn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts and updates per way (after a warm-up)")
    args = parse_step_arguments(parser)
    if args.device != "cpu":
        parser.error("this compares CPU kernels: --device cpu")
    if not cpu_linear.available():
        raise SystemExit("this torch build has no oneDNN inner product (torch.ops.mkldnn._linear_pointwise)")

    trainer = fixed_length_trainer(args, "cpu-linear-")
    if args.lora:
        move_adapters(trainer.model, 0.02)  # off B = 0, where the adapters' products are trivial
    problems = trainer.next_problems()
    capability, cpu = torch.backends.cpu.get_cpu_capability(), cpu_linear.cpu_model()
    print(f"model {args.model}, {'LoRA' if args.lora else 'full weights'}, {args.dtype}, cpu {cpu} ({capability}; "
          f"auto picks {cpu_linear.describe(torch.device('cpu'), 'auto')}), "
          f"{len(problems)} problems x {args.samples} samples x 2 attempts of {args.max_new_tokens} tokens, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    def switch(enabled: bool):
        def on():
            trainer.onednn = trainer.onednn_rollout = enabled
        return on

    fixed = draw(trainer, problems, seed=0)
    seconds = time_ways(trainer, problems, fixed, {way: switch(on) for way, on in WAYS.items()}, args.repeats)

    logprobs, gaps = {}, {}
    for way, enabled in WAYS.items():
        trainer.onednn = trainer.onednn_rollout = enabled
        logprobs[way] = trainer.attempt_logprobs(fixed)[0]
        gaps[way] = mean_engine_gap(trainer, draw(trainer, problems, seed=0))
    diff = logprobs["onednn"] - logprobs["torch"]

    result = summarise_ways(seconds, "torch", "onednn")
    result |= {"logprob_difference": summarise_difference(diff),
               "engine_gap_mean": {way: float(f"{g:.4g}") for way, g in gaps.items()},
               "scored_tokens": int(diff.numel()), "cpu_capability": capability,
               "settings": {"model": args.model, "lora": args.lora, "dtype": args.dtype, "problems": args.problems,
                            "samples": args.samples, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                            "threads": torch.get_num_threads(), "cpu": cpu}}
    print(f"rollout: torch {result['torch_rollout_seconds']:.2f} s, oneDNN {result['onednn_rollout_seconds']:.2f} s "
          f"({result['rollout_speedup']:.2f}x); update: {result['torch_update_seconds']:.2f} s against "
          f"{result['onednn_update_seconds']:.2f} s ({result['update_speedup']:.2f}x); log-prob difference "
          f"rms {result['logprob_difference']['rms']:.2e}, max {result['logprob_difference']['max']:.2e}; "
          f"engine gap torch {gaps['torch']:.2e}, oneDNN {gaps['onednn']:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
