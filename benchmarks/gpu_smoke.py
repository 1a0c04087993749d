"""GPU smoke check and throughput figures (run by hand on a CUDA machine; never in CI).

    python benchmarks/gpu_smoke.py --model-config DIR [--out DIR]

DIR holds a causal LM's config.json and tokenizer files (weights are not needed: the model is
initialised at random, so every attempt runs to max_new_tokens and the token counts are fixed).
It trains SCoRe steps in bf16 with full weights and with LoRA, checks that the loss is finite and
the weights move, evaluates greedily, and prints per-phase times, generated tokens/s and peak
GPU memory for each variant side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch


class CoinRewardArithmetic:
    """The arithmetic task's problems and prompts with a synthetic verifier: each response's reward
    is a seeded coin flip. A random model is never right, and an all-zero reward would leave the
    weights untouched, which would hide a broken backward pass. The reward cannot read the text:
    a random model with Qwen2's 151,936 outputs and the character tokenizer's 105 tokens writes
    mostly ids that decode to nothing, so any function of the text is nearly constant."""

    def __init__(self, task, seed: int = 0):
        self.task = task
        self.name, self.correction_instruction = task.name, task.correction_instruction
        self.load, self.first_turn, self.close = task.load, task.first_turn, task.close
        self.coins = random.Random(seed)

    def score(self, problems, responses):
        from selfcorrect.tasks.base import CORRECT, WRONG_ANSWER, Verdict

        flips = [self.coins.random() < 0.5 for _ in responses]
        return [Verdict(float(win), r, CORRECT if win else WRONG_ANSWER) for win, r in zip(flips, responses)]


def run_variant(model_dir: Path, out: Path, lora: bool, steps: int, problems: int, k: int, tokens: int,
                device: str) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    from selfcorrect.config import Config
    from selfcorrect.evaluate import evaluate
    from selfcorrect.models import LoraSettings, load_tokenizer
    from selfcorrect.tasks import build_task
    from selfcorrect.train import Trainer

    torch.manual_seed(0)
    tok = load_tokenizer(str(model_dir))
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to(device)
    if lora:
        from peft import LoraConfig, get_peft_model

        s = LoraSettings()
        model = get_peft_model(model, LoraConfig(r=s.r, lora_alpha=s.alpha, target_modules=s.target_modules,
                                                 task_type="CAUSAL_LM"))
    cfg = Config()
    cfg.model.device, cfg.model.lora = device, lora
    cfg.task.name, cfg.task.options = "arithmetic", {"digits": 1, "ops": "+-*", "style": "chat"}
    cfg.rollout.samples_per_problem, cfg.rollout.max_new_tokens, cfg.rollout.batch_size = k, tokens, 256
    cfg.algo.stage1_steps = cfg.algo.stage2_steps = steps
    cfg.optim.problems_per_step, cfg.optim.micro_batch_size, cfg.optim.lr = problems, 32, 1e-5
    cfg.run.output_dir, cfg.run.progress, cfg.run.save_every = str(out / ("lora" if lora else "full")), False, 1000
    task = CoinRewardArithmetic(build_task(cfg.task.name, cfg.task.options))
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, task, model=model, tokenizer=tok)
    start = time.perf_counter()
    history = trainer.train()
    train_s = time.perf_counter() - start
    moved = sum(not torch.equal(before[n], p.detach().float()) for n, p in model.named_parameters() if p.requires_grad)
    assert all(math.isfinite(m["loss"]) for m in history), "non-finite loss"
    assert moved > 0, "no trainable parameter changed"
    start = time.perf_counter()
    result = evaluate(trainer.model, tok, task, task.load("test")[:64], attempts=2, max_new_tokens=tokens,
                      batch_size=64, bootstrap=0, progress=False)
    eval_s = time.perf_counter() - start
    phases = {key: sum(m[key] for m in history) / len(history) for key in history[0] if key.startswith("time_")}
    return {"variant": "lora" if lora else "full", "steps": len(history), "rows_per_step": problems * k,
            "train_s": round(train_s, 1), "eval_64_problems_s": round(eval_s, 1),
            "gen_tokens_per_s": round(sum(m["gen_tokens_per_s"] for m in history) / len(history)),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            "params_moved": moved, **{k2: round(v, 2) for k2, v in phases.items()},
            "eval_acc_t1": result.metrics["acc_t1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-config", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/selfcorrect-gpu"))
    parser.add_argument("--steps", type=int, default=2, help="steps per stage")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--device", default="cuda", help="cuda (the point of this check) or cpu (a dry run)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for GPU machines")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name}  torch {torch.__version__}", flush=True)
    rows = [run_variant(args.model_config, args.out, lora, args.steps, args.problems, args.k, args.tokens,
                        args.device) for lora in (False, True)]
    for row in rows:
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k != "variant"]
    print("\n| metric | full | lora | lora / full |\n|---|---|---|---|")
    for key in keys:
        a, b = rows[0][key], rows[1].get(key)
        ratio = f"{b / a:.2f}" if isinstance(a, (int, float)) and a else ""
        print(f"| {key} | {a} | {b} | {ratio} |")


if __name__ == "__main__":
    main()
