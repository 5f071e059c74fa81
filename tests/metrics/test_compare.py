"""compare: several methods, several metrics, one table."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import tdlens
from tdlens.core.errors import InputError
from tdlens.metrics import compare, deletion, mu_fidelity
from tests.conftest import randn


def test_compare_rows_values_and_table(cnn):
    x = randn(3, 1, 8, 8)
    methods = {
        "saliency": tdlens.Saliency(cnn),
        "ig": tdlens.IntegratedGradients(cnn),
        "random": lambda inputs, **_: randn(*inputs.shape, seed=5),
    }
    table = compare(
        cnn,
        x,
        methods,
        metrics=["deletion", "insertion", "infidelity", "sensitivity_max", "mu_fidelity"],
        target=2,
        attribute_options={"ig": {"n_steps": 8}},
        metric_options={"deletion": {"n_steps": 5}, "mu_fidelity": {"n_samples": 6}},
    )
    assert [row["method"] for row in table] == ["saliency", "ig", "random"]
    ig_attr = tdlens.IntegratedGradients(cnn).attribute(x, target=2, n_steps=8)
    expected = deletion(cnn, x, ig_attr, target=2, n_steps=5).score
    torch.testing.assert_close(table.values["ig"]["deletion"], expected)
    assert table[1]["deletion"] == pytest.approx(float(expected.mean()))
    assert table.values["saliency"]["mu_fidelity"].shape == (3,)
    assert all(row["attribute_s"] >= 0 and row["metrics_s"] > 0 for row in table)
    text = str(table)
    assert text.splitlines()[0].startswith("| method") and "deletion ↓" in text
    assert "insertion ↑" in text and len(text.splitlines()) == 5


def test_compare_targets_and_options_errors(mlp):
    x = randn(4, 6)
    table = compare(
        mlp,
        x,
        {"saliency": tdlens.Saliency(mlp)},
        metrics=["comprehensiveness"],
        targets=[0, 1],
    )
    assert table.values["saliency"]["comprehensiveness"].shape == (4, 2)
    with pytest.raises(InputError, match="unknown metric"):
        compare(mlp, x, {"s": tdlens.Saliency(mlp)}, metrics=["deletoin"])
    with pytest.raises(InputError, match="attribute_options names"):
        compare(mlp, x, {"s": tdlens.Saliency(mlp)}, attribute_options={"n_steps": 4})
    with pytest.raises(InputError, match="metric_options names"):
        compare(mlp, x, {"s": tdlens.Saliency(mlp)}, metric_options={"road": {}})
    assert mu_fidelity  # the metric functions are the ones compare runs


def test_importing_metrics_loads_nothing_heavier_than_torch():
    code = (
        "import sys, tdlens; tdlens.metrics.deletion; tdlens.metrics.compare; "
        "print(' '.join(m for m in ('tensordict', 'transformers', 'matplotlib', 'sklearn', "
        "'captum', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert callable(tdlens.metrics.infidelity) and callable(tdlens.metrics.road)
