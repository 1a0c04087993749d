"""STaR and Pair-SFT: the paper's supervised self-correction baselines (SCORE.md §3).

Both spend the same budget as the RL loop they are compared with (`budget_of`): as many sampled
two-attempt episodes and as many gradient updates. Each logs to the run folder's metrics.jsonl
(one line per SFT update and one per collection round) and saves `final/` like `train` does.

STaR (ReST-EM style): `sft.iterations` rounds of collect → fine-tune. A round samples traces at
the rollout temperature from the current model, keeps D_STaR (or D+_STaR, its right->right rows
capped at sft.plus_ratio per wrong->right row when set) rows, and fine-tunes
— from the base model by default (ReST-EM restarts each round), else from the last round's model;
a round that keeps no trace leaves the model as it is. Sampling follows run.seed.
Pair-SFT: one collection of base-model traces, pairs built by `traces.pair_rows`, one epoch by
default (capped by the update budget).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import cpu_linear, models
from ..config import Config
from ..engines import make_engine
from ..optim import autocast, fp32_master_weights
from ..merged_lora import merged_lora
from ..precision import fp32_logits, match_lora_base_precision
from ..rollout import ChatFormat, rollout, verify
from ..sft import sft_train
from ..train import sampling_settings, seed_everything, take_problems
from .traces import TraceRows, cap_right_to_right, pair_rows, star_rows


@dataclass
class Budget:
    """What a method may spend: gradient updates and sampled episodes (k per problem)."""

    updates: int
    episodes: int


def budget_of(cfg: Config, stage_steps: int | None = None) -> Budget:
    """The RL settings' budget: every step samples problems_per_step x k episodes and makes one
    update. stage_steps: a part of the plan only (default: Stage I + Stage II)."""
    steps = cfg.algo.stage1_steps + cfg.algo.stage2_steps if stage_steps is None else stage_steps
    return Budget(steps, steps * cfg.optim.problems_per_step * cfg.rollout.samples_per_problem)


class SftRun:
    """The shared machinery of the SFT baselines: sampling, fine-tuning, logging."""

    def __init__(self, cfg: Config, task, model, tokenizer, problems, first_step: int = 0):
        self.cfg, self.task, self.model, self.tok, self.problems = cfg, task, model, tokenizer, problems
        self.device = next(model.parameters()).device
        self.compute_dtype = fp32_master_weights(model)
        match_lora_base_precision(model, self.compute_dtype, cfg.rollout.engine)  # as SCoRe's trainer
        self.fp32_logits = cfg.model.fp32_logits and self.compute_dtype is not None  # as SCoRe's trainer
        self.onednn = cpu_linear.wanted(self.device, cfg.model.cpu_linear)  # as SCoRe's trainer
        self.onednn_rollout = cpu_linear.wanted(self.device, cfg.model.cpu_linear, "rollout")
        self.torch_only = cfg.model.cpu_linear == "torch"
        self.fmt = ChatFormat(tokenizer, model)
        self.engine = make_engine(cfg.rollout.engine, model)  # what the RL methods sample with
        if cfg.optim.gradient_checkpointing:
            models.enable_gradient_checkpointing(model)
        self.run_dir = Path(cfg.run.output_dir)
        self.log = open(self.run_dir / "metrics.jsonl", "a")
        self.position, self.updates, self.episodes = 0, 0, 0
        self.first_step = first_step  # steps logged before this run (STaR after Stage I)
        if first_step == 0:  # a run of its own: sampling follows run.seed, not whatever the process
            seed_everything(cfg.run.seed)  # drew before (STaR after Stage I continues the trainer's stream)

    def collect(self, n_problems: int):
        """Two-attempt traces sampled as SCoRe's rollouts are: n_problems x k episodes, verified."""
        cfg = self.cfg
        problems, self.position = take_problems(self.problems, cfg.run.seed, self.position, n_problems)
        settings = sampling_settings(cfg)
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.compute_dtype), fp32_logits(self.model, self.fp32_logits), \
                merged_lora(self.model, cfg.rollout.merge_lora, cfg.rollout.engine), \
                cpu_linear.onednn_linears(self.model, self.onednn_rollout, pack=True, torch_only=self.torch_only):
            ro = rollout(self.model, self.tok, self.task, problems, n_attempts=2,
                         samples_per_problem=cfg.rollout.samples_per_problem, settings=settings,
                         batch_size=cfg.rollout.batch_size, fmt=self.fmt, engine=self.engine)
        verify(self.task, ro)
        self.episodes += len(ro.rows)
        return ro

    def fine_tune(self, rows: TraceRows, steps: int, round_: int) -> None:
        """`steps` SFT updates on `rows` (none when there is nothing to learn from)."""
        if not rows.sequences or steps < 1:
            return
        s = self.cfg.sft
        # sft_train trains in training mode, in which checkpointed layers checkpoint
        with autocast(self.device, self.compute_dtype), fp32_logits(self.model, self.fp32_logits), \
                cpu_linear.onednn_linears(self.model, self.onednn):
            losses = sft_train(self.model, rows.sequences, rows.masks, lr=s.lr, steps=steps,
                               batch_size=s.batch_size, micro_batch_size=s.micro_batch_size,
                               pad_id=self.tok.pad_token_id, seed=self.cfg.run.seed + round_,
                               schedule="constant", warmup_steps=s.warmup_steps,
                               progress=self.cfg.run.progress)
        for loss in losses:
            self.updates += 1
            self.write({"step": self.first_step + self.updates, "iteration": round_, "loss": loss})

    def write(self, line: dict) -> None:
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()

    def collection_line(self, ro, rows: TraceRows, round_: int) -> dict:
        r = ro.rewards()
        return {"step": self.first_step + self.updates, "iteration": round_, "kind": "collect",
                "collected_acc_t1": float(torch.nan_to_num(r[:, 0]).mean()),
                "collected_acc_t2": float(torch.nan_to_num(r[:, 1]).mean()),
                "kept_rows": len(rows.sequences), **{f"kept_{k}": v for k, v in rows.kinds.items()}}

    def close(self) -> None:
        self.log.close()


