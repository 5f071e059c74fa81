"""The run directory: a manifest of the arguments, a log of the finished batches, and the
result as a memory-mapped TensorDict (tensordict's own on-disk layout, so
``TensorDict.load_memmap(out)`` opens it).

The result files are allocated once, sparse, at the dataset's length. Rows are written with
``os.pwrite`` into those files rather than through a mapping, so the pages of rows already
written never count in the writing process's memory: a run holds one batch, whatever the
dataset's size. A batch is logged as finished only after its rows are on disk
(``fdatasync``); a run killed at any moment therefore loses at most the batches in flight
and those not yet synced (syncs are spaced to cost at most 2% of the run).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError, TdlensError

MANIFEST = "tdlens-run.json"
DONE = "tdlens-done"
FORMAT = 1

FlatKey = tuple[str, ...]


class RunMismatchError(TdlensError, ValueError):
    """The output directory holds a different run (other arguments or other files)."""


class RunDirectory:
    """The manifest and finished-batch log of one run directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def allocated(self) -> bool:
        return (self.path / "meta.json").exists()

    def prepare(self, arguments: dict[str, str], info: dict[str, Any], resume: bool) -> None:
        """Create the directory and manifest, or check that it holds this very run.

        Args:
            arguments: one digest per argument (see :mod:`.fingerprint`).
            info: readable facts written to the manifest (length, batch size...).
            resume: keep a matching run's finished batches; ``False`` starts over, deleting
                the previous run's files (and only them).
        """
        manifest = self._read()
        if manifest is None and self.path.exists() and any(self.path.iterdir()):
            raise RunMismatchError(
                f"out={str(self.path)!r} exists and is not a tdlens dataset run (it has no "
                f"{MANIFEST}); give a new or empty directory"
            )
        if manifest is not None:
            changed = _changed(manifest.get("arguments", {}), arguments)
            if not changed and resume:
                return
            if changed and resume and self.finished():  # a run that failed at once is no loss
                raise RunMismatchError(
                    f"out={str(self.path)!r} holds a run with different arguments (changed: "
                    f"{', '.join(changed)}); resuming it would mix two runs. Give a new "
                    "directory, or resume=False to delete that run and start over"
                )
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"format": FORMAT, "arguments": arguments, **info}
        temporary = self.path / (MANIFEST + ".tmp")
        temporary.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(temporary, self.path / MANIFEST)  # atomic: never half a manifest

    def check(self, arguments: dict[str, str]) -> None:
        """On ranks other than 0: the manifest rank 0 wrote describes this rank's run too."""
        manifest = self._read()
        if manifest is None:
            raise RunMismatchError(
                f"rank 0 prepared out={str(self.path)!r} but this rank finds no {MANIFEST} "
                "there: every rank must see the same directory (a shared file system)"
            )
        changed = _changed(manifest.get("arguments", {}), arguments)
        if changed:
            raise RunMismatchError(f"this rank's arguments differ from rank 0's: {changed}")

    def clear(self) -> None:
        """Delete the files of a previous run (the manifest, log and result), nothing else."""
        meta = self.path / "meta.json"
        names = {MANIFEST, DONE, "meta.json"}
        if meta.exists():
            names |= {k for k in json.loads(meta.read_text()) if not k.startswith("_")}
        for name in names:
            for target in (self.path / name, self.path / f"{name}.memmap"):
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()

    def finished(self) -> set[int]:
        """The batches every earlier attempt logged as finished."""
        done: set[int] = set()
        logs = self.path / DONE
        for log in logs.glob("*.log") if logs.exists() else ():
            for line in log.read_text().splitlines():
                if line.strip().isdigit():  # a line cut short by a kill is skipped
                    done.add(int(line))
        return done

    def log(self, rank: int) -> DoneLog:
        (self.path / DONE).mkdir(exist_ok=True)
        return DoneLog(self.path / DONE / f"rank{rank}.log")

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            return None


class DoneLog:
    """An append-only list of finished batch numbers (one file per rank: no shared writes)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a")

    def add(self, batches: list[int]) -> None:
        self._file.write("".join(f"{batch}\n" for batch in batches))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class ResultStore:
    """Row-wise writes into the memory-mapped result files of a run directory."""

    def __init__(self, path: Path) -> None:
        from tensordict import TensorDict

        self.path = path
        result = TensorDict.load_memmap(path)
        self.length = int(result.batch_size[0])
        self.layout: dict[FlatKey, tuple[list[int], torch.dtype]] = {}
        self._files: dict[FlatKey, int] = {}
        for key in result.keys(include_nested=True, leaves_only=True):
            key = (key,) if isinstance(key, str) else tuple(key)
            leaf = result.get(key)
            self.layout[key] = (list(leaf.shape[1:]), leaf.dtype)
            self._files[key] = os.open(leaf.filename, os.O_WRONLY)

    @staticmethod
    def allocate(path: Path, rows: dict[FlatKey, Tensor], length: int) -> None:
        """Create sparse result files of ``length`` rows shaped like ``rows``' entries."""
        from tensordict import TensorDict

        template = TensorDict({}, batch_size=[1])
        for key, value in rows.items():
            template.set(key, value[:1].cpu())
        template.expand(length).memmap_like(str(path))  # sparse files: no memory, no writes

    def write(self, start: int, rows: dict[FlatKey, Tensor], where: str) -> None:
        """Put ``rows`` (``[n, ...]`` each) at rows ``start..start+n-1`` (see :meth:`sync`)."""
        self._check(rows, where)
        for key, value in rows.items():
            data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            offset = start * (data.nbytes // max(value.shape[0], 1))
            view = memoryview(data)  # type: ignore[arg-type]
            while view.nbytes:
                written = os.pwrite(self._files[key], view, offset)
                view, offset = view[written:], offset + written

    def sync(self) -> None:
        """Make the rows written so far durable. A killed process loses nothing written (the
        kernel holds it); this is for a machine that goes down before writing it back."""
        for fd in self._files.values():
            os.fdatasync(fd)

    def _check(self, rows: dict[FlatKey, Tensor], where: str) -> None:
        if rows.keys() != self.layout.keys():
            new = sorted("/".join(k) for k in rows.keys() - self.layout.keys())
            gone = sorted("/".join(k) for k in self.layout.keys() - rows.keys())
            raise InputError(
                f"{where} gives results with entries {new or ''} {'and ' if new and gone else ''}"
                f"without {gone or ''} compared with the first batch: the batches change "
                "structure. Every batch must hold the same inputs (keys and shapes after the "
                "batch dimension)"
            )
        for key, value in rows.items():
            shape, dtype = self.layout[key]
            if list(value.shape[1:]) != shape or value.dtype != dtype:
                raise InputError(
                    f"{where} gives {'/'.join(key)!r} of shape [B, {', '.join(map(str, value.shape[1:]))}] "
                    f"and dtype {value.dtype}, but the first batch gave [B, "
                    f"{', '.join(map(str, shape))}] and {dtype}: the batches change structure. "
                    "Every batch must hold inputs of the same shapes after the batch dimension "
                    "(pad or resize them in the dataset or collate_fn)"
                )

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files = {}


def _changed(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
