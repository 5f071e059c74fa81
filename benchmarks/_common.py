"""Shared helpers for the tdlens benchmark scripts: timing, CPU peak memory, tables.

Timing (:func:`time_interleaved`) runs every variant once as a warm-up, then interleaves the
repetitions of all variants (round robin) so that slow drifts of the machine affect every
variant alike. Each run records its wall-clock time, the CPU time of the process (all its
threads), the kernel's share of that CPU time and the number of minor page faults. Other
processes on the machine only ever add wall time, so the fastest run is the least disturbed
estimate; CPU time is less sensitive to them but not immune. Page faults matter on CPU: glibc
hands large blocks back to the kernel when they are freed, and the next large tensor pays
for zeroed fresh pages again, which can cost as much as the arithmetic.

CPU peak memory is measured in two independent ways:

* :class:`AllocatorPeak` (:func:`allocator_peak_bytes`) runs the call under
  ``torch.autograd.profiler.profile`` with ``profile_memory=True``. Every allocation and free
  that goes through PyTorch's CPU allocator is recorded as a ``[memory]`` event carrying a
  signed byte count; the running sum of these events in time order is the memory held by
  tensors, and its maximum is the peak *extra* memory of the call (relative to what was
  allocated when it started). This sees every tensor (activations, saved tensors of autograd,
  gradients, results) but not memory that libraries allocate behind PyTorch's back (for
  instance oneDNN or MKL scratch buffers), nor the allocator's own slack.
* :class:`RssPeak` (:func:`rss_peak_bytes`) samples the resident set size of the process from
  a background thread (every 0.5 ms by default) after returning freed heap memory to the
  system with glibc's ``malloc_trim``. It sees everything the process touches, including what
  the allocator view misses and freed memory that glibc keeps, but it is noisier.

:func:`peak_memory` takes both (in two runs: the profiler's records would show in the RSS);
:func:`validate_memory_probes` checks them on a known allocation before they are trusted."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import platform
import random
import resource
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
    """Wall-clock and CPU times of the repeated runs of one variant.

    Attributes:
        times: Wall-clock seconds taken by each timed run (warm-up runs excluded).
        cpu_times: CPU seconds of the process (all threads, user and system) in each run. On a
            machine shared with other work, CPU time is far less disturbed than wall time.
        system_times: The kernel's share of ``cpu_times`` (mostly page faults here).
        page_faults: Minor page faults of the process in each run: first touches of memory
            the process just got from the kernel (glibc serves large blocks with ``mmap``).
    """

    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    system_times: list[float] = field(default_factory=list)
    page_faults: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median of the timed runs, in seconds."""
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        """Fastest timed run, in seconds."""
        return min(self.times)

    @property
    def cpu_min(self) -> float:
        """Smallest CPU time of the timed runs, in seconds."""
        return min(self.cpu_times)

    @property
    def system_median(self) -> float:
        """Median kernel CPU time of the timed runs, in seconds."""
        return statistics.median(self.system_times)

    @property
    def page_faults_median(self) -> float:
        """Median number of minor page faults of the timed runs."""
        return statistics.median(self.page_faults)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeat: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Times several zero-argument callables, interleaving their repetitions.

    Every callable runs ``warmup`` times first (untimed), then the callables run in turn
    ``repeat`` times each, in round-robin order, reversed every other round. Results are dropped as soon as a run ends so
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
        # Alternate the order so that no variant always runs right after the same other one
        # (what the previous call left in the allocator and caches otherwise biases the pair).
        order = list(fns.items()) if rep % 2 == 0 else list(reversed(fns.items()))
        for name, fn in order:
            before = resource.getrusage(resource.RUSAGE_SELF)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            after = resource.getrusage(resource.RUSAGE_SELF)
            timing = timings[name]
            timing.times.append(elapsed)
            timing.cpu_times.append(cpu)
            timing.system_times.append(after.ru_stime - before.ru_stime)
            timing.page_faults.append(after.ru_minflt - before.ru_minflt)
            if progress is not None:
                progress(
                    f"  [{rep + 1}/{repeat}] {name}: {elapsed:.3f} s ({cpu:.3f} s CPU, "
                    f"{timing.system_times[-1]:.3f} s of it in the kernel, "
                    f"{timing.page_faults[-1]} page faults)"
                )
    return timings


def paired_ratio(timings: dict[str, Timing], slow: str, fast: str) -> float:
    """Median over rounds of ``slow``'s time over ``fast``'s in the same round: the two runs
    of a round are adjacent, so the machine's slow and fast spells cancel, where the ratio of
    minima of a few runs moves by several percent from one run of a script to the next."""
    pairs = zip(timings[slow].times, timings[fast].times)
    return statistics.median(a / b for a, b in pairs)


def paired_ratio_interval(
    timings: dict[str, Timing], slow: str, fast: str, resamples: int = 400
) -> tuple[float, float]:
    """A 95% bootstrap interval of :func:`paired_ratio` (rounds resampled with replacement,
    a fixed seed): how far the median could move with the same machine and more rounds."""
    ratios = [a / b for a, b in zip(timings[slow].times, timings[fast].times)]
    draw = random.Random(0)
    medians = sorted(
        statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(resamples)
    )
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def rounds_for(once_s: float, at_least: int, seconds: float, at_most: int) -> int:
    """Timed rounds for a call that took ``once_s``: at least ``at_least``, more for short
    calls (``seconds`` of timed runs per variant), at most ``at_most``."""
    return max(at_least, min(at_most, int(seconds / max(once_s, 1e-6))))


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


