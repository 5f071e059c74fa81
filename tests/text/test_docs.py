"""The examples of docs/text.md run, in order, as one script."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

DOC = Path(__file__).resolve().parents[2] / "docs" / "text.md"


def test_text_guide_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 7
    scope: dict = {}
    for block in blocks[1:]:  # the first is the overview, on the user's own model
        exec(compile(block, str(DOC), "exec"), scope)
    printed = capsys.readouterr().out
    assert "WORD" in printed and "SENTENCE" in printed
