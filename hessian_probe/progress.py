"""Progress bars on stderr that count operator products, one bar per stage of a job.

Bars appear only for stages that run longer than ``delay`` seconds (tqdm's ``delay``), show the
rate and the ETA against the stage's product budget, and are silent with ``--quiet``. When
stderr is not a terminal (a log file, a batch job) there are no bars: one plain line every
LOG_EVERY seconds of a long stage, and one when it ends, instead of carriage-return floods.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

from .operators.base import CurvatureOperator

LOG_EVERY = 30.0  # seconds between the plain progress lines written to a non-terminal


class _Lines:
    """A stage's progress as plain lines on a non-terminal stream (tqdm's update/close interface)."""

    def __init__(self, desc: str, total: int | None, unit: str, delay: float, file) -> None:
        self.desc, self.total, self.unit, self.delay, self.file = desc, total, unit, delay, file
        self.n, self.started = 0, time.monotonic()
        self.last = self.started

    def update(self, k: int) -> None:
        self.n += k
        now = time.monotonic()
        if now - self.started >= self.delay and now - self.last >= LOG_EVERY:
            self.last = now
            self._line(now)

    def close(self, stopped: bool = False) -> None:
        now = time.monotonic()
        if now - self.started >= self.delay:
            self._line(now, " (stopped)" if stopped else " (done)")

    def _line(self, now: float, end: str = "") -> None:
        of = f"/{self.total}" if self.total else ""
        elapsed = now - self.started
        print(f"{self.desc}: {self.n}{of} {self.unit}s, {elapsed:.0f} s{end}", file=self.file, flush=True)


class ProductProgress:
    """Attach to an operator, then call ``stage(name, total)`` as each part of a job starts."""

    def __init__(self, *, quiet: bool = False, delay: float = 2.0, label: str = "") -> None:
        self.quiet, self.delay, self.label = quiet, delay, label
        self.bar: tqdm | _Lines | None = None

    def attach(self, op: CurvatureOperator) -> ProductProgress:
        op.observe(self.advance)
        return self

    def stage(self, name: str, total: int | None, unit: str = "product") -> None:
        """Start a new bar; ``advance`` moves it (the attached operator advances it per product)."""
        self.close()
        if self.quiet:
            return
        if not sys.stderr.isatty():
            self.bar = _Lines(f"{self.label}{name}", total, unit, self.delay, sys.stderr)
            return
        self.bar = tqdm(total=total, desc=f"{self.label}{name}", unit=unit, delay=self.delay,
                        file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self, stopped: bool = False) -> None:
        """End the current bar; ``stopped``: the stage was interrupted (said so, not 'done')."""
        if self.bar is not None:
            if isinstance(self.bar, _Lines):
                self.bar.close(stopped)
            else:
                self.bar.close()
            self.bar = None

    def __enter__(self) -> ProductProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(stopped=kind is not None)
