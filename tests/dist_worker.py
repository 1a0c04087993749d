"""One rank of the data-parallel tests (tests/test_distributed.py starts two of these).

    python tests/dist_worker.py SCENARIO OUT_DIR      (under torchrun, or with its variables set)

Each scenario trains or evaluates the tiny model and writes what the test compares to
OUT_DIR/rank{r}.pt. The same configs are imported by the test to make the one-process runs.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import torch

from selfcorrect import distributed
from selfcorrect.config import Config
from selfcorrect.train import Trainer
from tiny import EchoTask, tiny_model, tiny_tokenizer

# prompt lengths 1 .. 240 characters: micro-batches of one row differ a lot in length, and the
# ranks get different numbers of rows (3 problems over 2 ranks: 1 and 2)
LENGTHS = [1, 240, 7, 120, 3, 60]


class UnevenTask(EchoTask):
    """EchoTask with prompts of very different lengths."""

    def __init__(self):
        super().__init__(len(LENGTHS), answer="aeiou0123456789")
        self.items = [replace(problem, question="x" * n) for problem, n in zip(self.items, LENGTHS)]


def dist_config(out: Path, **changes) -> Config:
    """The tiny training config of every scenario; `changes`: {"section.field": value}."""
    cfg = Config()
    cfg.run.output_dir = str(out)
    cfg.run.progress = False
    cfg.run.save_every = 1
    cfg.run.keep_checkpoints = 10
    cfg.model.device = "cpu"
    cfg.rollout.max_new_tokens = 5
    cfg.rollout.samples_per_problem = 2
    cfg.rollout.seeding = "problem"  # one process then draws exactly the rows the ranks draw
    cfg.optim.problems_per_step = 3
    cfg.optim.micro_batch_size = 1
    # ranks always run full rows (one forward per backward); so does the one-process run they are
    # compared with, or float rounding of the shared prompt pass would be amplified by Adam at lr 1e-2
    cfg.optim.share_prompt = False
    cfg.optim.lr = 1e-2
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 1
    cfg.distributed.timeout_s = 60
    for key, value in changes.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def make_trainer(cfg: Config, lora: bool = False, dtype: torch.dtype = torch.float32) -> Trainer:
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=0).to(dtype)
    if lora:
        from peft import LoraConfig, get_peft_model

        cfg.model.lora = True
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    return Trainer(cfg, UnevenTask(), model=model, tokenizer=tok)


class Recording(Trainer):
    """A Trainer that keeps, per step, the problem ids this rank rolled out and its parameters."""

    def __init__(self, *args, **kwargs):
        self.seen: list[list[str]] = []
        self.params: list[dict] = []
        super().__init__(*args, **kwargs)

    def step(self, stage):
        import selfcorrect.train as train_module

        original = train_module.rollout

        def spy(model, tok, task, problems, **kw):
            self.seen.append([p.id for p in problems])
            return original(model, tok, task, problems, **kw)

        train_module.rollout = spy
        try:
            metrics = super().step(stage)
        finally:
            train_module.rollout = original
        self.params.append(trainable(self.model))
        return metrics


def trainable(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def scenario_step(out: Path) -> dict:
    """Two steps (Stage I, Stage II), a LoRA step, and a sharded evaluation."""
    from selfcorrect.evaluate import evaluate

    tok = tiny_tokenizer()
    trainer = Recording(dist_config(out / "full"), UnevenTask(), model=tiny_model(tok, seed=0), tokenizer=tok)
    history = trainer.train()
    lora = make_trainer(dist_config(out / "lora", **{"algo.stage2_steps": 0}), lora=True)
    lora_history = lora.train()
    result = evaluate(trainer.model, tok, UnevenTask(), UnevenTask().items, attempts=2, max_new_tokens=5,
                      batch_size=2, bootstrap=50, progress=False)
    return {"history": history, "seen": trainer.seen, "params": trainer.params,
            "lora_history": lora_history, "lora_params": trainable(lora.model),
            "eval": {"metrics": result.metrics, "intervals": result.intervals, "records": result.records}}


class KilledAt(Trainer):
    """Rank 1 dies (SIGKILL, no cleanup) when it starts step `at` + 1."""

    at = 2

    def step(self, stage):
        if distributed.rank() == 1 and self.state["step"] == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(stage)


def scenario_crash(out: Path) -> dict:
    cfg = dist_config(out / "run", **{"algo.stage1_steps": 2, "algo.stage2_steps": 2})
    tok = tiny_tokenizer()
    KilledAt(cfg, UnevenTask(), model=tiny_model(tok, seed=0), tokenizer=tok).train()
    return {}


def scenario_resume(out: Path) -> dict:
    cfg = dist_config(out / "run", **{"algo.stage1_steps": 2, "algo.stage2_steps": 2, "run.resume": True})
    trainer = make_trainer(cfg)
    start = trainer.state["step"]
    return {"start": start, "history": trainer.train(), "params": trainable(trainer.model)}


def scenario_fsdp(out: Path) -> dict:
    """FSDP: two steps with checkpoints, then a resume from step 1 in the same processes."""
    from selfcorrect.fsdp import full_state

    cfg = dist_config(out / "run", **{"distributed.strategy": "fsdp"})
    trainer = make_trainer(cfg)
    history = trainer.train()
    weights = full_state(trainer.replicated, trainer.optimizer)["weights"]
    distributed.on_main(lambda: (out / "run" / "checkpoints" / "LATEST").write_text("step-000001"))
    again = make_trainer(dist_config(out / "run", **{"distributed.strategy": "fsdp", "run.resume": True}))
    tail = again.train()
    return {"history": history, "weights": weights, "tail": tail}


def scenario_fsdp_bf16(out: Path) -> dict:
    """FSDP on a bf16 model: fp32 masters sharded, and a reference whose embeddings and norms
    are fp32 beside bf16 Linear weights (precision.match_master_precision), sharded too."""
    cfg = dist_config(out / "run", **{"distributed.strategy": "fsdp", "algo.stage2_steps": 0})
    trainer = make_trainer(cfg, dtype=torch.bfloat16)
    dtypes = sorted({str(p.dtype) for p in trainer.reference.model.parameters()})
    return {"history": trainer.train(), "reference_dtypes": dtypes}


def scenario_on_main_errors(out: Path) -> dict:
    """Errors rank 0 meets alone in distributed.on_main, as every rank then sees them."""
    from selfcorrect.faults import CheckpointWriteError, RunLocked

    distributed.init(60.0, cuda=False)
    seen = []
    for error in (CheckpointWriteError("disk full"), RunLocked("held"), ValueError("bad"), KeyError("odd")):
        def fail(error=error):
            raise error
        try:
            distributed.on_main(fail)
        except BaseException as got:  # noqa: BLE001 (recorded, compared by the test)
            seen.append(type(got).__name__)
    return {"seen": seen}


def main() -> None:
    name, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    result = globals()[f"scenario_{name}"](out)
    torch.save(result, out / f"rank{distributed.rank()}.pt")
    distributed.shutdown()
    distributed.exit_process(0)


if __name__ == "__main__":
    main()
