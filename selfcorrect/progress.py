"""Progress reports that suit where they go.

On a terminal a tqdm bar redraws in place. In a log file (stdout/stderr redirected, CI, nohup)
every redraw would be kept — thousands of `\\r` updates in one demo log — so there a plain line
is written every `every_s` seconds and once at the end instead:

    SCoRe 12/80 (15%) 1.2 s/it stage=1 acc1=0.55
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0, *,
             stream: TextIO | None = None, every_s: float = 30.0):
    """A progress reporter with `update(n=1)`, `set_postfix(**fields)` and `close()`.

    total: steps expected; initial: steps already done (a resumed run); enabled=False: silent.
    stream: where to write (default: stderr, like tqdm). A tqdm bar when the stream is a
    terminal, otherwise a `PlainProgress` line every `every_s` seconds and at close.
    """
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return PlainProgress(total, desc, initial, stream=None)
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, initial=initial, file=stream, dynamic_ncols=True)
    return PlainProgress(total, desc, initial, stream=stream, every_s=every_s)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """One line per `every_s` seconds (and one at close), for logs. stream=None writes nothing."""

    def __init__(self, total: int, desc: str, initial: int = 0, *, stream: TextIO | None,
                 every_s: float = 30.0):
        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self.stream, self.every_s = stream, every_s
        self.postfix: dict = {}
        self.started = self.last_line = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.stream is not None and time.monotonic() - self.last_line >= self.every_s:
            self._write()

    def set_postfix(self, **fields) -> None:
        """Fields shown after the count, as key=value (latest values win)."""
        self.postfix = fields

    def close(self) -> None:
        if not self.closed and self.stream is not None:
            self._write()
        self.closed = True

    def line(self) -> str:
        """`desc n/total (p%) r s/it key=value ...`; the rate only counts this run's steps."""
        parts = [f"{self.desc} {self.n}/{self.total}"]
        if self.total:
            parts.append(f"({100 * self.n / self.total:.0f}%)")
        done = self.n - self.initial
        if done > 0:
            rate = (time.monotonic() - self.started) / done
            parts.append(f"{rate:.3g} s/it")
            if self.total and self.n < self.total:
                parts.append(f"ETA {_clock(rate * (self.total - self.n))}")
        parts += [f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                  for key, value in self.postfix.items()]
        return " ".join(parts)

    def _write(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.last_line = time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _clock(seconds: float) -> str:
    """1:02:03 / 2:03 for an ETA."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"
