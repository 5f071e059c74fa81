"""fit_probes: planted features are found, shuffled labels are not, streaming equals a full-batch
fit, one forward pass per batch feeds every path, and bad input is refused clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tdlens import latent
from tests.conftest import assert_untouched, model_state
from tests.test_errors import Counting  # counts the forward passes of the wrapped model


def planted(n=2000, dim=16, seed=0, margin=2.0):
    """Inputs whose class is a planted linear feature (a direction with a margin)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    direction = torch.randn(dim, generator=g)
    direction /= direction.norm()
    x = torch.randn(n, dim, generator=g) + margin * (2 * y - 1).unsqueeze(1) * direction
    return x, y


class Net(nn.Module):
    """A random three-layer MLP; the planted feature survives linearly in ``body.0``."""

    def __init__(self, dim=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.body(x))


def test_planted_feature_is_found_and_shuffled_labels_stay_at_chance():
    """>= 95% validation accuracy on the planted feature; chance (0.5 +- 0.1, 4 sigma for 400
    validation examples) on shuffled labels."""
    x, y = planted()
    model = Net().eval()
    probes = latent.fit_probes(model, x, paths=["body.0", "body.2"], labels=y, epochs=10)
    assert probes["body.0"].metrics["val"] >= 0.95
    assert probes["body.2"].metrics["val"] >= 0.95
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    chance = latent.fit_probes(model, x, paths="body.0", labels=shuffled, epochs=10)
    assert abs(chance["body.0"].metrics["val"] - 0.5) < 0.1


