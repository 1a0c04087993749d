"""The SCoRe update with each problem's prompt run once against the update on full rows, side by side.

    python benchmarks/update_speed.py                 # SmolLM2-135M-Instruct, full weights, fp32, CPU
    python benchmarks/update_speed.py --lora --problems 8 --samples 8
    python benchmarks/update_speed.py --device cuda --dtype bfloat16

What is timed is one step's update, `Trainer._accumulate_gradients`: reference log-probs,
policy log-probs, the loss and its backward over every micro-batch, on ONE rollout drawn once
(the vs_trl.py settings: arithmetic chat prompts, P problems x k samples, 2 attempts, <= 32 new
tokens, T = 1, Stage I). The two ways alternate (shared, full, shared, full, ...) after one
warm-up each, on the same trainer, the gradients cleared in between, so both see the same rows
and the same weights. The losses of the two ways are compared as a correctness check (they
differ by float rounding only).

Tokens: the model positions each way runs per step (policy and reference each run them once);
the shared way runs every distinct prompt once plus every row after its prompt.

The last line printed is one JSON object: shared_seconds, full_seconds, speedup (full / shared),
the token counts and the settings.
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
from vs_trl import our_config, sync  # noqa: E402

from selfcorrect import models  # noqa: E402
from selfcorrect.rollout import SamplingSettings, rollout, verify  # noqa: E402
from selfcorrect.shared_prompt import first_scored, prompt_groups  # noqa: E402
from selfcorrect.tasks import build_task  # noqa: E402
from selfcorrect.train import Trainer  # noqa: E402


def token_counts(ro, pad_id: int) -> dict:
    """Positions run per step by the full-row update and by the shared-prompt one (prompts
    found as the update finds them: first_scored, prompt_groups over the whole batch)."""
    ids, mask, turns = ro.tensors(range(len(ro.rows)), pad_id, "cpu")
    lengths = mask.sum(dim=1)
    starts = first_scored(turns, lengths)
    prompts, _ = prompt_groups(ids, starts)
    return {"full_tokens": int(lengths.sum()),
            "shared_tokens": int((lengths - starts).sum()) + sum(len(p) for p in prompts),
            "distinct_prompts": len(prompts)}


def timed_update(trainer: Trainer, ro, adv, valid, shared: bool, device: str) -> tuple[float, float]:
    """(seconds, loss) of one update with prompt sharing on or off; gradients cleared after."""
    trainer.share_prompts = shared
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
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (default: full weights)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--problems", type=int, default=4, help="problems per step")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=0, help="rows per forward/backward (0 = all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per way (after one warm-up each)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")

    work = Path(tempfile.mkdtemp(prefix="update-speed-"))
    name = models.SMOLLM2_NAME if args.model == "smollm2" else save_tiny(work / "tiny-model")
    cfg_args = SimpleNamespace(**vars(args), engine="auto", steps=0, full_rows=False)
    cfg = our_config(cfg_args, name, work / "run")
    task = build_task(cfg.task.name, cfg.task.options)
    trainer = Trainer(cfg, task)
    if not trainer.share_prompts:
        raise SystemExit("prompt sharing is not available for this model / setting (see Trainer.share_prompts)")
    settings = SamplingSettings(greedy=False, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    ro = rollout(trainer.model, trainer.tok, task, trainer.next_problems(), n_attempts=2,
                 samples_per_problem=args.samples, settings=settings, batch_size=cfg.rollout.batch_size,
                 fmt=trainer.fmt, engine=trainer.engine)
    verify(task, ro)
    _, _, adv, valid = trainer.advantages(ro, 1)
    counts = token_counts(ro, trainer.tok.pad_token_id)
    print(f"model {args.model}, {'LoRA' if args.lora else 'full weights'}, {args.dtype}, {args.device}, "
          f"{len(ro.rows)} rows ({args.problems} problems x {args.samples}), {counts}, "
          f"micro-batch {cfg.optim.micro_batch_size}, torch threads {torch.get_num_threads()}", flush=True)

    seconds = {True: [], False: []}
    losses = {True: [], False: []}
    for turn in range(args.repeats + 1):
        for shared in (True, False):
            s, loss = timed_update(trainer, ro, adv, valid, shared, args.device)
            if turn:  # turn 0 is the warm-up
                seconds[shared].append(s)
            losses[shared].append(loss)
            print(f"{'shared' if shared else 'full  '} {s:.3f} s, loss {loss:.6f}", flush=True)
    shared_s, full_s = statistics.median(seconds[True]), statistics.median(seconds[False])
    gap = max(abs(a - b) for a, b in zip(losses[True], losses[False]))
    result = {"shared_seconds": round(shared_s, 4), "full_seconds": round(full_s, 4),
              "speedup": round(full_s / shared_s, 4), "shared_runs": [round(x, 4) for x in seconds[True]],
              "full_runs": [round(x, 4) for x in seconds[False]], "max_loss_gap": gap, **counts,
              "token_ratio": round(counts["full_tokens"] / counts["shared_tokens"], 4),
              "settings": {"model": args.model, "lora": args.lora, "dtype": args.dtype, "device": args.device,
                           "problems": args.problems, "samples": args.samples,
                           "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                           "micro_batch": cfg.optim.micro_batch_size, "repeats": args.repeats,
                           "threads": torch.get_num_threads()}}
    print(f"update: shared prompts {shared_s:.2f} s, full rows {full_s:.2f} s, speedup {result['speedup']:.2f}x "
          f"({result['token_ratio']:.2f}x fewer positions); largest loss difference {gap:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
