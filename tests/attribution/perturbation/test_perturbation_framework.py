"""The perturbation framework: targets, input structures, chunking, seeds, model safety, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdlens
from tdlens.core.errors import InputError, TdlensError

METHODS = {
    "FeatureAblation": {},
    "Occlusion": {"sliding_window_shapes": (2,)},
    "FeaturePermutation": {"seed": 0},
    "ShapleyValues": {},
    "ShapleyValueSampling": {"n_samples": 4, "seed": 0},
    "KernelShap": {"n_samples": 20, "seed": 0},
    "Lime": {"n_samples": 20, "seed": 0},
    "Sobol": {"n_samples": 4, "seed": 0},
}


class Counting(nn.Module):
    """A tiny MLP that counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


@pytest.fixture
def model() -> Counting:
    return Counting()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def snapshot(model: nn.Module) -> tuple:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def assert_same(model: nn.Module, before: tuple) -> None:
    state, flags, grads = snapshot(model)
    assert flags == before[1] and grads == before[2]
    for key, value in state.items():
        assert torch.equal(value, before[0][key])


@pytest.mark.parametrize("name", METHODS)
def test_targets_cost_no_extra_forward_passes(name, model, x) -> None:
    """targets=[...] runs exactly the forward calls of one target, and equals stacked calls."""
    method = getattr(tdlens, name)(model)
    model.calls = 0
    single = method.attribute(x, target=0, **METHODS[name])
    one_target_calls = model.calls
    model.calls = 0
    many = method.attribute(x, targets=[0, 2, 1], **METHODS[name])
    assert model.calls == one_target_calls
    assert many.shape == (3, 3, 5)
    torch.testing.assert_close(
        many[:, 0], single, atol=1e-7, rtol=0
    )  # Lasso: KKT conditions to tol
    for k, t in enumerate([0, 2, 1]):
        stacked = method.attribute(x, target=t, **METHODS[name])
        torch.testing.assert_close(many[:, k], stacked, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", METHODS)
def test_chunking_does_not_change_results(name, model, x) -> None:
    """internal_batch_size / perturbations_per_eval change the passes, not the result."""
    method = getattr(tdlens, name)(model)
    whole = method.attribute(x, target=None, **METHODS[name])
    model.calls = 0
    chunked = method.attribute(x, target=None, internal_batch_size=2, **METHODS[name])
    assert model.calls > 2
    torch.testing.assert_close(chunked, whole, atol=1e-7, rtol=0)  # Lasso: KKT conditions to tol
    by_eval = method.attribute(x, target=None, perturbations_per_eval=2, **METHODS[name])
    torch.testing.assert_close(by_eval, whole, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", METHODS)
def test_model_untouched_also_when_forward_raises(name, model, x) -> None:
    before = snapshot(model)
    getattr(tdlens, name)(model).attribute(x, target=1, **METHODS[name])
    assert_same(model, before)

    class Boom(Exception):
        pass

    def explode(*_args):
        if model.calls > 1:
            raise Boom

    handle = model.net[0].register_forward_pre_hook(explode)
    try:
        before = snapshot(model)
        model.calls = 0
        with pytest.raises(Boom):
            getattr(tdlens, name)(model).attribute(
                x, target=1, internal_batch_size=3, **METHODS[name]
            )
        assert_same(model, before)
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ["ShapleyValueSampling", "KernelShap", "Lime", "Sobol"])
def test_seeds_make_sampling_reproducible(name, model, x) -> None:
    method = getattr(tdlens, name)(model)
    options = {k: v for k, v in METHODS[name].items() if k != "seed"}
    first = method.attribute(x, target=0, seed=5, **options)
    torch.testing.assert_close(method.attribute(x, target=0, seed=5, **options), first)
    again = method.attribute(x, target=0, generator=torch.Generator().manual_seed(5), **options)
    torch.testing.assert_close(again, first)
    assert not torch.allclose(method.attribute(x, target=0, seed=6, **options), first)


class Structured(nn.Module):
    """Keyword inputs: a float feature vector and integer token ids (embedded)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(10, 3).double()
        self.head = nn.Linear(3 + 2, 2).double()

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([dense, self.embed(ids).mean(1)], dim=1))


def test_dict_and_tensordict_inputs_with_integer_ids() -> None:
    """Dict and TensorDict inputs; token ids are perturbed when named in keys=."""
    model = Structured()
    dense = torch.randn(2, 2, dtype=torch.float64)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    fa = tdlens.FeatureAblation(model)
    attr = fa.attribute({"dense": dense, "ids": ids}, target=1)
    assert set(attr) == {"dense"}  # integer entries pass through unless named
    both = fa.attribute({"dense": dense, "ids": ids}, target=1, keys=["dense", "ids"])
    assert both["ids"].shape == (2, 3) and both["ids"].is_floating_point()
    torch.testing.assert_close(both["dense"], attr["dense"])
    with torch.no_grad():  # ablating token 0 of example 0 replaces it by id 0 (the baseline)
        base = model(dense, ids)[0, 1] - model(dense, torch.tensor([[0, 2, 3], [4, 5, 6]]))[0, 1]
    torch.testing.assert_close(both["ids"][0, 0], base)
    from tensordict import TensorDict

    td = TensorDict({"dense": dense, "ids": ids}, batch_size=[2])
    ks = tdlens.KernelShap(model).attribute(
        td, target=1, keys=["dense", "ids"], n_samples=64, seed=0
    )
    assert isinstance(ks, TensorDict) and ks["ids"].shape == (2, 3)
    sv = tdlens.ShapleyValues(model).attribute(td, target=1, keys=["dense", "ids"])
    torch.testing.assert_close(ks["ids"], sv["ids"])  # 5 features: 2**5 samples are exact


def test_tuple_inputs_and_callable_models() -> None:
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(1, keepdim=True) + a[:, :1]

    a, b = torch.randn(2, 3).double(), torch.randn(2, 3).double()
    attr = tdlens.ShapleyValues(forward).attribute((a, b), target=0)
    assert isinstance(attr, tuple) and attr[0].shape == (2, 3)
    total = attr[0].sum(1) + attr[1].sum(1)
    torch.testing.assert_close(total, forward(a, b)[:, 0])  # zero baselines: f(0) = 0


def test_output_selects_a_named_output(x) -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 2).double()

        def forward(self, x):
            return {"logits": self.lin(x), "value": x.sum(1)}

    model = TwoHeads()
    attr = tdlens.FeatureAblation(model).attribute(x, output="value")
    torch.testing.assert_close(attr, x)


def test_error_feature_mask_shape(model, x) -> None:
    with pytest.raises(InputError, match=r"feature_mask .* shape \[1, 4\].*\[3, 5\]"):
        tdlens.FeatureAblation(model).attribute(x, target=0, feature_mask=torch.zeros(1, 4).long())


def test_error_window_larger_than_input(model, x) -> None:
    with pytest.raises(InputError, match=r"sliding window \(6,\) is larger than input"):
        tdlens.Occlusion(model).attribute(x, sliding_window_shapes=(6,), target=0)


def test_error_kernel_shap_too_few_samples(model, x) -> None:
    with pytest.raises(InputError, match=r"5 feature values from n_samples=4.*n_samples >= 6"):
        tdlens.KernelShap(model).attribute(x, target=0, n_samples=4)


def test_error_too_many_features_for_exact_shapley() -> None:
    model = nn.Linear(20, 1).double()
    model.calls = 0
    with pytest.raises(TdlensError, match=r"20 features.*2\*\*20.*ShapleyValueSampling"):
        tdlens.ShapleyValues(model).attribute(torch.randn(2, 20).double(), target=0)


def test_progress_bar_is_optional(model, x, capsys) -> None:
    """show_progress=True works with or without tqdm; off by default when not interactive."""
    tdlens.FeatureAblation(model).attribute(x, target=0, internal_batch_size=3)
    assert capsys.readouterr().err == ""
    tdlens.FeatureAblation(model).attribute(x, 0, show_progress=True, internal_batch_size=3)
    assert "Feature Ablation attribution" in capsys.readouterr().err  # captum's text


def test_docs_worked_example_runs() -> None:
    """The worked example of docs/perturbation.md (a new method in 30 lines) runs as written."""
    import pathlib
    import re

    docs = pathlib.Path(__file__).parents[3] / "docs" / "perturbation.md"
    if not docs.exists():
        pytest.skip("docs not in this checkout")
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), re.S)
    namespace: dict = {}
    exec(compile(blocks[1], str(docs), "exec"), namespace)
    attr, model, x = namespace["attr"], namespace["model"], namespace["x"]
    torch.testing.assert_close(attr[:, 1], model.weight[1].detach() * x)


def test_library_imports_stay_light() -> None:
    import subprocess
    import sys

    code = (  # compared with what torch itself loads (some torch builds import tqdm)
        "import sys, torch; before = set(sys.modules); import tdlens.attribution.perturbation; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in ('tqdm', 'sklearn', 'captum', 'tensordict') if m in new))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_rows_per_forward_follow_the_cpu_budget() -> None:
    """Without internal_batch_size, a CPU forward pass takes about 2**18 input elements (at
    least the batch, at most 8192, whole samples of B rows): small enough that activations
    stay below glibc's mmap threshold, also for large inputs (no floor of 64 rows)."""
    from tdlens.attribution.perturbation import base
    from tdlens.core.structure import InputBatch

    def rows(*shape: int) -> int:
        return base._default_rows(InputBatch.build(torch.zeros(*shape)))

    assert rows(2, 64) == 2**18 // 64
    assert rows(2, 3, 32, 32) == 84  # 2**18 // 3072 = 85, rounded down to whole samples
    assert rows(8, 3, 32, 32) == 80
    assert rows(2, 3, 224, 224) == 2
    assert rows(8, 1, 112, 112) == 16  # 2**18 // 12544 = 20, rounded down to whole samples
    assert rows(8, 1, 224, 224) == 8  # the batch
    assert rows(100, 3, 224, 224) == 100
    assert rows(3, 4) == 8190
