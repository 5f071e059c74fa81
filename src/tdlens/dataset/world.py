"""The processes that share a dataset run: this rank, how many there are, and how they agree.

``torch.distributed`` is used only here, and only when the user's launcher (``torchrun``, a
SLURM script, ...) has already initialised a process group; a single process needs nothing.
Every synchronisation point gathers a small status from each rank, so that an error on one
rank is raised on all of them instead of leaving the others waiting at a barrier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import TdlensError


class RankError(TdlensError, RuntimeError):
    """Another rank of a distributed run failed, or the ranks disagree."""


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (``0`` of ``1`` without a process group)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def detect(cls) -> World:
        """The initialised default process group, if any."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def sync(self, error: BaseException | None = None, what: str = "") -> None:
        """Wait for every rank; if any rank failed, raise on every rank.

        Args:
            error: this rank's failure (re-raised by the caller), or ``None``.
            what: the step, for the message the other ranks raise.
        """
        statuses = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        failed = [(rank, message) for rank, message in enumerate(statuses) if message]
        if failed and error is None:
            rank, message = failed[0]
            raise RankError(f"rank {rank} failed {what}: {message}")


def shard(n_batches: int, world: World) -> list[int]:
    """The batches this rank attributes: every ``size``-th batch from ``rank`` on.

    Batches, not examples, are dealt out so that every batch holds the same examples whatever
    the number of processes (results are then bit-identical to one process's), and every
    example belongs to exactly one rank, also when the counts do not divide evenly.
    """
    return list(range(world.rank, n_batches, world.size))
