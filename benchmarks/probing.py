"""Benchmark: linear probes on the 12 layers of a BERT-like model, tdlens against what users do
today, on CPU.

The model is a 12-layer BERT (``transformers.BertConfig``, random weights, hidden size
``--hidden``) on a synthetic sentiment task: each sequence of ``--length`` tokens holds
"positive" and "negative" words, and its label says which kind is more frequent. Every layer's
output is mean-pooled over the unpadded tokens, then probed.

Variants (all see the same examples, the same seeded 80/20 split and the same pooling):

* ``tdlens``: ``latent.fit_probes(model, loader, paths="encoder.layer.*", labels="label")``:
  one forward pass per batch for all 12 layers, activations kept in memory, all 12 logistic
  probes trained together by mini-batch Adam.
* ``per-layer loop``: for each layer, a hook caches that layer's pooled output over the data
  (a full pass of the model), then scikit-learn's ``LogisticRegression`` (after a
  ``StandardScaler``) is fitted: the loop the issue names.
* ``hidden_states + sklearn``: one pass with ``output_hidden_states=True`` caching every layer,
  then one ``LogisticRegression`` per layer: the strongest plain baseline.

Validation accuracy of every layer is printed for each variant; ratios come last.

Every variant first runs once, untimed, on two batches (first-use imports), then the variants
run ``--repeat`` times in turn, the order reversed every other round.

Run with ``python benchmarks/probing.py`` (``--examples``, ``--repeat``, ``--hidden``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers
from _common import environment_lines, format_table, load_line, paired_ratio
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tdlens import latent


def make_data(n: int, length: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, vocab, (n, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
    positive = torch.randint(0, 2, (n,), generator=g)
    # sprinkle 1-4 sentiment words (ids 1..10 positive, 11..19 negative), more of the label's kind
    for i in range(n):
        k_major = int(torch.randint(2, 5, (1,), generator=g))
        k_minor = int(torch.randint(0, k_major, (1,), generator=g))
        spots = torch.randperm(int(lengths[i]), generator=g)[: k_major + k_minor]
        major = (1, 11) if positive[i] else (11, 20)
        minor = (11, 20) if positive[i] else (1, 11)
        words = [int(torch.randint(*major, (1,), generator=g)) for _ in range(k_major)]
        words += [int(torch.randint(*minor, (1,), generator=g)) for _ in range(k_minor)]
        ids[i, spots[: len(words)]] = torch.tensor(words)
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask, "label": positive}


def loader(data: dict[str, torch.Tensor], batch_size: int) -> list[dict[str, torch.Tensor]]:
    n = len(data["label"])
    return [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    keep = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1)


def split(n: int, seed: int = 0) -> torch.Tensor:
    """The same train mask tdlens draws (seeded permutation, 20% held out)."""
    train = torch.ones(n, dtype=torch.bool)
    train[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: round(0.2 * n)]] = 0
    return train


def sklearn_fit(features: torch.Tensor, labels: torch.Tensor, train: torch.Tensor) -> float:
    x, y, t = features.numpy(), labels.numpy(), train.numpy()
    scaler = StandardScaler().fit(x[t])
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(x[t]), y[t])
    return float(clf.score(scaler.transform(x[~t]), y[~t]))


def run_tdlens(model: Any, batches: list, n_layers: int) -> list[float]:
    probes = latent.fit_probes(model, batches, paths="encoder.layer.*", labels="label",
                               epochs=10, l2=1e-3, lr=1e-2, batch_size=128)  # fmt: skip
    return [probes[f"encoder.layer.{i}"].metrics["val"] for i in range(n_layers)]


def run_per_layer(model: Any, batches: list, n_layers: int) -> list[float]:
    labels = torch.cat([b["label"] for b in batches])
    train = split(len(labels))
    scores = []
    for layer in range(n_layers):
        cached: list[torch.Tensor] = []
        mask: list[torch.Tensor] = []

        def keep(_m: Any, _a: Any, out: Any, cached: list = cached, mask: list = mask) -> None:
            cached.append(pooled(out[0] if isinstance(out, tuple) else out, mask[-1]))

        handle = model.encoder.layer[layer].register_forward_hook(keep)
        try:
            with torch.no_grad():
                for b in batches:
                    mask.append(b["attention_mask"])
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        finally:
            handle.remove()
        scores.append(sklearn_fit(torch.cat(cached), labels, train))
    return scores


def run_hidden_states(model: Any, batches: list, n_layers: int) -> list[float]:
    labels = torch.cat([b["label"] for b in batches])
    train = split(len(labels))
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    with torch.no_grad():
        for b in batches:
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        output_hidden_states=True)  # fmt: skip
            for i in range(n_layers):  # hidden_states[0] is the embedding output
                per_layer[i].append(pooled(out.hidden_states[i + 1], b["attention_mask"]))
    return [sklearn_fit(torch.cat(f), labels, train) for f in per_layer]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--skip-loop",
        action="store_true",
        help="leave out the per-layer loop (12 passes over the data: by far the longest)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=1000, hidden_size=args.hidden,
                                     num_hidden_layers=12, num_attention_heads=4,
                                     intermediate_size=4 * args.hidden)  # fmt: skip
    model = transformers.BertModel(config).eval()
    data = make_data(args.examples, args.length, 1000)
    batches = loader(data, 128)
    print("\n".join(environment_lines()))
    print(load_line())
    print(f"{args.examples} examples x {args.length} tokens, BERT 12 x {args.hidden}")

    variants: dict[str, Callable[[], list[float]]] = {
        "tdlens": lambda: run_tdlens(model, batches, 12),
        "per-layer loop": lambda: run_per_layer(model, batches, 12),
        "hidden_states + sklearn": lambda: run_hidden_states(model, batches, 12),
    }
    if args.skip_loop:
        del variants["per-layer loop"]
    # one untimed run of each on a few batches: first-use imports (torch.optim loads
    # torch._dynamo, scikit-learn its solvers) are not part of the comparison
    warm = batches[:2]
    run_tdlens(model, warm, 12), run_hidden_states(model, warm, 12)
    if not args.skip_loop:
        run_per_layer(model, warm, 12)
    times: dict[str, list[float]] = {name: [] for name in variants}
    accuracy: dict[str, list[float]] = {}
    for rep in range(args.repeat):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            start = time.perf_counter()
            accuracy[name] = variants[name]()
            times[name].append(time.perf_counter() - start)
            print(f"  [{rep + 1}/{args.repeat}] {name}: {times[name][-1]:.2f} s", flush=True)

    print("\nvalidation accuracy per layer")
    rows = [[str(i)] + [f"{accuracy[name][i]:.3f}" for name in variants] for i in range(12)]
    rows.append(["mean"] + [f"{statistics.mean(accuracy[n]):.3f}" for n in variants])
    print(format_table(["layer", *variants], rows))
    print("\nwall-clock seconds (median of runs)")
    print(format_table(["variant", "median s", "min s"],
                       [[n, f"{statistics.median(t):.2f}", f"{min(t):.2f}"]
                        for n, t in times.items()]))  # fmt: skip

    class _T:  # paired_ratio reads .times
        def __init__(self, t: list[float]) -> None:
            self.times = t

    timed = {n: _T(t) for n, t in times.items()}
    print("\nratios (above 1: tdlens is faster)")
    for rival in [name for name in variants if name != "tdlens"]:
        ratio = paired_ratio(timed, rival, "tdlens")  # type: ignore[arg-type]
        print(f"  {rival} / tdlens: {ratio:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
