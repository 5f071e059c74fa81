"""TextAttribution: the scores of one text's elements, with its renderings and JSON form."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import InputError


@dataclass
class TextAttribution:
    """The explanation of one text.

    Attributes:
        text: the explained text (for generation: the prompt).
        elements: the scored tokens, words or sentences, in order (for generation: those of
            the prompt, then those of the generated text).
        scores: ``[K, len(elements)]``, one row per explained target; for generation one row
            per generated token, NaN where an element lies in the future of that token.
        targets: the K explained class ids (classification) or generated token ids.
        target_names: a label per target (class name, or the generated token's text).
        granularity: ``"token"``, ``"word"``, ... method: the attribution method's name.
        n_prompt_elements: for generation, how many elements belong to the prompt.

    Example:
        >>> e = explainer(["a great movie"])[0]
        >>> e.elements, e.scores.shape          # (['a', 'great', 'movie'], [1, 3])
        >>> print(e)                             # coloured text in a terminal
    """

    text: str
    elements: list[str]
    scores: Tensor
    targets: list[int]
    target_names: list[str]
    granularity: str = "token"
    method: str = ""
    n_prompt_elements: int | None = None
    generated_text: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.scores.dim() != 2 or self.scores.shape[1] != len(self.elements):
            raise InputError(
                f"scores of shape {list(self.scores.shape)} for {len(self.elements)} elements: "
                "expected [K, n_elements]"
            )

    # -- renderings ----------------------------------------------------------------------------
    def to_html(self, *, standalone: bool = True) -> str:
        """HTML of the text coloured by score (one line per target; hover shows the value).
        Every text from the model or the data is escaped."""
        from .rendering import html

        return html(self, standalone=standalone)

    def _repr_html_(self) -> str:
        return self.to_html(standalone=False)

    def to_terminal(self) -> str:
        """ANSI-coloured text, one line per target."""
        from .rendering import terminal

        return terminal(self)

    def __str__(self) -> str:
        return self.to_terminal()

    def top(self, k: int = 1, target: int = 0) -> list[str]:
        """The ``k`` highest-scored elements for target row ``target``."""
        row = torch.nan_to_num(self.scores[target].double(), nan=-math.inf)
        return [self.elements[i] for i in row.argsort(descending=True)[:k].tolist()]

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        scores = [[None if math.isnan(v) else v for v in row] for row in self.scores.tolist()]
        return {
            "text": self.text,
            "elements": list(self.elements),
            "scores": scores,
            "targets": list(self.targets),
            "target_names": list(self.target_names),
            "granularity": self.granularity,
            "method": self.method,
            "n_prompt_elements": self.n_prompt_elements,
            "generated_text": self.generated_text,
        }

    def to_json(self, **kwargs: Any) -> str:
        """The explanation as JSON (NaN scores as ``null``); :meth:`from_json` reads it back."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> TextAttribution:
        record = json.loads(data) if isinstance(data, str) else dict(data)
        missing = [k for k in ("text", "elements", "scores", "targets") if k not in record]
        if missing:
            raise InputError(f"TextAttribution JSON lacks the field(s) {missing}")
        rows = [[math.nan if v is None else v for v in row] for row in record["scores"]]
        scores = torch.tensor(rows, dtype=torch.float64).reshape(-1, len(record["elements"]))
        return cls(
            text=record["text"],
            elements=list(record["elements"]),
            scores=scores,
            targets=[int(t) for t in record["targets"]],
            target_names=list(record.get("target_names") or map(str, record["targets"])),
            granularity=record.get("granularity", "token"),
            method=record.get("method", ""),
            n_prompt_elements=record.get("n_prompt_elements"),
            generated_text=record.get("generated_text"),
        )
