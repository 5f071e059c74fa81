"""Captioning: an image encoder and a token decoder composed with TensorDictSequential.

A synthetic task made from scikit-learn's digits: each 16x16 image holds one 8x8 digit in one
of four quadrants, and its caption is ``<bos> digit row column`` (e.g. ``<bos> 3 top left``).
The encoder (a small CNN) writes ``("enc", "features")``; the decoder (a GRU started from the
features) reads them and the caption tokens and writes ``("dec", "logits")``. The example
trains it, then

1. attributes every generated caption token to the image regions in one IG call (all tokens
   as targets) and with Occlusion, and measures how much of each position token's
   attribution falls in the digit's quadrant;
2. probes the encoder features for an image property (is the digit in the top half?);
3. patches the encoder features of one image into another and shows which tokens change.

    python examples/captioning.py [--fast] [--out captioning_out]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _report import write_report
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn

import tdlens

VOCAB = ["<bos>", *map(str, range(10)), "top", "bottom", "left", "right"]
TOP, BOTTOM, LEFT, RIGHT = (VOCAB.index(w) for w in ("top", "bottom", "left", "right"))
ENCODER = "module.0.module"  # the module path of ("enc", "features")


def make_data(n: int, seed: int) -> TensorDict:
    """``n`` images with their captions and quadrants."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(digits.images), (n,), generator=g)
    quadrant = torch.randint(0, 4, (n,), generator=g)
    # a faint noisy background: attributions outside the digit are then possible, not zero
    images = 0.25 * torch.rand(n, 1, 16, 16, generator=g)
    source = torch.as_tensor(digits.images, dtype=torch.float32)[pick] / 16
    for q in range(4):
        rows = quadrant == q
        r, c = (q // 2) * 8, (q % 2) * 8
        images[rows, 0, r : r + 8, c : c + 8] = source[rows]
    label = torch.as_tensor(digits.target)[pick]
    caption = torch.stack(
        [
            torch.zeros(n, dtype=torch.long),
            label + 1,
            torch.where(quadrant < 2, TOP, BOTTOM),
            torch.where(quadrant % 2 == 0, LEFT, RIGHT),
        ],
        1,
    )
    return TensorDict(
        {
            "image": images,
            "tokens": caption[:, :3],
            "caption": caption[:, 1:],
            "quadrant": quadrant,
        },
        batch_size=[n],
    )


class Decoder(nn.Module):
    """A GRU over the caption tokens, its state started from the image features."""

    def __init__(self, features: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.start = nn.Linear(features, hidden)
        self.embed = nn.Embedding(len(VOCAB), hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, len(VOCAB))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        state = torch.tanh(self.start(features))[None]
        hidden, _ = self.gru(self.embed(tokens), state)
        return self.out(hidden)


def make_captioner() -> TensorDictSequential:
    encoder = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 64),
        nn.Tanh(),
    )
    return TensorDictSequential(
        TensorDictModule(encoder, in_keys=["image"], out_keys=[("enc", "features")]),
        TensorDictModule(
            Decoder(), in_keys=[("enc", "features"), "tokens"], out_keys=[("dec", "logits")]
        ),
    )


