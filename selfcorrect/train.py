"""The SCoRe training loop: Stage I, then Stage II (optionally interleaved), owned end to end.

One optimizer step is a sequence of named, timed phases:
    rollout → verify → rewards → logprobs+loss (policy and reference, per micro-batch) → step
    → metrics → checkpoint
Reading order: `Trainer.train` (the schedule) → `Trainer.step` (one step, phase by phase).

Where this departs from the paper (SCORE.md §2): the paper's batch is 512 problems on Gemini;
here everything is per-step settings. The KL is a per-token loss term (k2 by default, whose
gradient is the unbiased KL gradient) rather than a term in the reward; the baseline is RLOO
over k samples per problem, per attempt (ICLR version).

Faults (faults.py): the run folder is locked for the trainer's life; the first SIGTERM / SIGINT
stops at the end of the current step with a checkpoint (TrainingStopped), the second at once; a
step with a non-finite loss or gradient norm is skipped, and optim.max_nonfinite_steps of them
in a row stop the run (NonFiniteTraining).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import math
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, cpu_linear, distributed, losses, models
from .atomic import write_text_atomic
from .faults import NonFiniteTraining, StopSignals, TrainingStopped, acquire_lock, release_lock
from .batches import micro_batches, token_logprobs
from .config import Config, changed_settings, flat_settings, save_yaml, to_dict
from .metrics import edit_distance_ratio, self_correction_metrics
from .optim import adamw, autocast, fp32_master_weights, lr_factor
from .fp32_attention import fp32_attention
from .precision import fp32_logits, match_lora_base_precision, match_master_precision
from .merged_lora import merged_lora
from .parallel import Replicated, generation_view
from .progress import progress
from .engines import SEEDED, UNSEEDED, make_engine
from .host_memory import freed_memory_kept, release_freed_memory
from .rollout import ChatFormat, SamplingSettings, rollout, verify
from .sampling import row_seed, text_key
from .shared_prompt import first_scored, shared_prompt_logprobs
from .tasks import FIRST_SPLIT_RULE, split_rule
from .tasks.base import Task


def stage_plan(stage1_steps: int, stage2_steps: int, rounds: int) -> list[int]:
    """The stage of every optimizer step: I then II, repeated `rounds` times with the steps of
    each stage split as evenly as possible (v1 of the paper alternates them)."""
    plan: list[int] = []
    for r in range(rounds):
        plan += [1] * (stage1_steps * (r + 1) // rounds - stage1_steps * r // rounds)
        plan += [2] * (stage2_steps * (r + 1) // rounds - stage2_steps * r // rounds)
    return plan


def attempts_at(plan: list[int], step: int, attempts: int) -> int:
    """Attempts sampled at optimizer step `step` of `plan` (stage_plan's list). Stage II and runs
    of up to two attempts sample all of them. With n > 2 attempts each Stage I block splits in
    sub-stages j = 2..n, as evenly as possible, that train attempt j with attempts 1..j-1 pinned
    and sample no attempt after j (the paper's ICLR 3-attempt variant: 1(a) trains attempt 2,
    1(b) attempt 3; SCORE.md, Other details)."""
    if plan[step] == 2 or attempts <= 2:
        return attempts
    start = step
    while start > 0 and plan[start - 1] == 1:
        start -= 1
    end = step
    while end + 1 < len(plan) and plan[end + 1] == 1:
        end += 1
    return 2 + (step - start) * (attempts - 1) // (end - start + 1)


class PhaseTimer:
    """Wall seconds per named phase of a step. On CUDA each phase waits for the GPU work it
    queued (a few synchronisations a step), so the time lands in the phase that did the work."""

    def __init__(self, device: torch.device | None = None):
        self.seconds: dict[str, float] = {}
        self.cuda = device is not None and device.type == "cuda"

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class Trainer:
    """Holds the policy, reference, optimizer and data position of one SCoRe run."""

    def __init__(self, cfg: Config, task: Task, model=None, tokenizer=None):
        self.cfg = check_training_config(cfg.validate())
        self.task = task
        # Launched by torchrun: join the process group (a no-op on one process). Every rank runs
        # this whole constructor; only rank 0 writes files (distributed.on_main).
        distributed.init(cfg.distributed.timeout_s, cuda=_wants_cuda(cfg, model),
                         group_of_one=cfg.distributed.strategy == "fsdp")
        self.world = distributed.world_size()
        self.seeding = sampling_mode(cfg, self.world)
        # the data first: a bad path or an empty split is reported before any model is loaded
        self.problems = task.load(cfg.task.train_split)
        if not self.problems:
            raise ValueError(f"task {task.name!r} split {cfg.task.train_split!r} has no problems")
        if model is None:  # the model's folder, tokenizer and context window, before any file is written
            models.preflight(cfg.model, task, self.problems, max_new_tokens=cfg.rollout.max_new_tokens,
                             key="rollout.max_new_tokens", progress=cfg.run.progress)
        self.run_dir = Path(cfg.run.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # before anything in the folder is read or deleted; released by train()'s end, by a
        # failure below, or (a Trainer never trained) when the object goes
        lock = distributed.on_main(lambda: acquire_lock(self.run_dir))  # rank 0 locks, and owns it
        self.unlock = weakref.finalize(self, release_lock, self.run_dir, lock if distributed.is_main() else None)
        try:
            self._build(cfg, model, tokenizer)
        except BaseException:
            self.unlock()
            raise

    def _build(self, cfg: Config, model, tokenizer) -> None:
        """Everything after the lock: model, reference, optimizer, and the fresh start or resume."""
        seed_everything(cfg.run.seed)
        if model is None:
            model, tokenizer = models.load(cfg.model, training=True, progress=cfg.run.progress)
        self.model, self.tok = self._match_lora(model), tokenizer
        self.device = next(self.model.parameters()).device
        from peft import PeftModel

        # derived from the model itself: a caller may pass a peft model built elsewhere. Made
        # before the upcast below, so a full-weight reference keeps its Linear weights in the
        # dtype it was given, and computes as the policy does (match_master_precision).
        self.reference = models.Reference(self.model, uses_lora=isinstance(self.model, PeftModel))
        self.compute_dtype = fp32_master_weights(self.model)  # None: plain fp32 compute
        if self.compute_dtype is not None and self.reference.model is not None:
            match_master_precision(self.reference.model)
            if cfg.algo.turn1 == "base" and cfg.rollout.engine == "paged":
                # the reference's fp32 residual stream makes fp32 keys (after RoPE) and bf16 values
                # under autocast; transformers' paged cache holds one dtype for both
                raise ValueError("algo.turn1=base samples attempt 1 from a full-weight bf16/fp16 reference, which "
                                 "the paged engine cannot run (its cache takes one dtype); use --rollout.engine "
                                 "cached or hf, or LoRA (--model.lora true)")
        match_lora_base_precision(self.model, self.compute_dtype, cfg.rollout.engine)
        self.fp32_logits = cfg.model.fp32_logits and self.compute_dtype is not None
        self.fmt = ChatFormat(tokenizer, self.model)
        self.engine = make_engine(cfg.rollout.engine, self.model)
        self.checkpoint = cfg.optim.gradient_checkpointing  # after the reference copy: it never trains
        if self.checkpoint:
            models.enable_gradient_checkpointing(self.model)
        # DDP / FSDP wrapper on several processes (the bare model on one); the optimizer comes
        # after it because FSDP replaces the parameters by their shards
        self.replicated = Replicated(self.model, cfg.distributed.strategy)
        self.share_prompts = shares_prompts(cfg, self.model, self.world)
        # FSDP's sharded parameters keep torch's kernels
        sharded = self.replicated.strategy == "fsdp"
        self.onednn = cpu_linear.wanted(self.device, cfg.model.cpu_linear) and not sharded  # the update's
        self.onednn_rollout = cpu_linear.wanted(self.device, cfg.model.cpu_linear, "rollout") and not sharded
        self.torch_only = cfg.model.cpu_linear == "torch"  # generation's output layer too (cpu_linear.py)
        if sharded:
            from .fsdp import shard_reference

            shard_reference(self.reference, self.compute_dtype)
        self.optimizer = adamw(self.model, cfg.optim.lr, cfg.optim.weight_decay)
        warm = cfg.optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, 0, warm))
        self.plan = stage_plan(cfg.algo.stage1_steps, cfg.algo.stage2_steps, cfg.algo.interleave)
        self.state = initial_state()
        self._saved_step: int | None = None  # the step of the newest checkpoint on disk
        self.history: list[dict] = []
        self.base_turn1: dict[str, list[list[int]]] = {}  # algo.turn1=base: problem id -> k attempt-1 ids
        if cfg.run.resume:
            self._resume()
        else:
            self._start_fresh()
        distributed.on_main(lambda: save_yaml(cfg, self.run_dir / "config.yaml"))

    def _match_lora(self, model):
        """Apply cfg.model.lora to a model passed in, or refuse a mismatch it cannot fix."""
        from peft import PeftModel

        is_peft = isinstance(model, PeftModel)
        if self.cfg.model.lora and not is_peft:
            return models.apply_lora(model, models.lora_settings(self.cfg.model))
        if is_peft and not self.cfg.model.lora:
            raise ValueError("the model passed in is a peft (LoRA) model but model.lora is false; "
                             "set model.lora true or pass the plain model")
        return model

    # ---------------------------------------------------------------- data order
    def next_problems(self) -> list:
        """The next problems_per_step problems of the seeded data order (the whole step's batch:
        every rank computes the same list from the same seed and position)."""
        batch, self.state["data_position"] = take_problems(
            self.problems, self.cfg.run.seed, self.state["data_position"], self.cfg.optim.problems_per_step)
        return batch

    def _row_seeds(self, positions: list[int]) -> list[int] | None:
        """Per-row sampling seeds (rollout.seeding problem): row (problem at data position pos,
        sample j) gets mix(run seed, pos, j), whichever rank generates it. None: the RNG stream."""
        if self.seeding != "problem":
            return None
        k = self.cfg.rollout.samples_per_problem
        return [row_seed(self.cfg.run.seed, pos, j) for pos in positions for j in range(k)]

    # ---------------------------------------------------------------- schedule
    def train(self) -> list[dict]:
        """Run the remaining steps of the plan; checkpoint along the way; save the final model.

        A first SIGTERM / SIGINT is honoured at the next safe point: between steps at once, else
        once the current step (and its checkpoint, when due) is done. Then the last finished
        step is checkpointed and TrainingStopped raised: the process is gone within the rest of
        one step plus one checkpoint write (the time_* metrics say how long a step takes)."""
        try:
            with StopSignals() as signals:
                self._train(signals)
            self.save_final(self.run_dir / "final")
        finally:
            self.unlock()
            if self.device.type == "cpu":  # what the updates kept goes back for what runs next
                release_freed_memory()
        return self.history

    def _train(self, signals: StopSignals) -> None:
        total = len(self.plan)
        main = distributed.is_main()  # the metrics are all-reduced: every rank has the same numbers
        bar = progress(total, "SCoRe", enabled=self.cfg.run.progress and main, initial=self.state["step"])
        last_reward = f"reward_t{self.cfg.rollout.attempts}"
        writer = tensorboard_writer(self.run_dir) if main else None
        try:
            with open(self.run_dir / "metrics.jsonl", "a") if main else contextlib.nullcontext() as log:
                while True:
                    self._stop_if_asked(signals, total)
                    if self.state["step"] >= total:
                        break
                    stage = self.plan[self.state["step"]]
                    metrics = self.step(stage)
                    self.state["step"] += 1
                    metrics["step"] = self.state["step"]
                    self.history.append(metrics)
                    if log is not None:
                        log.write(json.dumps(metrics) + "\n")
                        log.flush()
                    if writer is not None:
                        for key, value in metrics.items():
                            if isinstance(value, (int, float)):
                                writer.add_scalar(key, value, metrics["step"])
                    reward = metrics.get(last_reward)  # absent in a Stage I sub-stage before the last attempt
                    if reward is not None and (self.state["best_reward"] is None or reward > self.state["best_reward"]):
                        self.state["best_reward"] = reward
                    if reward is not None and self.cfg.run.keep_best:
                        self._keep_if_best(reward)
                    if self.state["step"] % self.cfg.run.save_every == 0 or self.state["step"] == total:
                        self.save_checkpoint()
                    self._stop_on_nonfinite_streak()
                    bar.update(1)
                    bar.set_postfix(stage=stage, **{f"acc{a}": f"{metrics[f'acc_t{a}']:.2f}"
                                                    for a in range(1, min(2, self.cfg.rollout.attempts) + 1)},
                                    loss=f"{metrics['loss']:.3f}")
        finally:
            bar.close()
            if writer is not None:
                writer.close()

    def _keep_if_best(self, reward: float) -> None:
        """Save best/ when the mean last-attempt training reward of the last run.keep_best steps
        (a full window only) beats every earlier window. The window lives in the checkpointed
        state, so a resumed run selects as an uninterrupted one would (a kill between best/ and
        the next checkpoint replays the same steps and writes the same best/ again)."""
        window = self.cfg.run.keep_best
        recent = (self.state.get("recent_rewards", []) + [reward])[-window:]
        self.state["recent_rewards"] = recent
        if len(recent) < window:
            return
        mean = sum(recent) / window
        best = self.state.get("best_window_reward")
        if best is not None and mean <= best:
            return
        self.state["best_window_reward"] = mean
        self.save_final(self.run_dir / "best")
        selection = {"step": self.state["step"], "mean_reward": mean, "window": window,
                     "reward": f"reward_t{self.cfg.rollout.attempts}"}
        distributed.on_main(lambda: write_text_atomic(self.run_dir / "best.json", json.dumps(selection, indent=1)))

    def _stop_if_asked(self, signals: StopSignals, total: int) -> None:
        """A safe point: if any rank got a stop signal, every rank checkpoints the last finished
        step (unless it is on disk already) and raises TrainingStopped. The request is
        all-reduced so that all ranks stop at the same step (a collective per step)."""
        if not distributed.all_reduce_max(float(signals.received is not None)):
            return
        folder = None
        if self._saved_step != self.state["step"]:
            folder = self.save_checkpoint()
        elif distributed.is_main():
            folder = checkpoint.latest(self.run_dir)
        raise TrainingStopped(signals.received or "a signal (on another rank)", self.state["step"], total, folder)

    def _stop_on_nonfinite_streak(self) -> None:
        limit = self.cfg.optim.max_nonfinite_steps
        if self.state["nonfinite_streak"] >= limit:
            raise NonFiniteTraining(
                f"{limit} steps in a row had a NaN/inf loss or gradient norm (steps "
                f"{self.state['step'] - limit + 1}-{self.state['step']}, all skipped); stopping. The last "
                f"checkpoint holds finite weights; try a lower optim.lr, optim.max_grad_norm > 0, or fp32 "
                f"(model.dtype)")

    def save_final(self, folder: Path) -> None:
        """The final model, written by rank 0; the others wait until it is complete. Non-finite
        weights are refused (the optimizer never applies a non-finite step, so this is a bug guard)."""
        bad = checkpoint.nonfinite_tensors(dict(self.model.named_parameters()))
        if bad:
            raise NonFiniteTraining(f"not saving the final model: NaN/inf in {bad[:3]}")
        if self.replicated.strategy == "fsdp":
            from .fsdp import save_final_sharded

            save_final_sharded(self.replicated, self.tok, folder)
        else:
            distributed.on_main(lambda: models.save_final(self.model, self.tok, folder))

    # ---------------------------------------------------------------- one step
    def step(self, stage: int) -> dict:
        cfg, timer = self.cfg, PhaseTimer(self.device)
        first = self.state["data_position"]
        batch = self.next_problems()
        # this rank's contiguous block of the step's problems, with all k samples of each, so the
        # RLOO baselines below need nothing from other ranks
        lo, hi = distributed.shard_bounds(len(batch))
        problems = batch[lo:hi]
        seeds = self._row_seeds(list(range(first + lo, first + hi)))
        n_att = attempts_at(self.plan, self.state["step"], cfg.rollout.attempts)
        # eval mode throughout: dropout (LoRA's or the base model's) would make the trained
        # log-probs those of another policy than the one that sampled, and the reference random
        self.model.eval()
        with timer("rollout"):
            ro = self.draw(problems, n_att, seeds)
        with timer("verify"):
            verify(self.task, ro)
        with timer("rewards"):
            r, has, adv, valid = self.advantages(ro, stage)
        with timer("logprobs_loss"):
            loss_value, stats = self._accumulate_gradients(ro, adv, valid, stage)
        with timer("step"):
            self._step_loss = loss_value  # read by _optimizer_step (its signature is patched in tests)
            grad_norm = self._optimizer_step()
            skipped = self._step_skipped
        with timer("metrics"):
            metrics = self._metrics(ro, r, stage, loss_value, stats, grad_norm, has, valid)
            metrics["skipped_nonfinite"] = int(skipped)
            metrics["skipped_nonfinite_steps"] = self.state["skipped_nonfinite_steps"]
        times = {f"time_{name}": s for name, s in timer.seconds.items()}
        # the step takes as long as its slowest rank
        metrics.update({key: round(s, 4) for key, s in distributed.all_reduce_sums(times, op="max").items()})
        return metrics

    def draw(self, problems: list, n_attempts: int, row_seeds: list[int] | None = None):
        """One rollout of `problems` (k samples each) as the policy samples in training: under the
        run's autocast, with fp32 logits, for LoRA the adapters folded into their weights, and on
        a CPU the linears' weights packed for oneDNN where model.cpu_linear says so."""
        cfg, sampling = self.cfg, sampling_settings(self.cfg)
        with autocast(self.device, self.compute_dtype, self.model):
            given = self._base_first_attempts(problems, sampling) if cfg.algo.turn1 == "base" else None
            with self.replicated.generation() as policy, fp32_logits(policy, self.fp32_logits), \
                    merged_lora(policy, cfg.rollout.merge_lora, cfg.rollout.engine), \
                    cpu_linear.onednn_linears(policy, self.onednn_rollout, pack=True, torch_only=self.torch_only):
                ro = rollout(policy, self.tok, self.task, problems, n_attempts=n_attempts,
                             samples_per_problem=cfg.rollout.samples_per_problem, settings=sampling,
                             batch_size=cfg.rollout.batch_size, fmt=self.fmt, first_attempts=given,
                             row_seeds=row_seeds, engine=self.engine)
        if given is not None:  # fixed base-model samples are context here: never trained, no KL
            ro.turns = [[0 if t == 1 else t for t in turns] for turns in ro.turns]
        return ro

    def advantages(self, ro, stage: int) -> tuple[torch.Tensor, ...]:
        """(r, has_reward, advantages, valid), each [B, n]: the verifier's rewards, the stage's
        shaped rewards' RLOO advantages over each problem's k samples, and where they exist."""
        k, n_att = self.cfg.rollout.samples_per_problem, ro.n_attempts
        r = ro.rewards()
        rewards, has = losses.stage_rewards(r, stage, self.cfg.algo.alpha)
        n_problems = len(ro.rows) // k
        strata = losses.previous_attempt_strata(r) if self.cfg.algo.baseline == "previous" else None
        adv, valid = losses.rloo_advantages(rewards.view(n_problems, k, n_att), has.view(n_problems, k, n_att),
                                            None if strata is None else strata.view(n_problems, k, n_att))
        return r, has, adv.view(-1, n_att), valid.view(-1, n_att)

    def _accumulate_gradients(self, ro, adv, valid, stage) -> tuple[float, dict]:
        """Log-probs, loss and backward per micro-batch; returns the step's global loss and stats.

        The maths on N ranks (one process is N = 1, where every collective is the identity):
        the step's loss is L = Σ_ranks Σ_tokens ℓ / D with D the GLOBAL denominator (attempt
        tokens, or (row, attempt) means, of all ranks: an all-reduce of the local counts). Rank r
        back-propagates N · L_r, L_r = its tokens' Σ ℓ / D; DDP / FSDP average the ranks'
        gradients, so every rank ends with (1/N) Σ_r N ∇L_r = ∇L: exactly the gradient one
        process computes on the concatenated batch, whatever the shard sizes."""
        cfg = self.cfg
        order = update_order(ro, by_problem=self.share_prompts)
        if cfg.algo.reduction == "token":
            denominator = float(sum(sum(1 for t in turns[1:] if t > 0) for turns in ro.turns))
        else:  # one mean per (row, attempt) that has tokens
            denominator = float(sum(len({t for t in turns[1:] if t > 0}) for turns in ro.turns))
        denominator = distributed.all_reduce_sums({"d": denominator})["d"]
        chunks = micro_batches(order, [len(row) for row in ro.rows], cfg.optim.micro_batch_size,
                               cfg.optim.micro_batch_tokens)
        # every rank runs the same number of forward/backward passes (the wrapper's collectives
        # must match): ranks with fewer micro-batches add zero-weight dummy ones
        n_passes = int(distributed.all_reduce_max(len(chunks)))
        total, parts = 0.0, []
        # freed memory kept in malloc's heap for the update only (host_memory.py: outside it, work
        # of other shapes would fragment a heap that never shrinks)
        with freed_memory_kept(self.device.type == "cpu"):
            for i in range(n_passes):
                with self.replicated.accumulate(sync=i == n_passes - 1):
                    if i >= len(chunks):
                        self._dummy_pass()
                        continue
                    loss_value, part = self._micro_batch(ro, chunks[i], adv, valid, stage, denominator)
                    total += loss_value
                    parts.append(part)
        if self.world > 1:  # the step's statistics are sums: add every rank's micro-batches
            parts = [part for rank_parts in distributed.gather_objects(parts) for part in rank_parts]
            total = distributed.all_reduce_sums({"loss": total})["loss"]
        return total, losses.combine_stats(parts)

    def _micro_batch(self, ro, rows, adv, valid, stage, denominator: float) -> tuple[float, dict]:
        """Reference and policy log-probs of `rows`, their loss over the step's global
        `denominator`, and its backward; returns the loss value and the micro-batch's stats."""
        cfg = self.cfg
        ids, mask, starts, first, label_turns = self.scoring_inputs(ro, rows)
        scored = label_turns > 0  # only attempt tokens get logits: the loss reads no others
        with torch.inference_mode(), self.reference.active() as ref_model:
            ref_logp = self.logprobs(ref_model, ids, mask, first, starts, scored=scored)
        ref_logp = ref_logp.clone()  # an inference tensor cannot enter the autograd graph
        logp = self.logprobs(self.replicated.train_model, ids, mask, first, starts, scored=scored)
        tok_adv, pg_mask = losses.token_advantages(adv[rows].to(self.device), valid[rows].to(self.device),
                                                   label_turns)
        kl_coef = losses.turn_kl_coefficients(label_turns, stage, cfg.algo.beta1, cfg.algo.beta2)
        loss, stats = losses.policy_loss(logp, ref_logp, tok_adv, pg_mask, kl_coef, label_turns,
                                         estimator=cfg.algo.kl_estimator, reduction=cfg.algo.reduction,
                                         denominator=max(denominator, 1.0))
        self._backward(loss * self.replicated.grad_scale if self.world > 1 else loss)
        gap = engine_gap(logp.detach(), ro.engine_logprobs(rows, ids.shape[1])[:, first:])
        return float(loss.detach()), {**stats, **gap}

    def scoring_inputs(self, ro, rows) -> tuple:
        """What a log-prob pass over `rows` of rollout `ro` reads: ids, mask [b, T]; starts [b]
        (each row's first attempt token: its prompt ends there); first = min(starts); the turn of
        each position from `first` on, label_turns [b, T - first] (0 on context and padding)."""
        ids, mask, turns = ro.tensors(rows, self.tok.pad_token_id, self.device)
        starts = first_scored(turns, mask.sum(dim=1))
        first = int(starts.min())
        return ids, mask, starts, first, turns[:, first:]

    def attempt_logprobs(self, ro) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's log-probs of every attempt token of `ro` as the update computes them (no
        gradients), and the engine's: two flat fp32 tensors, the engine's NaN where it kept none."""
        rows = range(len(ro.rows))
        ids, mask, starts, first, label_turns = self.scoring_inputs(ro, rows)
        scored = label_turns > 0
        with torch.no_grad():
            logp = self.logprobs(self.model, ids, mask, first, starts, scored=scored)
        scored = scored.cpu()
        return logp.float().cpu()[scored], ro.engine_logprobs(rows, ids.shape[1])[:, first:][scored]

    def _backward(self, loss: torch.Tensor) -> None:
        """loss.backward() with attention as the forward computed it: gradient checkpointing
        recomputes the forward here, and on a CPU that forward's attention ran in fp32
        (fp32_attention.py, entered by the log-prob passes' autocast) and the linears' kernels
        (cpu_linear.py)."""
        with fp32_attention(self.device), cpu_linear.onednn_linears(self.model, self.onednn):
            loss.backward()

    def _dummy_pass(self) -> None:
        """A zero-weight micro-batch: the reference and policy forwards and a backward of 0 · Σ logp,
        so this rank joins the gradient collective while adding exactly zero to every gradient."""
        ids = torch.tensor([[self.tok.eos_token_id] * 2], device=self.device)
        mask = torch.ones_like(ids)
        with torch.no_grad(), self.reference.active() as ref_model:
            self.logprobs(ref_model, ids, mask, 1)
        self._backward(self.logprobs(self.replicated.train_model, ids, mask, 1).sum() * 0.0)

    def _base_first_attempts(self, problems, sampling) -> list[list[int]]:
        """Attempt-1 ids per row drawn from the base (reference) model, sampled once per problem
        and reused when a problem comes back (kept in memory: a resumed run draws new ones)."""
        k = self.cfg.rollout.samples_per_problem
        missing = list({p.id: p for p in problems if p.id not in self.base_turn1}.values())
        # seeded by problem id, not position: a problem seen again on another rank draws the same
        seeds = (None if self.seeding != "problem" else
                 [row_seed(self.cfg.run.seed, text_key(p.id), j, 1 << 20) for p in missing for j in range(k)])
        # every rank enters (an FSDP reference is gathered: a collective), even with nothing to draw
        with self.reference.active() as base, generation_view(base), \
                cpu_linear.onednn_linears(base, self.onednn_rollout, pack=True, torch_only=self.torch_only):
            if missing:
                ro = rollout(base, self.tok, self.task, missing, n_attempts=1, samples_per_problem=k,
                             settings=sampling, batch_size=self.cfg.rollout.batch_size, fmt=self.fmt,
                             row_seeds=seeds, engine=self.engine)
                for j, p in enumerate(missing):
                    self.base_turn1[p.id] = [ro.attempts[j * k + s][0] for s in range(k)]
        return [ids for p in problems for ids in self.base_turn1[p.id]]

    def logprobs(self, model, ids, mask, first, starts=None, scored=None) -> torch.Tensor:
        """Log-probs of the sampled tokens under `model` at the rollout temperature, in the
        autocast dtype when the weights are fp32 masters of a half-precision model (the output
        layer in fp32 unless --model.fp32_logits false: precision.py). With `starts`
        (each row's prompt length) and prompt sharing on, each distinct prompt is run once.
        scored [b, T - first] bool: the only tokens that get logits (the rest read 0)."""
        temperature = self.cfg.rollout.temperature
        with autocast(self.device, self.compute_dtype, self.model), fp32_logits(model, self.fp32_logits), \
                models.checkpointing(model, self.checkpoint), cpu_linear.onednn_linears(model, self.onednn):
            if starts is not None and self.share_prompts:
                return shared_prompt_logprobs(model, ids, mask, starts, first, temperature=temperature, scored=scored)
            return token_logprobs(model, ids, mask, first, temperature=temperature, scored=scored)

    def _optimizer_step(self) -> float:
        """Clip and apply the step's gradients, unless the loss or the gradient norm is NaN/inf:
        then the gradients are dropped, neither the optimizer nor the schedule moves, and the
        step counts as skipped (self._step_skipped). Returns the gradient norm. Both numbers are global (the
        loss all-reduced, the gradients averaged), so every rank makes the same decision."""
        # the gradients are the global ones on every rank, so every rank makes the same update
        norm = self.replicated.clip_grad_norm(self.cfg.optim.max_grad_norm)
        skipped = not (math.isfinite(self._step_loss) and math.isfinite(norm))
        if not skipped:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["nonfinite_streak"] = self.state["nonfinite_streak"] + 1 if skipped else 0
        self.state["skipped_nonfinite_steps"] += int(skipped)
        self._step_skipped = skipped
        return norm

    def _metrics(self, ro, r, stage, loss_value, stats, grad_norm, has, valid) -> dict:
        """The step's metrics over the whole batch: every rank's rows are gathered (in rank order,
        which is the batch order), so every rank computes the same numbers, and they are those one
        process would compute on the concatenated batch."""
        n_att = ro.n_attempts
        mine = {"r": r.tolist(), "len": [[len(a) for a in x] for x in ro.attempts], "truncated": ro.truncated,
                "no_baseline": int((has & ~valid).sum()), "tokens": ro.generated_tokens,
                "seconds": ro.generation_seconds,
                # characters, as in evaluation; computed where the texts are
                "edit": [edit_distance_ratio(x[0], x[1]) for x in ro.texts] if n_att > 1 else []}
        ranks = distributed.gather_objects(mine)
        r = torch.tensor([row for part in ranks for row in part["r"]], dtype=torch.float32)
        lengths = [row for part in ranks for row in part["len"]]
        truncated = [row for part in ranks for row in part["truncated"]]
        m = {"stage": stage, "attempts": n_att, "loss": loss_value, "grad_norm": grad_norm,
             "lr": self.scheduler.get_last_lr()[0]}
        for a in range(n_att):
            col = r[:, a]
            m[f"reward_t{a + 1}"] = float(torch.nan_to_num(col, nan=0.0).mean())
            m[f"len_t{a + 1}"] = float(np.mean([x[a] for x in lengths]))
            m[f"truncated_t{a + 1}"] = float(np.mean([x[a] for x in truncated]))
        m.update({key: value for key, value in self_correction_metrics(r.numpy()).items()
                  if key.startswith(("acc", "delta"))})
        # attempts the verifier failed on (reward None): excluded from baselines and the loss
        m["none_rewards"] = int(torch.isnan(r).sum())
        # rewarded attempts left without a baseline (no other rewarded sample of the problem)
        m["no_baseline_attempts"] = sum(part["no_baseline"] for part in ranks)
        if n_att > 1:
            m["edit_ratio"] = float(np.mean([e for part in ranks for e in part["edit"]]))
        m.update({k: v for k, v in stats.items() if not k.startswith(("kl_sum_t", "n_tokens_t", "engine_gap_"))})
        if stats.get("engine_gap_n"):  # how far the sampler's log-probs are from the trained ones
            m["engine_logprob_gap"] = stats["engine_gap_sum"] / stats["engine_gap_n"]
            m["engine_logprob_gap_max"] = stats["engine_gap_max"]
        # all ranks' tokens over the slowest rank's generation time
        m["gen_tokens_per_s"] = (sum(part["tokens"] for part in ranks)
                                 / max(max(part["seconds"] for part in ranks), 1e-9))
        return m

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Rank 0 writes the checkpoint (the model and optimizer are the same on every rank; each
        rank's RNG state is kept); the others wait until it is complete, so none can read a
        half-written one."""
        state = dict(self.state, plan=self.plan, world_size=self.world, settings=training_settings(self.cfg))
        rngs = distributed.gather_objects(checkpoint.rng_state()) if self.world > 1 else None
        full = {}
        if self.replicated.strategy == "fsdp":
            from .fsdp import full_state

            full = full_state(self.replicated, self.optimizer)  # a collective: all ranks take part
        folder = distributed.on_main(lambda: checkpoint.save(
            self.run_dir, self.state["step"], self.model, self.optimizer, self.scheduler, state,
            self.cfg.run.keep_checkpoints, rng_by_rank=rngs, **full))
        self._saved_step = self.state["step"]
        return folder

    def _start_fresh(self) -> None:
        distributed.on_main(lambda: (checkpoint.tidy(self.run_dir), start_fresh(self.run_dir, self.cfg.run.overwrite)))

    def _resume(self) -> None:
        distributed.on_main(lambda: checkpoint.tidy(self.run_dir))  # what a killed run left behind
        folder = checkpoint.latest(self.run_dir)
        if folder is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        saved_world = checkpoint.read_state(folder).get("world_size", 1)
        if saved_world != self.world:
            raise ValueError(f"--resume: {folder} was written by a run on {saved_world} process(es) and this "
                             f"launch has {self.world}; resume with the same number of processes "
                             f"(torchrun --nnodes x --nproc_per_node = {saved_world})")
        restore = None
        if self.replicated.strategy == "fsdp":
            from .fsdp import restore_full_state

            def restore(weights, optim_state):  # full tensors into this rank's shards
                restore_full_state(self.replicated, self.optimizer, weights, optim_state)
        state = checkpoint.load(folder, self.model, self.optimizer, self.scheduler, rank=distributed.rank(),
                                restore=restore)
        state.pop("world_size", None)
        refuse_changed_settings(folder, state.pop("settings", None), self.cfg)
        if state.pop("plan") != self.plan:
            raise ValueError(f"--resume: {folder} was made with another stage plan "
                             "(algo.stage1_steps / stage2_steps / interleave changed)")
        self.state = {**initial_state(), **state}  # checkpoints from before a key existed
        self._saved_step = state["step"]
        distributed.on_main(lambda: drop_metrics_after(self.run_dir / "metrics.jsonl", state["step"]))


def sampling_settings(cfg: Config) -> SamplingSettings:
    """How training rollouts sample: at the rollout temperature and nucleus, up to max_new_tokens."""
    r = cfg.rollout
    return SamplingSettings(greedy=False, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens)


def shares_prompts(cfg: Config, model, world: int) -> bool:
    """Whether the update runs each distinct prompt once (shared_prompt.py): asked for, one
    process (a DDP / FSDP wrapper wants one forward per backward), no gradient checkpointing
    (which turns the cache off) and full attention in every layer (as the cached engine needs)."""
    from .engines.cached import supports

    return cfg.optim.share_prompt and world == 1 and not cfg.optim.gradient_checkpointing and supports(model)


def update_order(ro, by_problem: bool) -> list[int]:
    """The order rows go into micro-batches: by length (similar lengths pad less) or, when
    prompts are shared, problem by problem (the rows of a problem share one prompt pass),
    problems by their longest row."""
    lengths = [len(row) for row in ro.rows]
    if not by_problem:
        return sorted(range(len(lengths)), key=lambda i: lengths[i])
    longest: dict[int, int] = {}
    for i, p in enumerate(ro.problem_index):
        longest[p] = max(longest.get(p, 0), lengths[i])
    return sorted(range(len(lengths)), key=lambda i: (longest[ro.problem_index[i]], ro.problem_index[i], lengths[i]))


def engine_gap(logp: torch.Tensor, engine_logp: torch.Tensor) -> dict[str, float]:
    """Sums for the mean |log π_train − log π_engine| over generated tokens the engine scored.
    logp, engine_logp: [b, T'] aligned (NaN in engine_logp where it has no value). A gap well
    above numerical noise means the sampler is not sampling from the policy being trained
    (precision, a stale cache, different kernels): the policy gradient is then off-policy."""
    known = ~torch.isnan(engine_logp)
    gap = (logp.float().cpu() - engine_logp)[known].abs()
    return {"engine_gap_sum": float(gap.sum()), "engine_gap_n": float(gap.numel()),
            "engine_gap_max": float(gap.max()) if gap.numel() else 0.0}


def initial_state() -> dict:
    """The trainer state a fresh run starts from (checkpointed as state.json)."""
    return {"step": 0, "data_position": 0, "best_reward": None, "nonfinite_streak": 0, "skipped_nonfinite_steps": 0}


def metrics_step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line cut short by a kill."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def drop_metrics_after(log: Path, step: int) -> None:
    """Metrics logged after the resumed checkpoint by the interrupted run would be repeated: drop
    them, and a last line a kill cut short. Replaced atomically: a kill now cannot truncate it."""
    if log.exists():
        kept = [line for line in log.read_text().splitlines()
                if line.strip() and metrics_step(line) is not None and metrics_step(line) <= step]
        write_text_atomic(log, "".join(line + "\n" for line in kept))


# settings a resumed run may change: where and how it runs and reports, not what it computes
# (micro-batches and generation batches split the same sums; evaluation comes after training)
RESUME_MAY_CHANGE = ("run.output_dir", "run.save_every", "run.keep_checkpoints", "run.keep_best", "run.resume",
                     "run.overwrite", "run.progress", "eval.", "distributed.", "model.device", "optim.micro_batch_size",
                     "rollout.batch_size")


def training_settings(cfg: Config) -> dict:
    """{'section.key': value} of what a run computes (RESUME_MAY_CHANGE left out), as a
    checkpoint records it; task options stay one dict value; and the task's split rule where a
    built-in task's has changed (tasks.split_rule)."""
    settings = {key: value for key, value in flat_settings(to_dict(cfg)).items()
                if not key.startswith(RESUME_MAY_CHANGE)}
    rule = split_rule(cfg.task.name)
    if rule is not None:
        settings["task.split_rule"] = rule
    return settings


def refuse_changed_settings(folder: Path, saved: dict | None, cfg: Config) -> None:
    """Raise when `cfg` would resume checkpoint `folder`, made with training settings `saved`,
    with other ones (task, data, model, seed, sampling, algorithm, optimizer): the steps after
    it would silently follow another recipe than the steps before. Checkpoints from before the
    settings were recorded (None) are not checked."""
    if saved is None:
        return
    new = json.loads(json.dumps(training_settings(cfg)))  # as the checkpoint's JSON holds it (lists, not tuples)
    if "task.split_rule" in new and "task.split_rule" not in saved:
        saved = dict(saved, **{"task.split_rule": FIRST_SPLIT_RULE})  # recorded before any rule changed
    changed = [f"{key}: {was!r} -> {now!r}" for key, was, now in sorted(changed_settings(saved, new))]
    if changed:
        raise ValueError(f"--resume: {folder} was trained with other settings ({'; '.join(changed[:4])}"
                         f"{'; ...' if len(changed) > 4 else ''}); resume with the run's own settings "
                         f"(its config.yaml), or start a new run in another --output")


def existing_run(run_dir: Path) -> list[Path]:
    """What of a training run `run_dir` already holds (checkpoints, metrics.jsonl, summary.json, best/)."""
    return [p for p in (run_dir / "checkpoints", run_dir / "metrics.jsonl", run_dir / "summary.json",
                        run_dir / "best", run_dir / "best.json") if p.exists()]


def start_fresh(run_dir: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one in `run_dir` unless asked to replace it."""
    old = existing_run(run_dir)
    if old and not overwrite:
        raise FileExistsError(f"{run_dir} already holds a run ({', '.join(p.name for p in old)}); "
                              "pass --run.resume true to continue it, --run.overwrite true to replace it, "
                              "or choose another --run.output_dir")
    for path in old:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def take_problems(problems: list, seed: int, position: int, count: int) -> tuple[list, int]:
    """`count` problems from `position` of a seeded order that reshuffles every epoch (a fresh
    permutation per pass, so position alone says where a resumed run continues).
    Returns (problems, new position)."""
    n, batch = len(problems), []
    for pos in range(position, position + count):
        epoch, i = divmod(pos, n)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        batch.append(problems[order[i]])
    return batch, position + count


def sampling_mode(cfg: Config, world: int) -> str:
    """'stream' or 'problem' (rollout.seeding; see sampling.py)."""
    if cfg.optim.problems_per_step < world:
        raise ValueError(f"optim.problems_per_step={cfg.optim.problems_per_step} is the whole step's batch, split "
                         f"over {world} processes: it must be at least the number of processes")
    mode = cfg.rollout.seeding
    if mode == "auto":
        mode = "problem" if world > 1 else "stream"
    if mode == "stream" and world > 1:
        raise ValueError("rollout.seeding stream cannot be used on several processes (each rank's stream would "
                         "make the samples depend on the world size); use problem or auto")
    if mode == "problem" and cfg.rollout.engine in UNSEEDED:
        raise ValueError(f"rollout.engine {cfg.rollout.engine} cannot seed rows one by one, which rollout.seeding "
                         f"problem (the default on several processes) needs; use another engine "
                         f"({', '.join(SEEDED)}), or rollout.seeding stream on one process")
    return mode


def _wants_cuda(cfg: Config, model) -> bool:
    """Whether this run's model lives on a GPU (chooses NCCL over gloo)."""
    if model is not None:
        return next(model.parameters()).device.type == "cuda"
    return models.pick_device(cfg.model.device).type == "cuda"


def check_training_config(cfg: Config) -> Config:
    """Settings that are fine for evaluation but wrong for training."""
    if cfg.rollout.top_p < 1.0:
        raise ValueError(f"rollout.top_p={cfg.rollout.top_p}: training samples must come from the full "
                         "softmax(z / T) that the log-probs and the KL assume; use top_p 1.0")
    if cfg.algo.method != "score" and (cfg.algo.turn1 != "policy" or cfg.algo.stage2 != "rl"):
        raise ValueError(f"algo.turn1 / algo.stage2 are ablations of SCoRe; algo.method={cfg.algo.method!r} "
                         "takes neither")
    if cfg.algo.turn1 == "base" and cfg.rollout.attempts < 2:
        raise ValueError("algo.turn1=base (attempt 1 from the base model) needs rollout.attempts >= 2")
    return cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tensorboard_writer(run_dir: Path):
    """A SummaryWriter when tensorboard is installed, else None (metrics.jsonl is always written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))