class AllocatorPeak:
    """Context manager measuring the peak extra memory of PyTorch CPU tensors in its block.

    The block runs under the autograd profiler with memory profiling on; on exit, the signed
    sizes of the recorded allocation and free events are summed in time order and the maximum
    of the running sum is stored in :attr:`peak` (bytes above what was allocated on entry).

    Example:
        >>> with AllocatorPeak() as probe:
        ...     result = fn()
        >>> probe.peak
    """

    def __init__(self) -> None:
        self.peak = 0
        self._profiler = torch.autograd.profiler.profile(profile_memory=True, use_cpu=True)

    def __enter__(self) -> AllocatorPeak:
        gc.collect()
        with _quiet_stderr():
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        with _quiet_stderr():
            self._profiler.__exit__(None, None, None)
        results = self._profiler.kineto_results
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
        self.peak = peak


class RssPeak:
    """Context manager measuring the peak growth of the resident set size in its block.

    On entry, freed heap memory is handed back to the system with ``malloc_trim``, the resident
    size is read, and a background thread starts reading ``/proc/self/statm`` every
    ``interval_s`` seconds; on exit the thread stops and :attr:`peak` holds the largest
    resident size seen minus the one on entry. Only pages actually touched count.

    Args:
        interval_s: Sampling period of the background thread, in seconds.
    """

    def __init__(self, interval_s: float = 0.0005) -> None:
        self.peak = 0
        self._interval_s = interval_s
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._fd = -1
        self._baseline = self._max = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _resident(self) -> int:
        fields = os.pread(self._fd, 128, 0).split()
        return int(fields[1]) * self._page_size

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._resident())
            time.sleep(self._interval_s)

    def __enter__(self) -> RssPeak:
        gc.collect()
        malloc_trim()
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self._baseline = self._max = self._resident()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._max = max(self._max, self._resident())
        self._stop.set()
        self._thread.join()
        os.close(self._fd)
        self.peak = self._max - self._baseline


def allocator_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak extra memory held by PyTorch CPU tensors while ``fn`` runs (see AllocatorPeak).

    The result of ``fn`` is freed only after the measurement, so it is part of the peak.

    Args:
        fn: Zero-argument callable to measure.

    Returns:
        Peak number of bytes allocated by the call above what was allocated when it started.
    """
    with AllocatorPeak() as probe:
        result = fn()
    del result
    return probe.peak


def rss_peak_bytes(fn: Callable[[], Any], *, interval_s: float = 0.0005) -> int:
    """Peak growth of the process's resident set size while ``fn`` runs (see RssPeak).

    Args:
        fn: Zero-argument callable to measure.
        interval_s: Sampling period of the background thread, in seconds.

    Returns:
        Peak resident bytes during the call minus resident bytes just before it.
    """
    with RssPeak(interval_s) as probe:
        result = fn()
    del result
    gc.collect()
    malloc_trim()
    return probe.peak


def peak_memory(fn: Callable[[], Any]) -> tuple[int, int]:
    """Both peaks of ``fn``: allocator events, then resident set size, in two separate runs.

    They cannot share a run: the profiler's own event records are resident memory too (about
    0.5 GiB for a captum loop of 10 IG calls on an MLP, which launches many small operations).

    Args:
        fn: Zero-argument callable to measure.

    Returns:
        ``(allocator_peak_bytes, rss_peak_bytes)``.
    """
    return allocator_peak_bytes(fn), rss_peak_bytes(fn)


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

    allocated, resident = peak_memory(allocate)
    measured = {"allocator": allocated / MB, "rss": resident / MB}
    for name, value in measured.items():
        if abs(value - size_mb) > tolerance * size_mb:
            raise RuntimeError(
                f"memory probe {name!r} measured {value:.1f} MiB for a {size_mb} MiB tensor"
            )
    return measured


def environment_lines() -> list[str]:
    """Describes the software and the machine the benchmark runs on.

    Returns:
        Human-readable lines: torch version and threads, CPU count, Python, platform, and the
        glibc ``MALLOC_*`` settings from the environment (they change the timings a lot).
    """
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    malloc_line = ", ".join(f"{k}={v}" for k, v in sorted(malloc.items())) or "glibc defaults"
    return [
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"{torch.get_num_interop_threads()} inter-op threads",
        f"CPU cores visible: {os.cpu_count()}, machine: {platform.machine()} "
        f"({platform.processor() or 'unknown processor'})",
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"malloc settings: {malloc_line}",
    ]


def load_line() -> str:
    """Describes the current load of the machine (other processes skew timings).

    Returns:
        The 1, 5 and 15 minute load averages as one line.
    """
    one, five, fifteen = os.getloadavg()
    return f"load average (1, 5, 15 min): {one:.2f}, {five:.2f}, {fifteen:.2f}"


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