def train(model: nn.Module, data: TensorDict, steps: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (128,), generator=g)]
        logits = model(batch.select("image", "tokens"))["dec", "logits"]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch["caption"].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def generate(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Greedy captions ``[B, 3]`` (the decoder is re-run on the tokens so far)."""
    tokens = torch.zeros(len(images), 1, dtype=torch.long)
    for _ in range(3):
        td = TensorDict({"image": images, "tokens": tokens}, batch_size=[len(images)])
        nxt = model(td)["dec", "logits"][:, -1].argmax(-1)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
    return tokens[:, 1:]


def words(caption: torch.Tensor) -> str:
    return " ".join(VOCAB[int(t)] for t in caption)


def explain(
    model: nn.Module,
    images: torch.Tensor,
    captions: torch.Tensor,
    quadrant: torch.Tensor,
    n_steps: int,
) -> dict:
    """IG of every generated token (3 targets, one call) and Occlusion, both to the image."""
    b = len(images)
    td = TensorDict(
        {
            "image": images,
            "tokens": torch.cat([torch.zeros(b, 1, dtype=torch.long), captions[:, :2]], 1),
        },
        [b],
    )
    # target t: the logit of the generated token at position t, per example ([B, 2] indices)
    targets = [torch.stack([torch.full((b,), t), captions[:, t]], 1) for t in range(3)]
    ig = tdlens.IntegratedGradients(model).attribute(
        td, targets=targets, output=("dec", "logits"), n_steps=n_steps
    )["image"]  # [B, 3, 1, 16, 16]
    occ = tdlens.Occlusion(model).attribute(
        td,
        targets=targets,
        output=("dec", "logits"),
        sliding_window_shapes=(1, 4, 4),
        strides=(1, 4, 4),
    )["image"]
    inside = torch.zeros(b, 1, 16, 16, dtype=torch.bool)
    for i, q in enumerate(quadrant.tolist()):
        r, c = (q // 2) * 8, (q % 2) * 8
        inside[i, 0, r : r + 8, c : c + 8] = True

    def share(attr: torch.Tensor) -> list[float]:
        mass = attr.abs()
        return [float((mass[:, t] * inside).sum() / mass[:, t].sum()) for t in range(3)]

    return {"ig": ig, "occlusion": occ, "ig_share": share(ig), "occlusion_share": share(occ)}


def probe_top(model: nn.Module, data: TensorDict) -> dict:
    """A least-squares linear probe of the encoder features for 'the digit is in the top
    half', held-out accuracy against the majority class."""
    from tdlens import latent

    features = (
        latent.cache(model, data.select("image", "tokens"), paths=ENCODER).get(ENCODER).double()
    )
    label = (data["quadrant"] < 2).double() * 2 - 1
    half = len(label) // 2
    design = torch.cat([features, torch.ones(len(label), 1, dtype=torch.float64)], 1)
    a = design[:half]
    w = torch.linalg.solve(
        a.T @ a + 1e-2 * torch.eye(a.shape[1], dtype=torch.float64), a.T @ label[:half]
    )
    accuracy = float(((design[half:] @ w).sign() == label[half:]).double().mean())
    majority = float(max((label[half:] > 0).double().mean(), (label[half:] < 0).double().mean()))
    return {"probe_accuracy": accuracy, "majority_class": majority}


def patch_features(model: nn.Module, data: TensorDict) -> dict:
    """Caption image A with the encoder features of image B: which tokens change?"""
    a, b = data["image"][:32], data["image"][32:64]
    with torch.no_grad():
        features_b = model(
            TensorDict({"image": b, "tokens": torch.zeros(32, 1, dtype=torch.long)}, [32])
        )["enc", "features"]
    clean_a, clean_b = generate(model, a), generate(model, b)
    with tdlens.Scope(model) as scope:
        scope.set(ENCODER, features_b)
        patched = generate(model, a)
    changed = patched != clean_a
    return {
        "patched_tokens_changed": float(changed.float().mean()),
        "patched_equals_source_caption": float((patched == clean_b).all(1).float().mean()),
        "example": f"{words(clean_a[0])} -> {words(patched[0])} (source: {words(clean_b[0])})",
    }


def figure(out: Path, images: torch.Tensor, captions: torch.Tensor, explained: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 7, figsize=(12, 7))
    for row in range(4):
        axes[row, 0].imshow(images[row, 0], cmap="gray")
        axes[row, 0].set_title(words(captions[row]), fontsize=8)
        for t in range(3):
            for j, key in enumerate(("ig", "occlusion")):
                ax = axes[row, 1 + 2 * t + j]
                ax.imshow(explained[key][row, t, 0], cmap="RdBu_r")
                ax.set_title(f"{key} '{VOCAB[int(captions[row, t])]}'", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    path = out / "captioning_attributions.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="short training, few steps")
    parser.add_argument("--out", type=Path, default=Path("captioning_out"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small tensors: threads cost more than they give
    steps, n_steps = (60, 16) if args.fast else (1000, 50)
    model = make_captioner()
    loss = train(model, make_data(4000, seed=0), steps)
    trained = time.time() - start
    model.eval()
    test = make_data(256, seed=1)
    captions = generate(model, test["image"])
    accuracy = float((captions == test["caption"]).float().mean())
    shown = test[:16]
    explained = explain(model, shown["image"], captions[:16], shown["quadrant"], n_steps)
    numbers = {
        "training loss": loss,
        "caption token accuracy": accuracy,
        **{
            f"IG share in the digit's quadrant, token {t}": s
            for t, s in enumerate(explained["ig_share"])
        },
        **{
            f"Occlusion share in the digit's quadrant, token {t}": s
            for t, s in enumerate(explained["occlusion_share"])
        },
        **probe_top(model, test),
        **patch_features(model, test),
    }
    path = figure(args.out, shown["image"], captions[:16], explained)
    write_report(args.out / "captioning_report.html", "Captioning", numbers, [path])
    numbers["seconds"] = round(time.time() - start, 1)
    numbers["seconds training"] = round(trained, 1)
    print(json.dumps(numbers, indent=1))
    assert numbers["probe_accuracy"] > numbers["majority_class"] + 0.2, numbers
    assert numbers["patched_tokens_changed"] > 0.3, numbers
    return numbers


if __name__ == "__main__":
    main()
