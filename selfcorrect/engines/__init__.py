"""Rollout engines: what turns token contexts into sampled continuations (see base.py).

- hf: Hugging Face `generate` on left-padded batches; the reference the others are tested against.
"""

from __future__ import annotations

import importlib

from .base import Engine, Generated, SamplingSettings

# name -> "module:class", imported on demand (an engine may need an optional package)
ENGINES = {
    "hf": "selfcorrect.engines.hf:HFGenerate",
}


def make_engine(name: str) -> Engine:
    """A fresh engine by name (one of ENGINES)."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["ENGINES", "Engine", "Generated", "SamplingSettings", "make_engine"]
