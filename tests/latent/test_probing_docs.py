"""The examples of docs/probing.md run as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("sklearn")

DOC = Path(__file__).resolve().parents[2] / "docs" / "probing.md"


def test_probing_doc_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["probes"].forward_passes == 4  # the BERT loader: one pass per batch
    assert abs(namespace["latent"].intrinsic_dimension(namespace["plane"]) - 2) < 0.3


def test_latent_and_weights_are_lazy():
    """`tdlens.latent` and `tdlens.weights` load on first use, without tensordict or sklearn."""
    import subprocess
    import sys

    code = (
        "import sys, tdlens; assert 'tdlens.latent' not in sys.modules; "
        "tdlens.latent.fit_probes; tdlens.weights.prune; "
        "print(' '.join(m for m in ('tensordict', 'sklearn', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