def full_batch_reference(z, y, classes, l2):
    """The logistic objective minimised by L-BFGS on all training rows at once (float64)."""
    w = torch.zeros(z.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")  # fmt: skip

    def objective():
        return nn.functional.cross_entropy(z @ w + b, y) + 0.5 * l2 * (w * w).sum()

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return w.detach(), b.detach(), float(objective())


def test_streamed_minibatch_fit_equals_full_batch_fit():
    """Mini-batch Adam over streamed activations (one forward pass per batch and epoch) reaches
    the full-batch optimum: the objective within 5e-5 of the optimum found by an independent
    float64 L-BFGS, hence (strong convexity, modulus l2) weights within sqrt(2 gap / l2); the
    in-memory default (full-batch L-BFGS) matches it to 1e-5."""
    x, y = planted(n=600, dim=32, seed=3)
    y = (y + (torch.rand(600, generator=torch.Generator().manual_seed(4)) < 0.2)) % 2  # noise
    model = Net(dim=32).double().eval()
    l2 = 0.1
    streamed = latent.fit_probes(model, x.double(), paths="body.0", labels=y, epochs=30,
                                 batch_size=100, l2=l2, cache=False)  # fmt: skip
    in_memory = latent.fit_probes(model, x.double(), paths="body.0", labels=y, l2=l2)
    train = streamed.train_rows
    assert torch.equal(train, in_memory.train_rows)
    with torch.no_grad():
        acts = model.body[0](x.double())
    probe = streamed["body.0"]
    z = ((acts - probe.mean) / probe.scale)[train]
    w_ref, _, best = full_batch_reference(z, y[train], 2, l2)

    def objective(p):
        return float(nn.functional.cross_entropy(z @ p.weight + p.bias, y[train])
                     + 0.5 * l2 * (p.weight**2).sum())  # fmt: skip

    gap = objective(probe) - best
    assert 0 <= gap < 5e-5
    # softmax weights are defined up to a shift shared by the classes: compare differences
    diff, diff_ref = probe.weight[:, 1] - probe.weight[:, 0], w_ref[:, 1] - w_ref[:, 0]
    assert (diff - diff_ref).norm() <= 2 * (2 * gap / l2) ** 0.5
    assert (diff - diff_ref).norm() < 0.03 * diff_ref.norm()
    full = in_memory["body.0"]
    assert objective(full) - best < 1e-9
    diff_full = full.weight[:, 1] - full.weight[:, 0]
    torch.testing.assert_close(diff_full, diff_ref, rtol=0, atol=1e-5)


def test_ridge_probe_equals_closed_form_from_streamed_statistics():
    """A linear probe streamed in batches equals the full-batch ridge solution (float64)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    model = Net(dim=6).double().eval()
    with torch.no_grad():
        acts = model.body[0](x)
    target = acts @ torch.randn(32, 2, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        300, 2, generator=g, dtype=torch.float64
    )
    l2 = 1e-2
    probes = latent.fit_probes(model, x, paths="body.0", labels=target, kind="linear", l2=l2,
                               batch_size=37, cache=False)  # fmt: skip
    probe, train = probes["body.0"], probes.train_rows
    z = ((acts - probe.mean) / probe.scale)[train]
    z1 = torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], 1)
    penalty = torch.eye(33, dtype=torch.float64) * l2 * len(z)
    penalty[-1, -1] = 0
    coef = torch.linalg.solve(z1.T @ z1 + penalty, z1.T @ target[train])
    torch.testing.assert_close(probe.weight, coef[:-1], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(probe.bias, coef[-1], rtol=1e-8, atol=1e-10)
    assert probe.metrics["val"] > 0.9  # R^2


@pytest.mark.parametrize("cache", [True, False])
def test_several_paths_cost_no_more_forward_passes_than_one(cache):
    x, y = planted(n=400)
    counted = Counting(Net()).eval()
    calls = {}
    for paths in (["inner.body.0"], ["inner.body.0", "inner.body.2", "inner.head"]):
        counted.calls = 0
        probes = latent.fit_probes(counted, x, paths=paths, labels=y, epochs=3, batch_size=100,
                                   cache=cache, max_iter=20)  # fmt: skip
        calls[len(paths)] = counted.calls
        assert probes.forward_passes == counted.calls
    assert calls[3] == calls[1]
    assert calls[1] == (4 if cache else 4 * (3 + 2))  # batches x (1, or stats + epochs + score)


def test_memory_mapped_cache_gives_one_pass_and_same_probe(tmp_path):
    x, y = planted(n=400, margin=3.0)
    counted = Counting(Net()).eval()
    mapped = latent.fit_probes(counted, x, paths="inner.body.0", labels=y, batch_size=100,
                               epochs=20, cache=str(tmp_path))  # fmt: skip
    assert counted.calls == 4 and any(tmp_path.iterdir())
    assert mapped["inner.body.0"].metrics["val"] >= 0.95


def test_dict_batches_with_label_key_and_masked_mean():
    """A loader of dict batches: labels by key, [B, T, D] activations averaged over the
    unmasked positions."""
    x, y = planted(n=300, dim=8, margin=3.0)
    seq = x.unsqueeze(1).repeat(1, 5, 1)
    mask = torch.ones(300, 5, dtype=torch.long)
    mask[:, 3:] = 0
    seq[:, 3:] = 100.0  # padding that would ruin an unmasked mean

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, tokens, attention_mask):
            return self.proj(tokens) * attention_mask.unsqueeze(-1)

    model = Seq()
    loader = [{"tokens": seq[i : i + 50], "attention_mask": mask[i : i + 50], "label": y[i : i + 50]}
              for i in range(0, 300, 50)]  # fmt: skip
    probes = latent.fit_probes(model, loader, paths="proj", labels="label", epochs=10)
    assert probes["proj"].metrics["val"] >= 0.95
    assert "proj" in str(probes.table())


def test_cached_activations_and_low_rank_and_multiclass():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (800,), generator=g)
    centres = torch.randn(4, 20, generator=g) * 3
    acts = centres[y] + torch.randn(800, 20, generator=g)
    probes = latent.fit_probes(None, {"layer": acts, "label": y}, labels="label", rank=2,
                               epochs=20)  # fmt: skip
    assert probes["layer"].weight.shape == (20, 4)
    assert torch.linalg.matrix_rank(probes["layer"].weight) <= 2
    assert probes["layer"].metrics["val"] > 0.9


def test_sklearn_estimator_as_kind():
    from sklearn.linear_model import LogisticRegression

    x, y = planted(n=400)
    probes = latent.fit_probes(Net().eval(), x, paths="body.0", labels=y,
                               kind=LogisticRegression(max_iter=200))  # fmt: skip
    assert probes["body.0"].kind == "sklearn"
    assert probes["body.0"].metrics["val"] >= 0.95


def test_model_left_untouched_also_after_an_error():
    x, y = planted(n=200)
    model = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model.train()  # BatchNorm statistics would move
    before = model_state(model)
    latent.fit_probes(model, x, paths=["0", "1"], labels=y, epochs=2, cache=False)
    assert_untouched(model, before)
    with pytest.raises(ValueError, match="150 entries"):
        latent.fit_probes(model, x, paths=["0", "1"], labels=y[:150])
    assert_untouched(model, before)


def test_clear_errors():
    x, y = planted(n=200)
    model = Net().eval()
    with pytest.raises(ValueError, match="150 entries but the data has at least 200 examples"):
        latent.fit_probes(model, x, paths="body.0", labels=y[:150])
    with pytest.raises(ValueError, match="250 entries but the data has 200 examples"):
        latent.fit_probes(model, x, paths="body.0", labels=torch.cat([y, y[:50]]))
    with pytest.raises(ValueError, match="at least 200"):
        latent.fit_probes(model, x, paths="body.0", labels=y[:150], cache=False, batch_size=100)
    with pytest.raises(ValueError, match=r"3 training example.*for 10 classes"):
        latent.fit_probes(model, x[:4], paths="body.0", labels=torch.arange(10)[:4] + 6, val=0.25)
    with pytest.raises(ValueError, match=r"kind='linear'"):
        latent.fit_probes(model, x, paths="body.0", labels=y.double())
    with pytest.raises(LookupError, match=r"body\.0"):
        latent.fit_probes(model, x, paths="body.9", labels=y)
    with pytest.raises(LookupError, match="'label' is not a key"):
        latent.fit_probes(model, [{"x": x}], paths="body.0", labels="label")
    with pytest.raises(ValueError, match="kind must be one of"):
        latent.fit_probes(model, x, paths="body.0", labels=y, kind="svm")
    with pytest.raises(ValueError, match="later pass"):
        gen = (x[i : i + 50] for i in range(0, 200, 50))
        latent.fit_probes(model, gen, paths="body.0", labels=y, cache=False)


def test_tensordict_batches_tuple_batches_and_list_labels():
    from tensordict import TensorDict

    x, y = planted(n=300, margin=3.0)
    model = Net().eval()
    td_loader = [TensorDict(x=x[i : i + 100], label=y[i : i + 100], batch_size=[100])
                 for i in range(0, 300, 100)]  # fmt: skip
    by_key = latent.fit_probes(model, td_loader, paths="body.0", labels="label")
    tuples = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 300, 100)]
    by_index = latent.fit_probes(model, tuples, paths="body.0", labels=1)
    by_list = latent.fit_probes(model, x, paths="body.0", labels=y.tolist())
    for probes in (by_key, by_index, by_list):
        assert probes["body.0"].metrics["val"] >= 0.95
    torch.testing.assert_close(by_key["body.0"].weight, by_index["body.0"].weight)


def test_reduced_rank_ridge_has_the_rank_asked_for():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(400, 10, generator=g, dtype=torch.float64)
    target = acts @ torch.randn(10, 3, generator=g, dtype=torch.float64)
    probes = latent.fit_probes(None, {"h": acts}, labels=target, kind="linear", rank=1)
    assert torch.linalg.matrix_rank(probes["h"].weight) == 1
    full = latent.fit_probes(None, {"h": acts}, labels=target, kind="linear")
    assert full["h"].metrics["val"] > 0.999 > probes["h"].metrics["val"]
