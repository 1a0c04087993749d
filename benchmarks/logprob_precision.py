"""How far bf16 log-probs and KL estimates are from fp32 ones, with and without fp32 logits.

    python benchmarks/logprob_precision.py                     # SmolLM2, full weights, 2 training steps
    python benchmarks/logprob_precision.py --lora --train-steps 4 --lr 1e-3

A trainer in bf16 (fp32 master weights under bf16 autocast; the vs_trl.py settings: arithmetic
chat prompts, P problems x k samples, 2 attempts, <= 32 new tokens, T = 1) takes --train-steps
real Stage I steps, so that the policy moves away from its reference as in training, then
draws one rollout. On its rows the policy's and the reference's log-probs of every attempt
token are computed three ways:
- fp32:      fp32 copies of both models, no autocast (the values bf16 approximates);
- bf16+fp32: bf16 autocast, the output layer in fp32 (the trainer's default, precision.py);
- bf16:      bf16 autocast throughout (--model.fp32_logits false);
- bf16>fp32: bf16 autocast, the output layer's operands in bf16 and its result in fp32: what the
             fp32-logits switch computes on CUDA (torch.mm with out_dtype), emulated here.
Printed per way: the error of the policy's log-probs and of the per-token log-ratio
log π − log π_ref against fp32's, the correlation of those log-ratios with fp32's, and the mean
KL estimates over attempt tokens (k3, which train logs as kl_t*; k2, the loss's default term)
beside fp32's. Then the seconds of one policy log-prob pass without gradients for fp32,
bf16+fp32 and bf16, alternating, median of --repeats, and the milliseconds per
generated token of one rollout of the same problems per bf16 way (same seed), alternating.

The last line printed is one JSON object with every figure and the settings.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_speed import save_tiny  # noqa: E402
from vs_trl import add_step_arguments, our_config, parse_step_arguments, sync  # noqa: E402

from selfcorrect import models, precision  # noqa: E402
from selfcorrect.losses import kl_value  # noqa: E402
from selfcorrect.optim import autocast  # noqa: E402
from selfcorrect.precision import fp32_logits  # noqa: E402
from selfcorrect.rollout import rollout  # noqa: E402
from selfcorrect.tasks import build_task  # noqa: E402
from selfcorrect.train import Trainer, sampling_settings  # noqa: E402

WAYS = ("fp32", "bf16+fp32", "bf16")  # timed too
CUDA_WAY = "bf16>fp32"  # precision only: CUDA's product (bf16 operands, fp32 result) emulated


def cuda_like_product(hidden, weight, bias, half, exact_weight=None):
    """What precision.exact_product computes on CUDA (torch.mm with out_dtype=float32): the
    operands rounded to the half dtype, the products and the result in fp32."""
    return F.linear(hidden.to(half).float(), weight.to(half).float(), bias)


class Batch(SimpleNamespace):
    """One rollout as the update sees it: ids, mask, starts, first, scored."""


def batch_of(trainer: Trainer, ro) -> Batch:
    ids, mask, starts, first, label_turns = trainer.scoring_inputs(ro, range(len(ro.rows)))
    return Batch(ids=ids, mask=mask, starts=starts, first=first, scored=label_turns > 0)


class FrozenCopy:
    """A reference model in the shape of models.Reference: `active()` yields it."""

    def __init__(self, model):
        self.model = model

    @contextlib.contextmanager
    def active(self):
        yield self.model


def fp32_models(trainer: Trainer):
    """(policy, reference) as fp32 copies; with LoRA the reference is the copy with its adapter off."""
    policy = copy.deepcopy(trainer.model).float()
    if trainer.reference.model is None:
        return policy, models.Reference(policy, uses_lora=True)
    return policy, FrozenCopy(copy.deepcopy(trainer.reference.model).float())


def log_probs(trainer: Trainer, way: str, b: Batch, exact) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy, reference) log-probs [rows, T - first] of the batch's attempt tokens, one way."""
    dtype, switch = trainer.compute_dtype, trainer.fp32_logits
    policy, reference = exact if way == "fp32" else (trainer.model, trainer.reference)
    trainer.compute_dtype = None if way == "fp32" else dtype
    trainer.fp32_logits = way in ("bf16+fp32", CUDA_WAY)
    product = precision.exact_product
    if way == CUDA_WAY:
        precision.exact_product = cuda_like_product
    try:
        with torch.no_grad():
            logp = trainer.logprobs(policy, b.ids, b.mask, b.first, b.starts, scored=b.scored)
            with reference.active() as ref_model:
                ref = trainer.logprobs(ref_model, b.ids, b.mask, b.first, b.starts, scored=b.scored)
    finally:
        trainer.compute_dtype, trainer.fp32_logits = dtype, switch
        precision.exact_product = product
    return logp, ref


