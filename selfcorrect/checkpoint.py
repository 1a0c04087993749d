"""Atomic checkpoints of the full training state.

Layout: <run>/checkpoints/step-000012/{weights.safetensors, optimizer.pt, state.json} and
<run>/checkpoints/LATEST (the folder name). A checkpoint is written to a temporary folder,
fsynced, renamed into place with os.replace, and only then is LATEST replaced the same way and
old checkpoints pruned — so a crash at any moment leaves the previous checkpoint intact.

Weights: only the trainable parameters (the LoRA adapter, or all weights without LoRA).

Faults: weights that are not finite are never written (NonFiniteTraining); a write that fails
(disk full, unwritable folder) leaves the previous checkpoint and LATEST as they were, removes
its temporary folder and raises CheckpointWriteError; `tidy` removes what a kill -9 left.

Data-parallel runs: rank 0 writes (the model and optimizer are the same on every rank), with
every rank's RNG state in optimizer.pt ("rng_by_rank") and the world size in state.json, which
a resume must match. Under FSDP the caller passes the gathered full `weights` and
`optimizer_state` and restores them with `restore`.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_folder, remove_temporaries, write_text_atomic
from .faults import CheckpointWriteError, NonFiniteTraining

LATEST = "LATEST"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def nonfinite_tensors(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save(run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict, keep: int, *,
         rng_by_rank: list | None = None, weights: dict | None = None, optimizer_state: dict | None = None) -> Path:
    """Write checkpoint `step` atomically, point LATEST at it, then prune to the newest `keep`.
    Refuses non-finite weights: a resume would only carry the NaN on."""
    root = run_dir / "checkpoints"
    name = f"step-{step:06d}"
    final = root / name
    weights = trainable_state(model) if weights is None else weights
    bad = nonfinite_tensors(weights)
    if bad:
        raise NonFiniteTraining(f"not saving checkpoint {name}: {len(bad)} weight tensor(s) hold NaN/inf "
                                f"(first: {bad[0]}); the last good checkpoint is {_latest_name(run_dir)}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with atomic_folder(final) as tmp:
            save_file(weights, str(tmp / "weights.safetensors"))
            extra = {"optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
                     "scheduler": scheduler.state_dict(), "rng": rng_state()}
            if rng_by_rank is not None:
                extra["rng_by_rank"] = rng_by_rank
            torch.save(extra, tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(trainer_state, indent=1))
        write_text_atomic(root / LATEST, name)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CheckpointWriteError(f"could not write checkpoint {name} in {root}: {reason}; the previous "
                                   f"checkpoint ({_latest_name(run_dir)}) is intact") from exc
    existing = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in existing[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _latest_name(run_dir: Path) -> str:
    """LATEST's folder name for messages ('none' when there is none yet)."""
    try:
        return (run_dir / "checkpoints" / LATEST).read_text().strip() or "none"
    except OSError:
        return "none"


def tidy(run_dir: Path) -> list[Path]:
    """Remove what a killed run left in the run folder: temporary folders and files of atomic
    writes, and checkpoints newer than LATEST (written, but killed before LATEST moved: the
    resumed run writes them again). Call only while holding the run lock. Returns what went."""
    root = run_dir / "checkpoints"
    removed = remove_temporaries(run_dir) + remove_temporaries(root)
    pointer = root / LATEST
    current = pointer.read_text().strip() if pointer.exists() else ""
    # only a pointer to a complete checkpoint says what is newer: an empty or hand-edited one
    # (a pruned step) would make every checkpoint look newer; latest() then reports it instead
    if current and is_complete(root / current):
        for folder in sorted(root.glob("step-*")):
            if folder.is_dir() and folder.name > current:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def check(folder: Path) -> dict:
    """Read every file of a checkpoint (weights, optimizer, state) without a model; raise if one
    is missing, truncated or holds non-finite weights. Returns the trainer state."""
    bad = nonfinite_tensors(load_file(str(folder / "weights.safetensors")))
    if bad:
        raise NonFiniteTraining(f"{folder}: non-finite weights in {bad[:3]}")
    torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
    return read_state(folder)


def is_complete(folder: Path) -> bool:
    """Whether `folder` is a whole checkpoint: state.json is written last, inside the atomic folder."""
    return (folder / "state.json").exists()


def latest(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    folder = run_dir / "checkpoints" / name
    if not name or not is_complete(folder):
        present = sorted(p.name for p in folder.parent.glob("step-*") if is_complete(p))
        raise FileNotFoundError(f"{pointer} names {name or 'nothing'}, which is missing or incomplete "
                                f"(complete checkpoints here: {', '.join(present) or 'none'}; write one "
                                f"of their names into it to resume from there)")
    return folder


def read_state(folder: Path) -> dict:
    """The trainer state of a checkpoint (step, data position, world size, ...), nothing loaded."""
    return json.loads((folder / "state.json").read_text())


def load(folder: Path, model, optimizer, scheduler, *, rank: int = 0, restore=None) -> dict:
    """Restore weights, optimizer, scheduler and RNG states (rank `rank`'s, when the run kept one
    per rank); return the trainer state. restore(weights, optimizer_state): loads the first two
    instead (FSDP)."""
    weights = load_file(str(folder / "weights.safetensors"))
    extra = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
    if restore is not None:
        restore(weights, extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        set_rng_state(extra["rng_by_rank"][rank] if "rng_by_rank" in extra else extra["rng"])
        return read_state(folder)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise ValueError(f"checkpoint {folder} does not match the model: missing {missing[:3]}, "
                         f"unknown {unknown[:3]} (was it made with the same model and LoRA settings?)")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng_by_rank"][rank] if "rng_by_rank" in extra else extra["rng"])
    return read_state(folder)
