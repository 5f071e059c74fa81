"""Weight methods: task vectors, temporary pruning, module replacement (SAEs, adapters).

Every method that edits a model does it inside a ``with`` block and restores the model bit for
bit on exit, also after an exception.

Example:
    >>> from tdlens import weights
    >>> tv = weights.task_vector(base.state_dict(), tuned.state_dict())
    >>> with weights.apply(base, 0.5 * tv):
    ...     y = base(x)
"""

from .pruning import Pruning, prune
from .replace import replace
from .task_vectors import TaskVector, apply, task_vector

__all__ = ["Pruning", "TaskVector", "apply", "prune", "replace", "task_vector"]
