"""One-GPU throughput check, offline, in a few minutes: rollout tokens/s per engine, and the
model FLOPs utilisation (MFU) and peak memory of one SCoRe update step.

    python benchmarks/gpu_bench.py --out runs/gpu_bench.json            # on a CUDA machine
    python benchmarks/gpu_bench.py --device cpu --tiny --peak-flops 1e11   # seconds-long CPU smoke run

Model: qwen2-0.5b-random (rollout_speed.py: Qwen2-0.5B's shape, random weights, bf16), so
nothing is downloaded and, since a random model almost never stops, every attempt is exactly
--max-new-tokens long. Prompts are the arithmetic chat prompts padded to about --prompt-tokens
with a filler system message.

1. Rollout: rollout_speed's measurement at one batch width (--batch rows = batch / k problems x
   k samples, all generated at once): a full 2-attempt SCoRe rollout per engine, T = 0.7,
   tokens/s and the ratio to the hf engine, and the peak GPU memory over those rollouts.
2. Update: a selfcorrect Trainer (full weights, fp32 master weights under bf16 autocast, the
   default engine) on the same model and prompts, Stage I, one warm-up step and one measured
   step. The update is the step's wall time minus its rollout, verify and rewards phases:
   reference and policy log-probs, the loss, backward (micro-batches of --micro-batch rows),
   clipping and AdamW; on full rows (optim.share_prompt off), so that MFU's token count is the
   work actually done.
   MFU = 6 x (body x trained tokens + head x scored tokens) / update seconds / peak bf16 FLOP/s:
   body = the weights every position multiplies (all but the embedding table and the output
   layer), head = the output layer's, which runs only where a token is scored (both attempts;
   not the prompt or the instruction between). Trained tokens = the real (unpadded) tokens of
   the step's episode rows [x, y1, p, y2] (the row glue p is counted as the full instruction:
   a random model never ends an attempt with a stop token); scored tokens = both attempts.
   The output layer runs in fp32 (TF32 on CUDA) by default (--model.fp32_logits, precision.py):
   --fp32-logits false measures the update with it in bf16 too.
   6 x is the usual forward + backward estimate (attention scores not counted); the frozen
   reference's forward (2 x more) runs inside the timed update but is not in the 6, so
   `mfu_with_reference` (8 x) is reported too. Peak FLOP/s come from PEAK_BF16_FLOPS by GPU
   name (dense, no sparsity) or --peak-flops.

The JSON result is written to --out after each part (a run cut short keeps what it measured)
and printed as the last line.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline: nothing here needs the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_speed import DTYPES, HEADER, arithmetic_task, engine_order, load_model, measure, summary  # noqa: E402

from selfcorrect.config import Config  # noqa: E402
from selfcorrect.train import Trainer, take_problems  # noqa: E402

# dense bf16 tensor-core peak FLOP/s by a substring of torch.cuda.get_device_name()
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}
FULL = dict(model="qwen2-0.5b-random", dtype="bfloat16", batch=256, prompt_tokens=256, max_new_tokens=256)
TINY = dict(model="tiny", dtype="float32", batch=8, prompt_tokens=32, max_new_tokens=8)


def peak_flops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def gib(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last reset, in GiB (None on CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- update step
def trainer_config(args, device: torch.device, out: Path) -> Config:
    cfg = Config()
    cfg.model.device, cfg.model.lora = str(device), False
    cfg.model.fp32_logits = args.fp32_logits == "true"
    r = cfg.rollout
    r.samples_per_problem, r.max_new_tokens, r.batch_size = args.samples, args.max_new_tokens, args.batch
    r.temperature = 1.0  # the paper's training temperature
    cfg.optim.problems_per_step, cfg.optim.micro_batch_size = args.batch // args.samples, args.micro_batch
    cfg.optim.lr = 1e-6
    # MFU counts every token of every row: the update must compute them all (sharing each
    # prompt's pass, the default, does less work; benchmarks/update_speed.py measures that gain)
    cfg.optim.share_prompt = False
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 2, 0
    cfg.run.output_dir, cfg.run.progress, cfg.run.overwrite, cfg.run.save_every = str(out), False, True, 1000
    return cfg


def episode_tokens(trainer: Trainer, task, problems, metrics: dict, k: int) -> int:
    """Real tokens of the step's episode rows: prompts + both attempts + the instruction between."""
    fmt = trainer.fmt
    prompts = sum(len(fmt.first_ids(task.first_turn(p))) for p in problems) * k
    glue = len(fmt.between_ids(task.first_turn(problems[0]), task.correction_instruction))
    rows = len(problems) * k
    return int(prompts + rows * (metrics["len_t1"] + metrics["len_t2"] + glue))


def matmul_weights(model) -> tuple[int, int]:
    """(body, head): weights a position multiplies in the transformer body, and in the output
    layer (the embedding table is a lookup; a tied output layer counts once, as the head)."""
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # counts a tied matrix once
    tied = head.data_ptr() == embed.data_ptr()
    return total - embed.numel() - (0 if tied else head.numel()), head.numel()


