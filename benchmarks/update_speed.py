"""The SCoRe update as the trainer runs it against two slower ways, side by side in one run.

    python benchmarks/update_speed.py                 # SmolLM2-135M-Instruct, full weights, fp32, CPU
    python benchmarks/update_speed.py --lora --problems 8 --samples 8
    python benchmarks/update_speed.py --device cuda --dtype bfloat16

The ways:
- shared: the trainer's default. Each problem's prompt runs once for its k samples, and the
  output layer runs only where a token is scored (the attempts).
- full:   every row runs in full (optim.share_prompt false; what DDP / FSDP and gradient
  checkpointing use); the output layer still only at scored positions.
- every:  prompts shared, but the output layer and log-softmax at every real position after the
  prompt (the correction instruction too), as the update did before it gathered positions.

What is timed is one step's update, `Trainer._accumulate_gradients`: reference log-probs,
policy log-probs, the loss and its backward over every micro-batch, on ONE rollout drawn once
(the vs_trl.py settings: arithmetic chat prompts, P problems x k samples, 2 attempts, <= 32 new
tokens, T = 1, Stage I). The ways alternate (shared, full, every, shared, ...) after one warm-up
each, on the same trainer, the gradients cleared in between, so all see the same rows and the
same weights. Their losses are compared as a correctness check (they differ by float rounding
only).

Tokens: the model positions each way runs per step (policy and reference each run them once);
the shared way runs every distinct prompt once plus every row after its prompt; scored: the
positions that get logits in the shared and full ways.

The last line printed is one JSON object: seconds per way, the speedups of shared over the two
others, the token counts and the settings.
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
from vs_trl import add_step_arguments, our_config, parse_step_arguments, sync  # noqa: E402

from selfcorrect import models  # noqa: E402
from selfcorrect.rollout import rollout, verify  # noqa: E402
from selfcorrect.shared_prompt import prompt_groups  # noqa: E402
from selfcorrect.tasks import build_task  # noqa: E402
from selfcorrect.train import Trainer, sampling_settings  # noqa: E402


def token_counts(trainer: Trainer, ro) -> dict:
    """Positions run per step by the full-row update and by the shared-prompt one (prompts
    found as the update finds them: scoring_inputs, prompt_groups over the whole batch)."""
    ids, mask, starts, _, label_turns = trainer.scoring_inputs(ro, range(len(ro.rows)))
    lengths = mask.sum(dim=1)
    prompts, _ = prompt_groups(ids, starts)
    return {"full_tokens": int(lengths.sum()),
            "shared_tokens": int((lengths - starts).sum()) + sum(len(p) for p in prompts),
            "scored_tokens": int((label_turns > 0).sum()), "distinct_prompts": len(prompts)}


WAYS = ("shared", "full", "every")


def timed_update(trainer: Trainer, ro, adv, valid, way: str, device: str) -> tuple[float, float]:
    """(seconds, loss) of one update done one of WAYS; gradients cleared after."""
    trainer.share_prompts = way != "full"
    if way == "every":  # drop the scored mask: logits at every real position after the prompt
        trainer.logprobs = lambda model, ids, mask, first, starts=None, scored=None: Trainer.logprobs(
            trainer, model, ids, mask, first, starts)
    else:
        trainer.__dict__.pop("logprobs", None)
    trainer.optimizer.zero_grad(set_to_none=True)
    sync(device)
    start = time.perf_counter()
    loss, _ = trainer._accumulate_gradients(ro, adv, valid, 1)
    sync(device)
    seconds = time.perf_counter() - start
    trainer.optimizer.zero_grad(set_to_none=True)
    return seconds, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per way (after one warm-up each)")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of {', '.join(WAYS)}; the "
                        "speedups need all three")
    args = parse_step_arguments(parser)
    ways = tuple(args.ways.split(","))
    if not ways or not set(ways) <= set(WAYS):
        parser.error(f"--ways: a comma-separated list of {', '.join(WAYS)}")

    work = Path(tempfile.mkdtemp(prefix="update-speed-"))
    name = models.SMOLLM2_NAME if args.model == "smollm2" else save_tiny(work / "tiny-model")
    cfg_args = SimpleNamespace(**vars(args), engine="auto", steps=0, full_rows=False)
    cfg = our_config(cfg_args, name, work / "run")
    task = build_task(cfg.task.name, cfg.task.options)
    trainer = Trainer(cfg, task)
    if not trainer.share_prompts:
        raise SystemExit("prompt sharing is not available for this model / setting (see Trainer.share_prompts)")
    ro = rollout(trainer.model, trainer.tok, task, trainer.next_problems(), n_attempts=2,
                 samples_per_problem=args.samples, settings=sampling_settings(cfg), batch_size=cfg.rollout.batch_size,
                 fmt=trainer.fmt, engine=trainer.engine)
    verify(task, ro)
    _, _, adv, valid = trainer.advantages(ro, 1)
    counts = token_counts(trainer, ro)
    print(f"model {args.model}, {'LoRA' if args.lora else 'full weights'}, {args.dtype}, {args.device}, "
          f"{len(ro.rows)} rows ({args.problems} problems x {args.samples}), {counts}, "
          f"micro-batch {cfg.optim.micro_batch_size}, torch threads {torch.get_num_threads()}", flush=True)

    seconds = {way: [] for way in ways}
    losses = {way: [] for way in ways}
    for turn in range(args.repeats + 1):
        for way in ways:
            s, loss = timed_update(trainer, ro, adv, valid, way, args.device)
            if turn:  # turn 0 is the warm-up
                seconds[way].append(s)
            losses[way].append(loss)
            print(f"{way:6} {s:.3f} s, loss {loss:.6f}", flush=True)
    median = {way: statistics.median(seconds[way]) for way in ways}
    gap = max((abs(a - b) for way in ways[1:] for a, b in zip(losses[ways[0]], losses[way])), default=0.0)
    result = {**{f"{way}_seconds": round(median[way], 4) for way in ways},
              **{f"{way}_runs": [round(x, 4) for x in seconds[way]] for way in ways}, "max_loss_gap": gap, **counts,
              "token_ratio": round(counts["full_tokens"] / counts["shared_tokens"], 4),
              "settings": {"model": args.model, "lora": args.lora, "dtype": args.dtype, "device": args.device,
                           "problems": args.problems, "samples": args.samples,
                           "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                           "micro_batch": cfg.optim.micro_batch_size, "repeats": args.repeats,
                           "threads": torch.get_num_threads(), "ways": list(ways)}}
    if set(ways) == set(WAYS):
        result.update(speedup=round(median["full"] / median["shared"], 4),
                      speedup_vs_every=round(median["every"] / median["shared"], 4))
        print(f"update: shared {median['shared']:.2f} s, full rows {median['full']:.2f} s ({result['speedup']:.2f}x, "
              f"{result['token_ratio']:.2f}x fewer positions), logits everywhere {median['every']:.2f} s "
              f"({result['speedup_vs_every']:.2f}x); largest loss difference {gap:.2e}")
    print(json.dumps(result))

if __name__ == "__main__":
    main()
