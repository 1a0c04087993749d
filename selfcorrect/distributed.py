"""Data parallelism on torch.distributed: the process group, its few collectives, launch checks.

A run launched by `torchrun` (or `accelerate launch`, which starts torchrun's launcher) finds
RANK / WORLD_SIZE / MASTER_ADDR in its environment; `init()` joins the process group from
there (NCCL on GPUs, gloo on CPU). Without those variables nothing is initialised and every
helper below is the identity, so the single-process path is exactly what it was.

Every helper is called by all ranks in the same order (they are collectives), except
`is_main`, `rank`, `world_size` and `shard_bounds`, which only read state.

Launch traps this module refuses, instead of silently training N independent copies:
  * `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple
    launcher) with MASTER_ADDR/MASTER_PORT set but no WORLD_SIZE;
  * a process group that someone else initialised with a different size than WORLD_SIZE says
    (a plain `Accelerator()` on CPU under torchrun makes independent size-1 groups);
  * launcher variables that disagree (RANK >= WORLD_SIZE, LOCAL_RANK >= LOCAL_WORLD_SIZE, ...).
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import threading
from typing import Any, Callable, Mapping, NoReturn

import torch

DEFAULT_TIMEOUT_S = 1800.0


_created = False  # whether init() made the current process group
_joined_others = False  # whether this process ever joined a group of several (see exit_process)


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    """Whether this process is one rank of a multi-process group."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def in_group() -> bool:
    """Whether a process group exists (possibly of one process)."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes logs, checkpoints, the final model and prints."""
    return rank() == 0


def say(text: str) -> None:
    """Print on rank 0 only (every rank holds the same results), flushed for logs."""
    if is_main():
        print(text, flush=True)


# ------------------------------------------------------------------------------ launch checks


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"launch: environment variable {name}={text!r} is not an integer") from None


def expected_world_size(env: Mapping[str, str] | None = None) -> int:
    """The world size the launcher asked for (1 when not launched distributed), after checking
    that its variables agree with each other. Raises ValueError naming the misconfiguration."""
    env = os.environ if env is None else env
    world, rank_, local_rank_ = _int_env(env, "WORLD_SIZE"), _int_env(env, "RANK"), _int_env(env, "LOCAL_RANK")
    local_world = _int_env(env, "LOCAL_WORLD_SIZE")
    if world is None:
        if env.get("ACCELERATE_USE_CPU") is not None and env.get("MASTER_PORT"):
            # accelerate's simple launcher sets MASTER_PORT only when asked for > 1 process, yet
            # starts one: on CPU it needs mpirun (a hostfile) to start the others
            raise ValueError(
                "launch: accelerate started a single process although more were asked for "
                "(`accelerate launch --cpu --num_processes N` runs one process without an mpirun "
                "hostfile); on CPU launch with `torchrun --nproc_per_node N -m selfcorrect ...`")
        if (local_world or 1) > 1 or (rank_ or 0) > 0:
            raise ValueError(f"launch: LOCAL_WORLD_SIZE={local_world} / RANK={rank_} are set but WORLD_SIZE "
                             "is not; start the processes with torchrun")
        return 1
    if world < 1:
        raise ValueError(f"launch: WORLD_SIZE={world} must be >= 1")
    if world > 1 and rank_ is None:
        raise ValueError(f"launch: WORLD_SIZE={world} but RANK is not set; start the processes with torchrun")
    if rank_ is not None and not 0 <= rank_ < world:
        raise ValueError(f"launch: RANK={rank_} is outside [0, WORLD_SIZE={world})")
    if local_world is not None:
        if not 1 <= local_world <= world:
            raise ValueError(f"launch: LOCAL_WORLD_SIZE={local_world} disagrees with WORLD_SIZE={world}")
        if local_rank_ is not None and not 0 <= local_rank_ < local_world:
            raise ValueError(f"launch: LOCAL_RANK={local_rank_} is outside [0, LOCAL_WORLD_SIZE={local_world})")
    if world > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise ValueError(f"launch: WORLD_SIZE={world} but MASTER_ADDR / MASTER_PORT are not set; start the processes with torchrun")
    return world


def init(timeout_s: float = DEFAULT_TIMEOUT_S, cuda: bool | None = None, group_of_one: bool = False) -> int:
    """Join the process group the launcher described (idempotent); return the world size.

    Nothing happens when not launched distributed (world size 1). On GPUs each rank takes
    cuda:LOCAL_RANK and NCCL; on CPU gloo. After joining, the ranks check that they are
    exactly 0..N-1 of one group, so a misconfigured launch fails here, not mid-training.
    cuda: whether the model runs on GPUs (default: whether CUDA is available). group_of_one:
    also make a group when torchrun started a single process (FSDP needs one even for one GPU,
    which is how its code path is smoke-tested on a single device)."""
    want = expected_world_size()
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        have = dist.get_world_size()
        if have != want:
            raise ValueError(
                f"launch: the process group has {have} process(es) but WORLD_SIZE says {want} (was the "
                "group created by another library, e.g. a plain Accelerator() on CPU under torchrun, which "
                "runs independent rank-0 processes?)")
        return have
    if want == 1 and not (group_of_one and os.environ.get("WORLD_SIZE") and os.environ.get("MASTER_ADDR")):
        return 1
    if not dist.is_available():
        raise ValueError(f"launch: WORLD_SIZE={want} but this torch build has no torch.distributed")
    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    global _created, _joined_others
    _created = True
    have = dist.get_world_size()
    _joined_others = have > 1
    ranks = gather_objects(dist.get_rank())
    if have != want or sorted(ranks) != list(range(want)):
        raise ValueError(f"launch: WORLD_SIZE={want} but the process group holds ranks {sorted(ranks)}")
    return have


