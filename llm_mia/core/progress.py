"""Progress of long stages on stderr: a rich bar on a terminal; elsewhere (CI logs, ``> log``)
plain lines: one when a stage starts, one at every 10% of its total (every 30 s when the total is
unknown) and one when it ends."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class PlainProgress:
    """``advance(n)`` that prints ``<stage>: <pct>% (<done>/<total>, <s> s)`` at each 10% step."""

    def __init__(self, description: str, total: int | None, stream: TextIO, *, every_s: float = 30.0):
        self.description, self.total, self.stream, self.every_s = description, total, stream, every_s
        self.done, self.t0 = 0, time.monotonic()
        self.last_decile, self.last_t = 0, self.t0
        self._say(f"started ({total} to do)" if total else "started")

    def _say(self, what: str) -> None:
        print(f"{self.description}: {what}", file=self.stream, flush=True)

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.total:
            decile = min(10, int(10 * self.done / self.total))
            if decile > self.last_decile and decile < 10:
                self.last_decile = decile
                self._say(f"{10 * decile}% ({self.done}/{self.total}, {now - self.t0:.0f} s)")
        elif now - self.last_t >= self.every_s:
            self.last_t = now
            self._say(f"{self.done} done ({now - self.t0:.0f} s)")

    def close(self) -> None:
        of = f"/{self.total}" if self.total else ""
        self._say(f"done {self.done}{of} in {time.monotonic() - self.t0:.0f} s")


@contextlib.contextmanager
def bar(description: str, total: int | None, *, enabled: bool = True,
        stream: TextIO | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a rich progress bar on stderr when it is a terminal, plain lines
    (:class:`PlainProgress`) otherwise; nothing when not ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    stream = stream or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        p = PlainProgress(description, total, stream)
        yield p
        p.close()
        return
    from rich.console import Console

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(file=stream), transient=False) as p:
        task = p.add_task(description, total=total)
        yield lambda n: p.advance(task, n)
