"""Do our engines and TRL's GRPOTrainer sample the same distribution? Attempt-1 lengths on the
prompts of benchmarks/vs_trl.py, side by side.

    OMP_NUM_THREADS=2 python benchmarks/trl_sampling_parity.py              # SmolLM2, 16 problems x 4
    python benchmarks/trl_sampling_parity.py --model tiny --seeds 1

vs_trl.py compares attempts per second, and each side's step time grows with how long its
samples come out, so a ratio is only fair if both sides draw from the same distribution. Here
TRL's side is its own GenerationConfig, read back from a GRPOTrainer built exactly as vs_trl.py
builds it, applied to TRL's chat-templated prompts with the model's own `generate` (not TRL's
private generation method, which vs_trl.py times); our side is `rollout` with each engine. For
each seed both start from torch.manual_seed(seed): the hf engine and TRL's call then make the
same `generate` draws, so they should agree sample for sample (`hf_equals_trl`; the script
exits non-zero when they do not); the other
engines draw differently and should agree in distribution (mean length, rows cut at the limit).

The last line printed is one JSON object: per seed and side, the mean attempt-1 length (tokens,
stop token included), the rows cut at --max-new-tokens, and whether hf's samples equal TRL's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl  # noqa: E402  (its model, config, problems and GRPOTrainer, so the settings are the same)
from selfcorrect.engines import make_engine  # noqa: E402
from selfcorrect.engines.base import SamplingSettings, split_at_stop  # noqa: E402
from selfcorrect.rollout import rollout  # noqa: E402


def trl_samples(trainer, problems, k: int, max_new_tokens: int) -> tuple[list[list[int]], list[bool]]:
    """TRL's attempt-1 ids per row (k rows per problem, problem-major), up to its first stop id,
    and whether each row was cut at max_new_tokens."""
    from trl.data_utils import maybe_apply_chat_template

    tok = trainer.processing_class
    texts = [maybe_apply_chat_template({"prompt": trainer.train_dataset[i]["prompt"]}, tok)["prompt"]
             for i in range(len(problems)) for _ in range(k)]
    side = tok.padding_side
    tok.padding_side = "left"  # as TRL pads prompts for generation
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    with torch.no_grad():
        out = trainer.model.generate(**enc, generation_config=trainer.generation_config)
    stops = trainer.generation_config.eos_token_id
    stops = {stops} if isinstance(stops, int) else set(stops)
    split = [split_at_stop(row, stops, max_new_tokens) for row in out[:, enc["input_ids"].shape[1]:].tolist()]
    return [ids for ids, _ in split], [cut for _, cut in split]


def summary(rows: list[list[int]], cuts: list[bool]) -> dict:
    return {"mean_length": round(statistics.mean(len(r) for r in rows), 2), "cut": sum(cuts), "rows": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N")
    parser.add_argument("--engines", default="hf,cached", help="our engines, comma-separated (hf first)")
    args = parser.parse_args()
    # what vs_trl.py's builders read; one step's worth of problems
    args.lora, args.dtype, args.device, args.engine, args.micro_batch, args.full_rows, args.steps = (
        False, "float32", "cpu", "hf", 0, False, 0)
    args.fixed_length = False  # the point here is where samples stop
    work = Path(tempfile.mkdtemp(prefix="trl-parity-"))
    name = vs_trl.models.SMOLLM2_NAME if args.model == "smollm2" else vs_trl.save_tiny(work / "tiny-model")
    cfg = vs_trl.our_config(args, name, work / "ours")
    task = vs_trl.build_task(cfg.task.name, cfg.task.options)
    ours = vs_trl.Trainer(cfg, task)
    problems = ours.problems[:args.problems]
    from transformers import TrainerCallback

    theirs = vs_trl.trl_trainer(args, cfg, task, problems, [], TrainerCallback(), work / "trl")
    settings = SamplingSettings(greedy=False, temperature=args.temperature, top_p=1.0,
                                max_new_tokens=args.max_new_tokens)
    result: dict = {"model": args.model, "problems": args.problems, "samples": args.samples,
                    "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seeds": {}}
    for seed in range(1, args.seeds + 1):
        torch.manual_seed(seed)
        trl_rows, trl_cuts = trl_samples(theirs, problems, args.samples, args.max_new_tokens)
        row = {"trl": summary(trl_rows, trl_cuts)}
        for name in args.engines.split(","):
            torch.manual_seed(seed)
            ro = rollout(ours.model, ours.tok, task, problems, n_attempts=1, samples_per_problem=args.samples,
                         settings=settings, batch_size=len(trl_rows), engine=make_engine(name, ours.model))
            ours_rows = [a[0] for a in ro.attempts]
            row[name] = summary(ours_rows, [cut[0] for cut in ro.truncated])
            if name == "hf":
                row["hf_equals_trl"] = ours_rows == trl_rows
        result["seeds"][seed] = row
        print(f"seed {seed}: " + ", ".join(f"{k} {v['mean_length']} tokens ({v['cut']} cut)"
                                           for k, v in row.items() if isinstance(v, dict))
              + f"; hf == trl: {row.get('hf_equals_trl')}", flush=True)
    print(json.dumps(result))
    if any(row.get("hf_equals_trl") is False for row in result["seeds"].values()):
        raise SystemExit("our hf engine did not draw TRL's samples from the same seed: vs_trl's two sides "
                         "would not sample one distribution alike")


if __name__ == "__main__":
    main()
