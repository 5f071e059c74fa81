"""attribute_dataset in one process: equal to stacked per-batch calls, every input kind, the
stored entries, clear errors, and the model left as it was."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import tdlens
from tdlens.dataset import Progress, RunMismatchError
from tests.conftest import MLP, assert_untouched, model_state, randn, seeded

N, BATCH = 11, 4  # the last batch is short


@pytest.fixture
def xy():
    return randn(N, 6, seed=3), torch.randint(
        0, 4, (N,), generator=torch.Generator().manual_seed(2)
    )


def stacked(method, x, y, **options):
    """The reference: one attribute() call per batch of 4, concatenated."""
    parts = [
        method.attribute(x[i : i + BATCH], target=y[i : i + BATCH], **options)
        for i in range(0, N, BATCH)
    ]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


@pytest.mark.parametrize(
    ("method_class", "options"),
    [
        (tdlens.IntegratedGradients, {"n_steps": 7}),
        (tdlens.Saliency, {}),
        (tdlens.FeatureAblation, {}),
        (tdlens.ShapleyValueSampling, {"n_samples": 3}),
    ],
)
def test_equals_stacked_per_batch_calls(tmp_path, mlp, xy, method_class, options):
    """Gradient and perturbation methods: the dataset result is the per-batch results."""
    x, y = xy
    method = method_class(mlp)
    rng = torch.get_rng_state()
    result = tdlens.attribute_dataset(
        method, TensorDataset(x, y), out=tmp_path, targets=1, batch_size=BATCH, **options
    )
    assert torch.equal(torch.get_rng_state(), rng)  # the per-batch seeding is undone
    if method_class is tdlens.ShapleyValueSampling:  # random: each batch seeded by its number
        parts = []
        for b, i in enumerate(range(0, N, BATCH)):
            torch.manual_seed(b)
            parts.append(method.attribute(x[i : i + BATCH], target=y[i : i + BATCH], **options))
        expected = torch.cat(parts)
    else:
        expected = stacked(method, x, y, **options)
    assert result.batch_size == torch.Size([N])
    assert result["attribution"].dtype == torch.float64
    torch.testing.assert_close(result["attribution"], expected, rtol=0, atol=1e-6)
    assert torch.equal(result["index"], torch.arange(N))
    assert torch.equal(result["target"], y)
    assert torch.equal(result["prediction"], mlp(x).argmax(1))


def test_prediction_is_the_target_by_default_and_delta_is_stored(tmp_path, mlp, xy):
    x, _ = xy
    ig = tdlens.IntegratedGradients(mlp)
    result = tdlens.attribute_dataset(
        ig, x, out=tmp_path, batch_size=BATCH, n_steps=9, return_convergence_delta=True
    )
    parts = [
        ig.attribute(x[i : i + BATCH], n_steps=9, return_convergence_delta=True)
        for i in range(0, N, BATCH)
    ]
    torch.testing.assert_close(result["attribution"], torch.cat([a for a, _ in parts]))
    torch.testing.assert_close(result["delta"], torch.cat([d for _, d in parts]))
    assert torch.equal(result["target"], mlp(x).argmax(1))
    assert torch.equal(result["target"], result["prediction"])


def test_result_reopens_with_tensordict_and_is_memory_mapped(tmp_path, mlp, xy):
    from tensordict import MemoryMappedTensor, TensorDict

    x, _y = xy
    result = tdlens.attribute_dataset(tdlens.Saliency(mlp), x, out=tmp_path, batch_size=BATCH)
    assert isinstance(result["attribution"], MemoryMappedTensor)
    again = TensorDict.load_memmap(tmp_path)
    assert torch.equal(again["attribution"], result["attribution"])
    manifest = json.loads((tmp_path / "tdlens-run.json").read_text())
    assert manifest["length"] == N and manifest["n_batches"] == 3


def test_dict_batches_with_a_target_key_and_a_dataloader(tmp_path, dict_input):
    """Dict examples through a DataLoader (its collate and batch size): the label key is
    taken out of the inputs; per-key attributions come under "attribution"."""

    class Examples(Dataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {
                "image": torch.randn(5, generator=g, dtype=torch.float64),
                "table": torch.randn(2, generator=g, dtype=torch.float64),
                "mask": torch.tensor(1.0 if i % 2 else 0.5, dtype=torch.float64),
                "label": i % 3,
            }

    loader = DataLoader(Examples(), batch_size=3)
    method = tdlens.InputXGradient(dict_input)
    result = tdlens.attribute_dataset(
        method, loader, out=tmp_path, targets="label", keys=["image", "table"]
    )
    for start in range(0, 7, 3):
        batch = next(
            iter(
                DataLoader(
                    torch.utils.data.Subset(Examples(), range(start, min(start + 3, 7))),
                    batch_size=3,
                )
            )
        )
        label = batch.pop("label")
        expected = method.attribute(batch, target=label, keys=["image", "table"])
        for key in ("image", "table"):
            assert torch.equal(result["attribution", key][start : start + 3], expected[key])
    assert torch.equal(result["target"], torch.arange(7) % 3)


def test_iterable_of_tensordict_batches(tmp_path, mlp, xy):
    from tensordict import TensorDict

    x, y = xy
    batches = [
        TensorDict(x=x[i : i + 5], y=y[i : i + 5], batch_size=[min(5, N - i)])
        for i in range(0, N, 5)
    ]
    method = tdlens.Saliency(mlp)
    result = tdlens.attribute_dataset(method, batches, out=tmp_path, targets="y")
    expected = torch.cat([method.attribute(b.exclude("y"), target=b["y"])["x"] for b in batches])
    assert torch.equal(result["attribution", "x"], expected)
    assert torch.equal(result["index"], torch.arange(N))


def test_float16_storage_metrics_and_progress_callback(tmp_path, mlp, xy):
    x, y = xy
    seen: list[Progress] = []
    method = tdlens.Saliency(mlp)
    result = tdlens.attribute_dataset(
        method,
        TensorDataset(x, y),
        out=tmp_path,
        targets=1,
        batch_size=BATCH,
        dtype=torch.float16,
        metrics={"total": lambda inputs, attr, target: attr.sum(1), "deletion": "deletion"},
        callback=seen.append,
    )
    expected = stacked(method, x, y)
    assert result["attribution"].dtype == torch.float16
    torch.testing.assert_close(result["attribution"].double(), expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(
        result["metric", "total"].double(), expected.sum(1), rtol=1e-3, atol=1e-3
    )
    deletion = tdlens.metrics.deletion(
        mlp, x[:BATCH], expected[:BATCH].float().double(), target=y[:BATCH]
    )
    assert result["metric", "deletion"].shape == (N,)
    assert torch.isfinite(deletion.score).all()
    assert [p.done for p in seen] == [4, 8, 11] and seen[-1].total == N
    assert all(p.rank == 0 and p.examples_per_second > 0 for p in seen)


def test_model_untouched_after_success_and_failure(tmp_path, mlp, xy):
    x, _y = xy
    before = model_state(mlp)
    tdlens.attribute_dataset(tdlens.IntegratedGradients(mlp), x, out=tmp_path / "a", n_steps=3)
    assert_untouched(mlp, before)
    with pytest.raises(tdlens.TdlensError):
        tdlens.attribute_dataset(tdlens.Saliency(mlp), x, out=tmp_path / "b", target=9)
    assert_untouched(mlp, before)
    # a run that failed before finishing any batch does not block its directory
    result = tdlens.attribute_dataset(tdlens.Saliency(mlp), x, out=tmp_path / "b", target=3)
    assert torch.equal(result["target"], torch.full((N,), 3))


# -- errors ------------------------------------------------------------------------------------
def test_changed_arguments_into_the_same_directory_raise(tmp_path, mlp, xy):
    x, y = xy
    ig = tdlens.IntegratedGradients(mlp)
    run = dict(out=tmp_path, targets=1, batch_size=BATCH)
    tdlens.attribute_dataset(ig, TensorDataset(x, y), n_steps=5, **run)
    with pytest.raises(RunMismatchError, match="changed: option n_steps"):
        tdlens.attribute_dataset(ig, TensorDataset(x, y), n_steps=6, **run)
    with pytest.raises(RunMismatchError, match="batch_size"):
        tdlens.attribute_dataset(ig, TensorDataset(x, y), n_steps=5, **{**run, "batch_size": 5})
    other = seeded(MLP(), seed=7)
    with pytest.raises(RunMismatchError, match="model weights"):
        tdlens.attribute_dataset(
            tdlens.IntegratedGradients(other), TensorDataset(x, y), n_steps=5, **run
        )
    # resume=False starts over with the new arguments
    result = tdlens.attribute_dataset(ig, TensorDataset(x, y), n_steps=6, resume=False, **run)
    torch.testing.assert_close(result["attribution"], stacked(ig, x, y, n_steps=6))


def test_directory_holding_other_files_raises(tmp_path, mlp, xy):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunMismatchError, match="not a tdlens dataset run"):
        tdlens.attribute_dataset(tdlens.Saliency(mlp), xy[0], out=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_batches_that_change_structure_raise(tmp_path, mlp):
    batches = [randn(4, 6), randn(4, 6), randn(4, 5)]
    model = lambda x: x[:, :4] * 2  # noqa: E731 (accepts both widths)
    with pytest.raises(tdlens.TdlensError, match=r"batch 2 \(examples 8..11\).*change structure"):
        tdlens.attribute_dataset(tdlens.Saliency(model), batches, out=tmp_path, target=0)
    dict_batches = [{"a": randn(2, 3)}, {"a": randn(2, 3), "b": randn(2, 3)}]
    with pytest.raises(tdlens.TdlensError, match="change structure"):
        tdlens.attribute_dataset(
            tdlens.Saliency(lambda a, b=None: a), dict_batches, out=tmp_path / "d", target=0
        )


def test_bad_arguments_raise_before_any_work(tmp_path, mlp, xy):
    x, _y = xy
    with pytest.raises(tdlens.TdlensError, match=r"takes no option.*n_step"):
        tdlens.attribute_dataset(tdlens.IntegratedGradients(mlp), x, out=tmp_path, n_step=3)
    with pytest.raises(tdlens.TdlensError, match="not a key of the batches"):
        tdlens.attribute_dataset(tdlens.Saliency(mlp), [{"x": x}], out=tmp_path, targets="label")
    with pytest.raises(tdlens.TdlensError, match="one-pass iterator"):
        tdlens.attribute_dataset(tdlens.Saliency(mlp), iter([x]), out=tmp_path)
    with pytest.raises(tdlens.TdlensError, match="empty"):
        tdlens.attribute_dataset(tdlens.Saliency(mlp), x[:0], out=tmp_path)
    with pytest.raises(tdlens.TdlensError, match="either targets"):
        tdlens.attribute_dataset(tdlens.Saliency(mlp), x, out=tmp_path, targets=1, target=2)
    with pytest.raises(TypeError, match="attribution method"):
        tdlens.attribute_dataset(mlp, x, out=tmp_path)
    assert not any(tmp_path.iterdir())


# -- progress and import cost ------------------------------------------------------------------
def test_progress_bar_only_on_a_terminal_outside_ci(monkeypatch):
    from tdlens.dataset import progress

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("TDLENS_NO_PROGRESS", raising=False)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    reporter = progress.Reporter(0, 10, True, None)
    assert reporter._bar is not None  # a tqdm bar
    reporter.update(0, 4)
    assert reporter._bar.n == 4
    reporter.close()
    assert progress.Reporter(1, 10, True, None)._bar is None  # rank 0 only
    assert progress.Reporter(0, 10, False, None)._bar is None
    monkeypatch.setenv("CI", "true")
    assert progress.Reporter(0, 10, True, None)._bar is None
    monkeypatch.delenv("CI")
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert progress.Reporter(0, 10, True, None)._bar is None


def test_attribute_dataset_loads_no_tensordict_until_run():
    import subprocess
    import sys

    code = (
        "import sys, tdlens; tdlens.attribute_dataset; "
        "print('tensordict' in sys.modules, tdlens.attribute_dataset.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "tdlens.dataset.run"]


def test_k_targets_for_every_example_and_an_inputs_selector(tmp_path, mlp, xy):
    x, y = xy
    method = tdlens.Saliency(mlp)
    result = tdlens.attribute_dataset(
        method, TensorDataset(x, y), out=tmp_path, targets=[0, 2], inputs=0, batch_size=BATCH
    )
    expected = torch.cat(
        [method.attribute(x[i : i + BATCH], targets=[0, 2]) for i in range(0, N, BATCH)]
    )
    assert result["attribution"].shape == (N, 2, 6)
    assert torch.equal(result["attribution"], expected)
    assert torch.equal(result["target"], torch.tensor([[0, 2]]).expand(N, 2))


def _doubling(items):
    """A collate_fn that doubles the inputs (the result shows it was used); defined at module
    level so that workers started with 'spawn' can unpickle it."""
    inputs, labels = torch.utils.data.default_collate(items)
    return inputs * 2, labels


def test_a_shuffling_dataloader_with_workers_gives_rows_by_dataset_position(tmp_path, mlp, xy):
    """The loader's workers and collate_fn are used; its shuffling does not move rows."""
    x, y = xy
    loader = DataLoader(
        TensorDataset(x, y), batch_size=BATCH, shuffle=True, num_workers=2, collate_fn=_doubling
    )
    method = tdlens.Saliency(mlp)
    result = tdlens.attribute_dataset(method, loader, out=tmp_path, targets=1)
    assert torch.equal(result["attribution"], stacked(method, 2 * x, y))
    assert torch.equal(result["index"], torch.arange(N))
    with pytest.raises(tdlens.TdlensError, match="Subset"):
        sampler = torch.utils.data.SubsetRandomSampler(range(5))
        tdlens.attribute_dataset(
            method, DataLoader(TensorDataset(x, y), sampler=sampler), out=tmp_path / "s"
        )
