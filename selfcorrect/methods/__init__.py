"""Training methods that share one RL loop (train.py) or one SFT loop (sft.py).

SCoRe and its ablations and single-turn RL are settings of the RL loop; STaR and Pair-SFT build
supervised data from sampled two-attempt traces (methods/sft_baselines.py); Self-Refine is
prompting only and lives with evaluation (methods/self_refine.py). Every method spends the
budget of the RL settings (`sft_baselines.budget_of`) and writes the same run folder:
config.yaml, metrics.jsonl, final/ and summary.json (what it actually spent).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from ..config import Config, save_yaml

#: method name -> one line for --help and reports
DESCRIPTIONS = {
    "score": "SCoRe: Stage I then Stage II multi-turn RL (ablations: algo.stage1_steps 0, algo.alpha 0, "
             "algo.stage2 star, algo.turn1 base)",
    "single_turn": "single-turn RL: the same RL loop on attempt 1 only, evaluated with two attempts",
    "star": "STaR on D_STaR: fine-tune on sampled wrong -> right traces, 3 collect/fine-tune rounds",
    "star_plus": "STaR on D+_STaR: as star, also keeping right -> right traces",
    "pair_sft": "Pair-SFT on D_SFT: base-model wrong answers paired with random right ones",
    "pair_sft_plus": "Pair-SFT on D+_SFT: as pair_sft, also right -> right pairs",
}


def train_method(cfg: Config, task, model=None, tokenizer=None) -> dict:
    """Train cfg.algo.method on `task`; write the run folder; return summary.json's contents."""
    from .. import distributed, models
    from ..train import Trainer, _wants_cuda, check_training_config, seed_everything, start_fresh

    method = cfg.algo.method
    cfg = check_training_config(cfg.validate())
    distributed.init(cfg.distributed.timeout_s, cuda=_wants_cuda(cfg, model),
                     group_of_one=cfg.distributed.strategy == "fsdp")
    if distributed.world_size() > 1 and (method not in ("score", "single_turn") or cfg.algo.stage2 == "star"):
        raise ValueError(f"algo.method={method}" + (" with algo.stage2 star" if method == "score" else "")
                         + " runs on one process only; launch it without torchrun / accelerate")
    run_dir = Path(cfg.run.output_dir)
    start = time.perf_counter()
    if method in ("score", "single_turn"):
        rl_cfg = copy.deepcopy(cfg)
        if method == "single_turn":
            rl_cfg.rollout.attempts = 1
        if cfg.algo.stage2 == "star":
            rl_cfg.algo.stage2_steps = 0
        trainer = Trainer(rl_cfg, task, model=model, tokenizer=tokenizer)
        trainer.train()
        steps = trainer.state["step"]  # all of the run's steps: a resumed run's history holds only its own
        spent = {"episodes_sampled": steps * cfg.optim.problems_per_step * cfg.rollout.samples_per_problem,
                 "gradient_updates": steps}
        if cfg.algo.stage2 == "star" and cfg.algo.stage2_steps:
            from .sft_baselines import budget_of, run_star

            more = run_star(cfg, task, trainer.model, trainer.tok, trainer.problems, plus=True,
                            budget=budget_of(cfg, cfg.algo.stage2_steps), restart_from_base=False,
                            first_step=steps, data_position=trainer.state["data_position"])
            spent = {key: spent[key] + more[key] for key in spent}
            models.save_final(trainer.model, trainer.tok, run_dir / "final")
    else:
        from .sft_baselines import budget_of, run_pair_sft, run_star

        problems = task.load(cfg.task.train_split)  # the data first, before any model
        if not problems:
            raise ValueError(f"task {task.name!r} split {cfg.task.train_split!r} has no problems")
        if model is None:  # the model's folder, tokenizer and context window, before any file is written
            models.preflight(cfg.model, task, problems, max_new_tokens=cfg.rollout.max_new_tokens,
                             key="rollout.max_new_tokens", progress=cfg.run.progress)
        run_dir.mkdir(parents=True, exist_ok=True)
        start_fresh(run_dir, cfg.run.overwrite or cfg.run.resume)  # SFT baselines restart when resumed
        seed_everything(cfg.run.seed)  # a LoRA adapter's initial weights follow run.seed, as the trainer's do
        if model is None:
            model, tokenizer = models.load(cfg.model, training=True, progress=cfg.run.progress)
        elif cfg.model.lora:
            model = models.apply_lora(model, models.lora_settings(cfg.model))
        save_yaml(cfg, run_dir / "config.yaml")
        run = run_star if method.startswith("star") else run_pair_sft
        spent = run(cfg, task, model, tokenizer, problems, plus=method.endswith("_plus"), budget=budget_of(cfg))
        models.save_final(model, tokenizer, run_dir / "final")
        trainer = None
    summary = {"method": method, "ablation": ablation_name(cfg), **spent,
               "train_seconds": round(time.perf_counter() - start, 1), "done": True}
    distributed.on_main(lambda: (run_dir / "summary.json").write_text(json.dumps(summary, indent=1)))
    return summary


def ablation_name(cfg: Config) -> str | None:
    """Which SCoRe ablation a config is (paper Table 4), or None for full SCoRe / another method."""
    if cfg.algo.method != "score":
        return None
    a = cfg.algo
    switches = [name for name, on in (("no_stage1", a.stage1_steps == 0), ("no_shaping", a.alpha == 0),
                                      ("star_stage2", a.stage2 == "star"), ("offline_turn1", a.turn1 == "base"))
                if on]
    return "+".join(switches) or None