def measure_update(model, tok, task, args, device: torch.device, flops: float | None) -> dict:
    """A warm-up Trainer step, then one measured step; its update time, MFU and peak memory."""
    cfg = trainer_config(args, device, Path(tempfile.mkdtemp(prefix="gpu-bench-")))
    trainer = Trainer(cfg, task, model=model, tokenizer=tok)
    trainer.step(1)  # warm-up: first backward, optimizer state allocation
    problems, _ = take_problems(trainer.problems, cfg.run.seed, trainer.state["data_position"],
                                cfg.optim.problems_per_step)  # what the next step will take
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    m = trainer.step(1)
    sync(device)
    wall = time.perf_counter() - start
    # log-probs, loss, backward and the optimizer step (the trainer's phases wait for the GPU);
    # not the metrics phase (CPU work such as edit distances), reported on its own
    update = m["time_logprobs_loss"] + m["time_step"]
    tokens = episode_tokens(trainer, task, problems, m, args.samples)
    scored = round(len(problems) * args.samples * (m["len_t1"] + m["len_t2"]))
    body, head = matmul_weights(model)
    work = body * tokens + head * scored  # multiply-adds per forward
    result = {"step_seconds": round(wall, 3), "rollout_seconds": round(m["time_rollout"], 3),
              "update_seconds": round(update, 3), "metrics_seconds": round(m["time_metrics"], 3),
              "trained_tokens": tokens, "scored_tokens": scored,
              "rows": len(problems) * args.samples, "fp32_logits": cfg.model.fp32_logits,
              "micro_batch": args.micro_batch, "len_t1": m["len_t1"], "len_t2": m["len_t2"],
              "gen_tokens_per_s": round(m["gen_tokens_per_s"], 1), "peak_flops": flops,
              "mfu": None, "mfu_with_reference": None, "peak_memory_gib": gib(device),
              "phases": {k[5:]: v for k, v in m.items() if k.startswith("time_")}}
    if flops:
        result["mfu"] = round(6 * work / update / flops, 4)
        result["mfu_with_reference"] = round(8 * work / update / flops, 4)
    return result


# ----------------------------------------------------------------------------- main
def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small sizes (a smoke run)")
    parser.add_argument("--model", choices=("qwen2-0.5b-random", "smollm2", "tiny"), default=None)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None)
    parser.add_argument("--batch", type=int, default=None, help="rollout rows (= problems x samples)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem (k)")
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--micro-batch", type=int, default=16, help="rows per forward/backward in the update")
    parser.add_argument("--repeats", type=int, default=1, help="timed rollouts per engine")
    parser.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s (default: by GPU name)")
    parser.add_argument("--skip-update", action="store_true", help="rollout part only")
    parser.add_argument("--fp32-logits", choices=("true", "false"), default="true",
                        help="the update's output layer in fp32 (TF32 on CUDA), the trainer's default; "
                             "false: bf16 like the rest (precision.py)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_bench.json"))
    args = parser.parse_args()
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch % args.samples:
        parser.error(f"--batch {args.batch} must be a multiple of --samples {args.samples}")
    return args


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for a smoke run")
    begin = time.perf_counter()
    device = torch.device(args.device)
    model, tok, note = load_model(args.model, device, DTYPES[args.dtype])
    params = sum(p.numel() for p in model.parameters())
    task = arithmetic_task(tok, args.prompt_tokens)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    flops = peak_flops(device, args.peak_flops)
    result = {"gpu": gpu, "model": args.model, "model_note": note, "params": params, "dtype": args.dtype,
              "batch": args.batch, "samples": args.samples, "prompt_tokens": args.prompt_tokens,
              "max_new_tokens": args.max_new_tokens, "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"{gpu}: {args.model} ({note}, {params / 1e6:.1f}M params, {args.dtype}), batch {args.batch}, "
          f"prompt ~{args.prompt_tokens} tokens, {args.max_new_tokens} new tokens, peak FLOP/s {flops}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    print(HEADER, flush=True)
    reset_peak(device)
    # lookup is left out: a random model's rows hardly ever repeat, so it would time cached again
    engines = [n for n in engine_order() if n != "lookup"]
    cells = measure(model, tok, task, engines, batches=[args.batch], problems=0, samples=args.samples,
                    max_new_tokens=args.max_new_tokens, temperature=0.7, greedy=False, seeded=False,
                    repeats=args.repeats, log=lambda s: print(s, flush=True))
    result["rollout"] = summary(cells)
    result["rollout_peak_memory_gib"] = gib(device)
    result["seconds"] = round(time.perf_counter() - begin, 1)
    args.out.write_text(json.dumps(result, indent=1))

    if not args.skip_update:
        result["update"] = measure_update(model, tok, task, args, device, flops)
        u = result["update"]
        print(f"update: {u['update_seconds']} s for {u['trained_tokens']} tokens ({u['rows']} rows), MFU {u['mfu']} "
              f"(with the reference forward {u['mfu_with_reference']}), peak memory {u['peak_memory_gib']} GiB, "
              f"phases {u['phases']}", flush=True)
    result["seconds"] = round(time.perf_counter() - begin, 1)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
