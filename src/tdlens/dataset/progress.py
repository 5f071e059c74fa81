"""Progress of a dataset run: a bar on a terminal (tqdm, the ``progress`` extra), a callback
anywhere (notebooks, loggers), silence under CI or when output goes to a file."""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Progress:
    """What a ``callback`` receives after each finished batch.

    Attributes:
        rank: this process's rank (0 without torch.distributed).
        batch: the number of the batch just finished.
        done: examples this rank has finished in this call.
        total: examples this rank had to do in this call (finished batches of an earlier
            attempt excluded).
        examples_per_second: this rank's throughput in this call.
    """

    rank: int
    batch: int
    done: int
    total: int
    examples_per_second: float


class Reporter:
    """Tells the bar and the callback about each finished batch."""

    def __init__(
        self,
        rank: int,
        total: int,
        show: bool,
        callback: Callable[[Progress], Any] | None,
    ) -> None:
        self.rank, self.total, self.done = rank, total, 0
        self.callback = callback
        self._start = time.perf_counter()
        self._bar = _bar(total) if show and rank == 0 and _interactive() else None

    def update(self, batch: int, examples: int) -> None:
        self.done += examples
        if self._bar is not None:
            self._bar.update(examples)
        if self.callback is not None:
            elapsed = max(time.perf_counter() - self._start, 1e-9)
            info = Progress(self.rank, batch, self.done, self.total, self.done / elapsed)
            self.callback(info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _interactive() -> bool:
    """A person is watching: stderr is a terminal and no CI system is running us."""
    ci = any(os.environ.get(name) for name in ("CI", "GITHUB_ACTIONS", "TDLENS_NO_PROGRESS"))
    return not ci and sys.stderr.isatty()


def _bar(total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is an extra
        warnings.warn(
            "progress=True shows a bar with tqdm: `pip install tdlens[progress]` (or pass "
            "progress=False)",
            stacklevel=4,
        )
        return None
    return tqdm(total=total, unit="ex", unit_scale=True, desc="attributing", dynamic_ncols=True)