def compare(got: tuple, want: tuple, scored: torch.Tensor) -> dict:
    logp, ref = (x[scored].double() for x in got)
    true_logp, true_ref = (x[scored].double() for x in want)
    ratio, true_ratio = logp - ref, true_logp - true_ref
    rms = lambda x: float(x.square().mean().sqrt())  # noqa: E731
    corr = float(torch.corrcoef(torch.stack([ratio, true_ratio]))[0, 1]) if ratio.std() > 0 else float("nan")
    return {"logp_err_mean_abs": float((logp - true_logp).abs().mean()), "logp_err_rms": rms(logp - true_logp),
            "log_ratio_err_rms": rms(ratio - true_ratio), "log_ratio_corr": corr,
            "kl_k3": float(kl_value(logp, ref, "k3").mean()), "kl_k2": float(kl_value(logp, ref, "k2").mean())}


def timed_pass(trainer: Trainer, way: str, b: Batch, exact, device: str) -> float:
    """Seconds of the policy's log-prob pass, no gradients."""
    dtype, switch = trainer.compute_dtype, trainer.fp32_logits
    trainer.compute_dtype = None if way == "fp32" else dtype
    trainer.fp32_logits = way == "bf16+fp32"
    model = exact[0] if way == "fp32" else trainer.model
    try:
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            trainer.logprobs(model, b.ids, b.mask, b.first, b.starts, scored=b.scored)
        sync(device)
        return time.perf_counter() - start
    finally:
        trainer.compute_dtype, trainer.fp32_logits = dtype, switch


