"""Progress bars on stderr that count operator products, one bar per stage of a job.

Bars appear only for stages that run longer than ``delay`` seconds (tqdm's ``delay``), show the
rate and the ETA against the stage's product budget, and are silent with ``--quiet``.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from .operators.base import CurvatureOperator


class ProductProgress:
    """Attach to an operator, then call ``stage(name, total)`` as each part of a job starts."""

    def __init__(self, *, quiet: bool = False, delay: float = 2.0, label: str = "") -> None:
        self.quiet, self.delay, self.label = quiet, delay, label
        self.bar: tqdm | None = None

    def attach(self, op: CurvatureOperator) -> ProductProgress:
        op.observe(self.advance)
        return self

    def stage(self, name: str, total: int | None, unit: str = "product") -> None:
        """Start a new bar; ``advance`` moves it (the attached operator advances it per product)."""
        self.close()
        self.bar = tqdm(total=total, desc=f"{self.label}{name}", unit=unit, delay=self.delay,
                        file=sys.stderr, disable=self.quiet, leave=False, dynamic_ncols=True)

    def advance(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProductProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
