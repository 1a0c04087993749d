"""Rollout engines: what turns token contexts into sampled continuations (see base.py).

- hf: Hugging Face `generate` on left-padded batches; the reference the others are tested against.
- cached: our decode loop that shares prompt prefills, keeps [x, y1]'s keys/values for attempt 2
  and drops finished rows from the batch.
- lookup: the cached engine that also drafts each row's next ids from its own context (attempt 2
  from attempt 1: "prompt lookup") and checks the draft in the same forward; exact.
- static: Hugging Face `generate` into a preallocated cache, in bucketed shapes, which
  transformers compiles on CUDA.
- paged: transformers' continuous batching with paged attention (rows join and leave one
  running batch); for GPUs, no per-row seeds.
- vllm: an in-process vLLM (optional package) holding a copy of the policy's weights; no per-row
  seeds, one process.
"""

from __future__ import annotations

import importlib
import importlib.util

from .base import Engine, Generated, SamplingSettings

# name -> "module:class", imported on demand (an engine may need an optional package)
ENGINES = {
    "hf": "selfcorrect.engines.hf:HFGenerate",
    "cached": "selfcorrect.engines.cached:CachedEngine",
    "lookup": "selfcorrect.engines.lookup:LookupEngine",
    "static": "selfcorrect.engines.static:StaticCacheGenerate",
    "paged": "selfcorrect.engines.paged:PagedGenerate",
    "vllm": "selfcorrect.engines.vllm_engine:VLLMGenerate",
}

# engines that sample with one generator per batch: no per-row seeds (rollout.seeding problem),
# no top_p < 1 (their log-probs would be the nucleus')
UNSEEDED = frozenset({"paged", "vllm"})
SEEDED = tuple(name for name in ENGINES if name not in UNSEEDED)  # what to suggest instead
# engines that need a package of their own (an optional dependency): name -> module
NEEDS = {"vllm": "vllm"}


def installed() -> tuple[str, ...]:
    """The engines that can run here (their optional package, if any, is importable)."""
    return tuple(n for n in ENGINES if n not in NEEDS or importlib.util.find_spec(NEEDS[n]) is not None)


def make_engine(name: str, model=None) -> Engine:
    """A fresh engine by name (one of ENGINES, or 'auto': cached when `model` has full
    attention in every layer, else hf)."""
    if name == "auto":
        from .cached import supports

        name = "cached" if model is not None and supports(model) else "hf"
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    if name not in installed():  # before a model is loaded or a step is taken
        raise ValueError(f"the {name} engine needs the {NEEDS[name]} package, which is not installed here: "
                         f"pip install 'selfcorrect[{name}]' (or see scripts/test_{name}.sh); "
                         f"engines that run here: {', '.join(installed())}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["ENGINES", "NEEDS", "SEEDED", "UNSEEDED", "Engine", "Generated", "SamplingSettings", "installed",
           "make_engine"]
