"""Shared helpers for the tdlens benchmark scripts: timing, CPU peak memory, tables.

Timing uses :func:`time.perf_counter` around whole calls, runs every variant once as a warm-up,
then interleaves the repetitions of all variants (round robin) so that slow drifts of the
machine affect every variant alike.

CPU peak memory is measured in two independent ways:

* :func:`allocator_peak_bytes` runs the call under ``torch.autograd.profiler.profile`` with
  ``profile_memory=True``. Every allocation and free that goes through PyTorch's CPU allocator
  is recorded as a ``[memory]`` event carrying a signed byte count; the running sum of these
  events in time order is the memory held by tensors, and its maximum is the peak *extra*
  memory of the call (relative to what was allocated when it started). This sees every tensor
  (activations, saved tensors of autograd, gradients, results) but not memory that libraries
  allocate behind PyTorch's back (for instance oneDNN or MKL scratch buffers).
* :func:`rss_peak_bytes` samples the resident set size of the process from a background
  thread (every 0.5 ms by default) after returning freed heap memory to the system with
  glibc's ``malloc_trim``. It sees everything the process touches, including the sources the
  allocator view misses, but it is noisier.

:func:`validate_memory_probes` checks both on a known allocation before they are trusted.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.autograd import DeviceType

MB = 1024**2
_MEMORY_EVENT = "[memory]"


@dataclass
class Timing:
    """Wall-clock times of the repeated runs of one variant.

    Attributes:
        times: Seconds taken by each timed run (warm-up runs excluded).
    """

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median of the timed runs, in seconds."""
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        """Fastest timed run, in seconds."""
        return min(self.times)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeat: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Times several zero-argument callables, interleaving their repetitions.

    Every callable runs ``warmup`` times first (untimed), then the callables run in turn
    ``repeat`` times each, in round-robin order. Results are dropped as soon as a run ends so
    that one variant's output never inflates another's memory.

    Args:
        fns: Mapping from variant name to the callable to time.
        warmup: Untimed runs of each callable before timing starts.
        repeat: Timed runs of each callable.
        progress: Optional function that receives one progress line per timed run.

    Returns:
        Mapping from variant name to its :class:`Timing`.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    timings = {name: Timing() for name in fns}
    for rep in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            timings[name].times.append(elapsed)
            if progress is not None:
                progress(f"  [{rep + 1}/{repeat}] {name}: {elapsed:.3f} s")
    return timings


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


_LIBC = _load_libc()


def malloc_trim() -> bool:
    """Returns freed heap memory to the operating system (glibc only).

    Returns:
        True if glibc's ``malloc_trim`` was available and called, False otherwise.
    """
    if _LIBC is None or not hasattr(_LIBC, "malloc_trim"):
        return False
    _LIBC.malloc_trim(0)
    return True


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences file descriptor 2 (the profiler's start/stop log lines go there from C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def allocator_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak extra memory held by PyTorch CPU tensors while ``fn`` runs.

    The call runs under the autograd profiler with memory profiling on; the signed sizes of
    the recorded allocation and free events are summed in time order and the maximum of the
    running sum is returned. The result of ``fn`` is freed only after the profiler stops, so
    the returned tensor is part of the peak.

    Args:
        fn: Zero-argument callable to measure.

    Returns:
        Peak number of bytes allocated by the call above what was allocated when it started.
    """
    gc.collect()
    prof = torch.autograd.profiler.profile(profile_memory=True, use_cpu=True)
    with _quiet_stderr():
        prof.__enter__()
    try:
        result = fn()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    del result
    results = prof.kineto_results
    if results is None:
        raise RuntimeError("the profiler returned no results")
    events = [
        (event.start_ns(), event.nbytes())
        for event in results.events()
        if event.name() == _MEMORY_EVENT and event.device_type() == DeviceType.CPU
    ]
    events.sort(key=lambda item: item[0])
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def _resident_bytes(fd: int, page_size: int) -> int:
    fields = os.pread(fd, 128, 0).split()
    return int(fields[1]) * page_size


def rss_peak_bytes(fn: Callable[[], Any], *, interval_s: float = 0.0005) -> int:
    """Peak growth of the process's resident set size while ``fn`` runs.

    Freed heap memory is handed back to the system with ``malloc_trim`` first, then a
    background thread reads ``/proc/self/statm`` every ``interval_s`` seconds while the call
    runs. Only pages actually touched count, so a tensor that is allocated but never written
    does not show.

    Args:
        fn: Zero-argument callable to measure.
        interval_s: Sampling period of the background thread, in seconds.

    Returns:
        Peak resident bytes during the call minus resident bytes just before it.
    """
    gc.collect()
    malloc_trim()
    page_size = os.sysconf("SC_PAGE_SIZE")
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        baseline = _resident_bytes(fd, page_size)
        peak = baseline
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _resident_bytes(fd, page_size))
                time.sleep(interval_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = fn()
            peak = max(peak, _resident_bytes(fd, page_size))
        finally:
            stop.set()
            sampler.join()
        del result
    finally:
        os.close(fd)
    gc.collect()
    malloc_trim()
    return peak - baseline


def validate_memory_probes(size_mb: int = 100, tolerance: float = 0.05) -> dict[str, float]:
    """Checks both memory probes on a known allocation.

    The probe call allocates a ``size_mb`` MiB float32 tensor, fills it, and returns its sum;
    both probes must report ``size_mb`` MiB within ``tolerance`` (relative).

    Args:
        size_mb: Size of the test tensor in MiB.
        tolerance: Largest accepted relative error.

    Returns:
        Mapping from probe name ("allocator", "rss") to the measured MiB.

    Raises:
        RuntimeError: If a probe is off by more than ``tolerance``.
    """

    def allocate() -> torch.Tensor:
        tensor = torch.empty(size_mb * MB // 4, dtype=torch.float32)
        tensor.fill_(1.0)
        return tensor.sum()

    measured = {
        "allocator": allocator_peak_bytes(allocate) / MB,
        "rss": rss_peak_bytes(allocate) / MB,
    }
    for name, value in measured.items():
        if abs(value - size_mb) > tolerance * size_mb:
            raise RuntimeError(
                f"memory probe {name!r} measured {value:.1f} MiB for a {size_mb} MiB tensor"
            )
    return measured


def environment_lines() -> list[str]:
    """Describes the software and the machine the benchmark runs on.

    Returns:
        Human-readable lines: torch version and threads, CPU count, Python, platform.
    """
    return [
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"{torch.get_num_interop_threads()} inter-op threads",
        f"CPU cores visible: {os.cpu_count()}, machine: {platform.machine()} "
        f"({platform.processor() or 'unknown processor'})",
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
    ]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Formats rows of strings as a Markdown table with padded columns.

    Args:
        headers: Column titles.
        rows: One sequence of cell strings per row, each as long as ``headers``.

    Returns:
        The table, one line per row, without a trailing newline.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), separator, *(line(row) for row in rows)])
