"""`import tdlens` costs no more than torch: heavy packages load on first use."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

import tdlens


def run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_import_loads_no_heavy_package():
    loaded = run(
        "import sys, tdlens; tdlens.IntegratedGradients; tdlens.Scope; "
        "print(' '.join(m for m in ('tensordict', 'transformers', 'matplotlib', 'sklearn', "
        "'captum') if m in sys.modules))"
    )
    assert loaded == ""


def test_import_time_within_ten_percent_of_torch():
    """Interleaved runs, best of each: the ratio must stay under 1.1."""

    def best(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    torch_times, tdlens_times = [], []
    for _ in range(5):
        torch_times.append(best("import torch"))
        tdlens_times.append(best("import tdlens"))
    assert min(tdlens_times) <= 1.1 * min(torch_times), (torch_times, tdlens_times)


def test_tensordict_input_works_after_a_lazy_import():
    out = run(
        "import sys, torch, tdlens\n"
        "assert 'tensordict' not in sys.modules\n"
        "from tensordict import TensorDict\n"
        "model = lambda x: x.sum(1)\n"
        "td = TensorDict(x=torch.ones(2, 3), batch_size=[2])\n"
        "print(type(tdlens.Saliency(model).attribute(td)).__name__)"
    )
    assert out == "TensorDict"


def test_public_names_resolve():
    for name in ("Saliency", "InputXGradient", "IntegratedGradients", "Scope", "Target"):
        assert getattr(tdlens, name).__name__ == name
    assert isinstance(tdlens.__version__, str) and torch.__version__