def shutdown(wait: bool = True) -> None:
    """Leave the process group (end of a command); a no-op when none was joined. wait: first
    meet the other ranks, so none tears down its connections while another still uses them
    (skipped after an error, when another rank may never arrive). A group of one process that
    init() did not create belongs to whoever made it (the vllm engine's vLLM, which destroys it
    itself at exit) and is left alone."""
    global _created
    dist = _dist()
    if dist.is_available() and dist.is_initialized() and (_created or dist.get_world_size() > 1):
        if wait and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
    _created = False


def exit_process(code: int) -> NoReturn:
    """End the process with exit status `code`, as the last statement of a script that may run
    under torchrun (the CLI does). A process that never joined a group of several exits normally.

    One that did ends without interpreter finalization, because on CPU it could otherwise abort
    after its work was done: a gloo worker thread may still hold the last collective's tensors;
    releasing them frees their Python objects, which needs the GIL, and a thread that asks for
    the GIL while Python finalizes is ended by CPython (<= 3.13) with pthread_exit, whose unwind
    through that C++ destructor calls std::terminate ("terminate called without an active
    exception", exit -6 or -11; gdb shows ~AsyncBroadcastWork -> decref_pyobject -> take_gil).
    What a normal exit does first is kept: other non-daemon threads are joined, atexit handlers
    run (verifier workers stopped, the run lock released, logging flushed), streams flushed."""
    if not _joined_others:
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to lose
            pass
    os._exit(code)


def device() -> torch.device:
    """The collective's device: the rank's GPU under NCCL, else the CPU."""
    if active() and _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another rank died, hung or timed out
    (gloo raises a plain RuntimeError naming its transport; NCCL and the store a DistError)."""
    dist = _dist()
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and world_size() > 1 and any(
        mark in text for mark in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out"))


# ------------------------------------------------------------------------------ collectives


def barrier() -> None:
    if active():
        _dist().barrier()


def all_reduce_sums(values: Mapping[str, float], op: str = "sum") -> dict[str, float]:
    """Element-wise sum (or max) of a dict of numbers over ranks. Every rank must pass the same
    keys. Sums run in float64, so integer counts stay exact far beyond any batch size."""
    if not active():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device())
    dist = _dist()
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return dict(zip(keys, t.tolist()))


def all_reduce_max(value: float) -> float:
    return all_reduce_sums({"x": value}, op="max")["x"]


def gather_objects(obj: Any) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled; for small per-step data)."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------ rank 0 does, all agree

def _passed_on() -> dict[str, type]:
    """The errors every rank re-raises as themselves (the CLI reports them in one line, exit 2):
    bad input, and the training faults rank 0 meets alone (a full disk while checkpointing)."""
    from .faults import CheckpointWriteError, NonFiniteTraining, RunLocked

    return {cls.__name__: cls for cls in (ValueError, FileNotFoundError, FileExistsError, RunLocked,
                                          CheckpointWriteError, NonFiniteTraining)}


def on_main(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only (file writes, deletions); every rank returns its result or raises
    its error. An error on rank 0 alone would otherwise leave the other ranks waiting at the
    next collective; this way each rank reports the same one-line error and exits."""
    if not active():
        return fn()
    outcome: tuple = ("ok", None)
    known = _passed_on()
    if is_main():
        try:
            outcome = ("ok", fn())
        except tuple(known.values()) as exc:
            # the most specific known class: a CheckpointWriteError is an OSError, a RunLocked a FileExistsError
            outcome = (next(c.__name__ for c in type(exc).__mro__ if c.__name__ in known), str(exc))
        except BaseException as exc:  # still tell the others before failing, so nobody waits
            broadcast_object(("RuntimeError", f"rank 0 failed: {type(exc).__name__}: {exc}"))
            raise
    kind, value = broadcast_object(outcome)
    if kind == "ok":
        return value
    raise known.get(kind, RuntimeError)(value)


def main_first(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0, then on the others (e.g. build a cache on rank 0, then read it)."""
    result = on_main(fn)
    return result if is_main() else fn()


# ------------------------------------------------------------------------------ sharding


def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous block [lo, hi) of n items that rank `rank_` of `world` takes. Blocks
    differ in size by at most one and, concatenated in rank order, give the items in order."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return n * r // w, n * (r + 1) // w