def timed_rollout(trainer: Trainer, way: str, problems, seed: int, device: str) -> tuple[float, int]:
    """(seconds, generated tokens) of one rollout as the trainer draws it, one bf16 way."""
    switch = trainer.fp32_logits
    trainer.fp32_logits = way == "bf16+fp32"
    try:
        torch.manual_seed(seed)
        sync(device)
        with autocast(trainer.device, trainer.compute_dtype, trainer.model), \
                fp32_logits(trainer.model, trainer.fp32_logits):
            ro = rollout(trainer.model, trainer.tok, trainer.task, problems, n_attempts=2,
                         samples_per_problem=trainer.cfg.rollout.samples_per_problem,
                         settings=sampling_settings(trainer.cfg), batch_size=trainer.cfg.rollout.batch_size,
                         fmt=trainer.fmt, engine=trainer.engine)
        sync(device)
        return ro.generation_seconds, ro.generated_tokens
    finally:
        trainer.fp32_logits = switch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.set_defaults(dtype="bfloat16")
    parser.add_argument("--train-steps", type=int, default=2, help="Stage I steps before measuring")
    parser.add_argument("--lr", type=float, default=0.0, help="learning rate of those steps (0 = the recipe's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per way (after one warm-up each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_step_arguments(parser)
    if args.dtype != "bfloat16":
        parser.error("--dtype: this benchmark compares bfloat16 with fp32")

    work = Path(tempfile.mkdtemp(prefix="logprob-precision-"))
    name = models.SMOLLM2_NAME if args.model == "smollm2" else save_tiny(work / "tiny-model")
    cfg = our_config(SimpleNamespace(**vars(args), engine="auto", steps=args.train_steps, full_rows=False),
                     name, work / "run")
    cfg.run.seed = args.seed
    if args.lr:
        cfg.optim.lr = args.lr
    trainer = Trainer(cfg, build_task(cfg.task.name, cfg.task.options))
    if trainer.compute_dtype is None:
        raise SystemExit("the model did not train under bf16 autocast")
    steps = [trainer.step(1) for _ in range(args.train_steps)]
    for i, m in enumerate(steps, 1):
        print(f"training step {i}: loss {m['loss']:.4f}, grad norm {m['grad_norm']:.3g}, reward_t2 "
              f"{m['reward_t2']:.3f}, kl_t1 {m['kl_t1']:.2e}, kl_t2 {m['kl_t2']:.2e}", flush=True)
    torch.manual_seed(args.seed + 1)
    ro = rollout(trainer.model, trainer.tok, trainer.task, trainer.next_problems(), n_attempts=2,
                 samples_per_problem=args.samples, settings=sampling_settings(cfg), batch_size=cfg.rollout.batch_size,
                 fmt=trainer.fmt, engine=trainer.engine)
    b = batch_of(trainer, ro)
    exact = fp32_models(trainer)
    values = {way: log_probs(trainer, way, b, exact) for way in (*WAYS, CUDA_WAY)}
    figures = {way: compare(values[way], values["fp32"], b.scored) for way in values}
    n_tokens = int(b.scored.sum())
    print(f"model {args.model}, {'LoRA' if args.lora else 'full weights'}, {len(ro.rows)} rows, {n_tokens} attempt "
          f"tokens, torch threads {torch.get_num_threads()}")
    print(f"{'way':10} {'logp err':>9} {'ratio err':>9} {'corr':>6} {'KL k3':>9} {'KL k2':>9}")
    for way, f in figures.items():
        print(f"{way:10} {f['logp_err_rms']:9.4f} {f['log_ratio_err_rms']:9.4f} {f['log_ratio_corr']:6.3f} "
              f"{f['kl_k3']:9.2e} {f['kl_k2']:9.2e}")

    seconds = {way: [] for way in WAYS}
    for turn in range(args.repeats + 1):
        for way in WAYS:
            s = timed_pass(trainer, way, b, exact, args.device)
            if turn:  # turn 0 is the warm-up
                seconds[way].append(s)
    median = {way: statistics.median(seconds[way]) for way in WAYS}
    cost = median["bf16+fp32"] / median["bf16"]
    print("policy log-prob pass: " + ", ".join(f"{w} {median[w]:.3f} s" for w in WAYS)
          + f"; fp32 logits cost {cost:.3f}x a bf16 pass", flush=True)
    problems = trainer.next_problems()
    per_token = {way: [] for way in WAYS[1:]}
    tokens = {way: [] for way in WAYS[1:]}
    for turn in range(args.repeats + 1):
        for way in WAYS[1:]:
            s, n = timed_rollout(trainer, way, problems, args.seed + 2, args.device)
            if turn:
                per_token[way].append(1000 * s / max(n, 1))
                tokens[way].append(n)
    ms = {way: statistics.median(per_token[way]) for way in per_token}
    rollout_cost = ms["bf16+fp32"] / ms["bf16"]
    print("rollout: " + ", ".join(f"{w} {ms[w]:.1f} ms per token ({tokens[w][-1]} tokens)" for w in ms)
          + f"; fp32 logits cost {rollout_cost:.3f}x per token")
    print(json.dumps({"ways": figures, "seconds": {w: round(median[w], 4) for w in WAYS},
                      "runs": {w: [round(x, 4) for x in seconds[w]] for w in WAYS},
                      "fp32_logits_cost": round(cost, 4), "attempt_tokens": n_tokens,
                      "rollout_ms_per_token": {w: round(ms[w], 3) for w in ms},
                      "rollout_tokens": tokens, "rollout_fp32_logits_cost": round(rollout_cost, 4),
                      "training_steps": [{k: m[k] for k in ("loss", "grad_norm", "reward_t2", "kl_t1", "kl_t2")} for m in steps],
                      "settings": {"model": args.model, "lora": args.lora, "device": args.device, "lr": cfg.optim.lr,
                                   "problems": args.problems, "samples": args.samples,
                                   "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                                   "train_steps": args.train_steps, "repeats": args.repeats, "seed": args.seed,
                                   "threads": torch.get_num_threads()}}))


if __name__ == "__main__":
    main()