def run_star(cfg: Config, task, model, tokenizer, problems, *, plus: bool, budget: Budget,
             restart_from_base: bool | None = None, first_step: int = 0, data_position: int = 0) -> dict:
    """STaR on D_STaR (plus=False) or D+_STaR; returns what it spent. first_step and
    data_position continue an earlier stage's step count and data order (the STaR-in-Stage-II
    ablation)."""
    s = cfg.sft
    restart = s.restart_from_base if restart_from_base is None else restart_from_base
    run = SftRun(cfg, task, model, tokenizer, problems, first_step=first_step)
    run.position = data_position
    base = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} if restart else None
    k = cfg.rollout.samples_per_problem
    try:
        for round_ in range(s.iterations):
            # split the budget evenly; the last round takes the remainder
            episodes = budget.episodes * (round_ + 1) // s.iterations - budget.episodes * round_ // s.iterations
            steps = budget.updates * (round_ + 1) // s.iterations - budget.updates * round_ // s.iterations
            ro = run.collect(max(1, episodes // k))
            rows = cap_right_to_right(star_rows(ro, plus=plus, train_attempt1=s.train_attempt1),
                                      s.plus_ratio, seed=cfg.run.seed + round_)
            run.write(run.collection_line(ro, rows, round_ + 1))
            # ReST-EM: fine-tune the base model on this round's data; a round with nothing to
            # learn keeps the last round's model rather than turning it back into the base
            if base is not None and rows.sequences and steps >= 1:
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if name in base:
                            p.copy_(base[name])
            run.fine_tune(rows, steps, round_ + 1)
    finally:
        run.close()
    return {"episodes_sampled": run.episodes, "gradient_updates": run.updates}


def run_pair_sft(cfg: Config, task, model, tokenizer, problems, *, plus: bool, budget: Budget) -> dict:
    """Pair-SFT on D_SFT (plus=False) or D+_SFT from the base model's traces."""
    run = SftRun(cfg, task, model, tokenizer, problems)
    try:
        ro = run.collect(max(1, budget.episodes // cfg.rollout.samples_per_problem))
        between = run.fmt.between_ids(task.first_turn(ro.problems[0]), task.correction_instruction)
        rows = cap_right_to_right(pair_rows(ro, between, run.fmt.join_ids, plus=plus, seed=cfg.run.seed),
                                  cfg.sft.plus_ratio, seed=cfg.run.seed)
        run.write(run.collection_line(ro, rows, 1))
        steps = min(budget.updates, math.ceil(cfg.sft.epochs * len(rows.sequences) / cfg.sft.batch_size))
        run.fine_tune(rows, steps, 1)
    finally:
        run.close()
    return {"episodes_sampled": run.episodes, "gradient_updates": run.updates}
