"""The code blocks of docs/latent.md run as written, in order, in one namespace."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

DOCS = pathlib.Path(__file__).parents[2] / "docs" / "latent.md"


def test_the_guide_runs():
    pytest.importorskip("transformers")
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) >= 7
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
    res, heads = namespace["res"], namespace["heads"]
    assert res.scores.shape == (2, 24) and float(res.scores[1, -1]) > 0.8
    assert res.forward_passes == 3
    assert heads.scores.shape == (1, 4, 1)
    assert namespace["gd"].extra["grad_drop"].shape == (8, 2, 24)
    assert namespace["attr"].shape == (8, 24, 64)
    assert namespace["scope"].cache["blocks.0[:, -1]"].shape == torch.Size([8, 64])
    assert namespace["out"].shape == (2, 10)
