"""Dataset-scale attribution: any method over a whole dataset, into a memory-mapped
TensorDict, resumable after a crash, sharded across ``torch.distributed`` ranks.

Example:
    >>> result = tdlens.attribute_dataset(tdlens.Saliency(model), dataset, out="runs/sal")
"""

from __future__ import annotations

from .progress import Progress
from .run import attribute_dataset
from .store import RunMismatchError
from .world import RankError

__all__ = ["Progress", "RankError", "RunMismatchError", "attribute_dataset"]
