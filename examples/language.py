"""Language: a tiny GPT-2 trained here on a synthetic grammar with subject-verb agreement.

Sentences follow ``the ADJ NOUN near the NOUN2 VERB .``; the verb agrees with the first noun
(``the red cat near the dogs runs``), never with the attractor NOUN2. The script trains a
2-layer GPT-2 (``transformers``, random initialisation, word-level vocabulary), then

1. attributes the verb prediction (logit of the agreeing form minus the other form) to the
   prompt words with IG on the token embeddings, and counts how often the subject outweighs
   the attractor;
2. probes each layer's last-position activation for the planted property (is the subject
   plural?);
3. builds a steering vector (plural minus singular prompts) and adds it to singular prompts:
   the share of plural verb predictions before and after.

    python examples/language.py [--fast] [--save] [--out language_out]

Training takes about 800 steps to learn the agreement (a minute on 2 cores); ``--fast`` loads
the weights of such a run from ``examples/weights/language_gpt2.pt`` (written with ``--save``,
float16) instead of training.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

import torch
from _report import write_report

import tdlens
from tdlens import latent

NOUNS = ["cat", "dog", "bird", "fox", "cow", "bee"]
ADJS = ["red", "big", "old", "shy"]
VERBS = ["run", "sing", "jump", "eat"]
WEIGHTS = Path(__file__).resolve().parent / "weights" / "language_gpt2.pt"
VOCAB = [
    "the",
    "near",
    ".",
    *ADJS,
    *NOUNS,
    *(n + "s" for n in NOUNS),
    *VERBS,
    *(v + "s" for v in VERBS),
]
ID = {w: i for i, w in enumerate(VOCAB)}


def sentences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` sentences ``[n, 8]``, whether the subject is plural, and whether NOUN2 is."""
    g = torch.Generator().manual_seed(seed)

    def pick(words: list[str]) -> torch.Tensor:
        return torch.randint(0, len(words), (n,), generator=g)

    plural, plural2 = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    adj, noun, noun2, verb = pick(ADJS), pick(NOUNS), pick(NOUNS), pick(VERBS)
    rows = []
    for i in range(n):
        n1 = NOUNS[noun[i]] + ("s" if plural[i] else "")
        n2 = NOUNS[noun2[i]] + ("s" if plural2[i] else "")
        v = VERBS[verb[i]] + ("" if plural[i] else "s")  # "the cat runs", "the cats run"
        rows.append([ID[w] for w in ["the", ADJS[adj[i]], n1, "near", "the", n2, v, "."]])
    return torch.tensor(rows), plural.bool(), plural2.bool()


def make_model(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(VOCAB),
        n_positions=8,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=2,
    )
    return GPT2LMHeadModel(config)


def train(model: torch.nn.Module, steps: int) -> float:
    data, _, _ = sentences(4096, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    loss = torch.tensor(0.0)
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (64,), generator=g)]
        labels = torch.full_like(batch, -100)
        labels[:, 3:7] = batch[:, 3:7]  # learn "near the NOUN2 VERB": the verb's agreement most
        loss = model(input_ids=batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def verb_pair(prompts: torch.Tensor, sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the sentence's verb in its singular ("runs") and plural ("run") forms."""
    verb = [VOCAB[int(t)].removesuffix("s") for t in sentence[:, 6]]
    return torch.tensor([ID[v + "s"] for v in verb]), torch.tensor([ID[v] for v in verb])


def explain(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    plural: torch.Tensor,
    sing: torch.Tensor,
    plur: torch.Tensor,
    n_steps: int,
) -> dict:
    """IG of (agreeing form - other form) at the last position, to each prompt word."""
    agree = torch.where(plural, plur, sing)
    other = torch.where(plural, sing, plur)

    def margin(logits: torch.Tensor, rows: dict) -> torch.Tensor:
        last = logits[:, -1]
        return (
            last.gather(1, rows["agree"][:, None])[:, 0]
            - last.gather(1, rows["other"][:, None])[:, 0]
        )

    inputs = {"input_ids": prompts, "agree": agree, "other": other}

    class Wrapped(torch.nn.Module):  # the agree/other ids travel with the inputs
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, agree: torch.Tensor, other: torch.Tensor
        ) -> torch.Tensor:
            return self.model(input_ids=input_ids).logits

    wrapped = Wrapped().eval()
    attr = tdlens.IntegratedGradients(wrapped).attribute(
        inputs,
        target=margin,
        layer="model.transformer.wte",
        keys=["input_ids"],
        baselines={"input_ids": torch.full_like(prompts, ID["."])},  # a neutral word
        n_steps=n_steps,
    )  # [B, 6, 64]: per prompt position, per embedding unit
    per_word = attr.sum(-1)  # [B, 6]
    return {
        "per_word": per_word,
        "subject_beats_attractor": float(
            (per_word[:, 2].abs() > per_word[:, 5].abs()).float().mean()
        ),
        "subject_share": float((per_word[:, 2].abs() / per_word.abs().sum(1)).mean()),
    }


def probes(model: torch.nn.Module, prompts: torch.Tensor, plural: torch.Tensor) -> dict:
    """Least-squares probe per layer (last position) for 'the subject is plural'."""
    paths = [f"transformer.h.{i}" for i in range(model.config.n_layer)]
    acts = latent.cache(model, {"input_ids": prompts}, paths=paths, reduce="last")
    label = plural.double() * 2 - 1
    half = len(label) // 2
    result = {}
    for path in ["transformer.wte", *paths]:
        if path == "transformer.wte":  # the last word alone (the attractor): a control
            x = model.transformer.wte(prompts[:, -1]).detach().double()
        else:
            x = acts.get(path).double()
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        a = design[:half]
        w = torch.linalg.solve(
            a.T @ a + 1e-2 * torch.eye(a.shape[1], dtype=x.dtype), a.T @ label[:half]
        )
        result[path] = float(((design[half:] @ w).sign() == label[half:]).double().mean())
    return result


def steering(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    plural: torch.Tensor,
    sing: torch.Tensor,
    plur: torch.Tensor,
) -> dict:
    path = "transformer.h.1"
    vector = latent.steering_vector(
        model, {"input_ids": prompts[plural]}, {"input_ids": prompts[~plural]}, path=path
    )
    singular = prompts[~plural]

    def plural_share() -> float:
        with torch.no_grad():
            last = model(input_ids=singular).logits[:, -1]
        s, p = sing[~plural], plur[~plural]
        return float((last.gather(1, p[:, None]) > last.gather(1, s[:, None])).float().mean())

    before = plural_share()
    with latent.steer(model, {path: vector}, scale=1.0):
        after = plural_share()
    return {"plural verb share before steering": before, "plural verb share after steering": after}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="short training, few steps")
    parser.add_argument("--out", type=Path, default=Path("language_out"))
    parser.add_argument(
        "--save", action="store_true", help=f"write the trained weights to {WEIGHTS}"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    torch.set_num_threads(1)
    n_steps = 16 if args.fast else 50
    model = make_model()
    if args.fast:
        state = torch.load(WEIGHTS, weights_only=True)
        model.load_state_dict({k: v.float() for k, v in state.items()})
        model.eval()
        loss = float("nan")
    else:
        loss = train(model, 800)
        if args.save:
            torch.save({k: v.half() for k, v in model.state_dict().items()}, WEIGHTS)
    test, plural, _ = sentences(256, seed=7)
    prompts = test[:, :6]
    sing, plur = verb_pair(prompts, test)
    with torch.no_grad():
        last = model(input_ids=prompts).logits[:, -1]
    agree = torch.where(plural, plur, sing)
    other = torch.where(plural, sing, plur)
    accuracy = float(
        (last.gather(1, agree[:, None]) > last.gather(1, other[:, None])).float().mean()
    )
    explained = explain(model, prompts[:64], plural[:64], sing[:64], plur[:64], n_steps)
    numbers: dict = {"training loss": loss, "agreement accuracy": accuracy}
    numbers["IG: subject outweighs attractor"] = explained["subject_beats_attractor"]
    numbers["IG: subject share of the prompt"] = explained["subject_share"]
    numbers.update({f"probe accuracy {k}": v for k, v in probes(model, prompts, plural).items()})
    numbers.update(steering(model, prompts, plural, sing, plur))
    words = [VOCAB[int(t)] for t in prompts[0]]
    weights = explained["per_word"][0]
    scale = float(weights.abs().max()) or 1.0
    spans = " ".join(
        f"<span style='background: rgba({255 if w > 0 else 0},0,{0 if w > 0 else 255},{abs(float(w)) / scale:.2f})'>{html.escape(t)}</span>"
        for t, w in zip(words, weights)
    )
    image = figure(args.out, explained["per_word"])
    write_report(
        args.out / "language_report.html", "Agreement", numbers, [image], f"<p>{spans}</p>"
    )
    numbers["seconds"] = round(time.time() - start, 1)
    print(json.dumps(numbers, indent=1))
    layer_probe = numbers[f"probe accuracy transformer.h.{model.config.n_layer - 1}"]
    assert layer_probe > 0.5 + 0.3, numbers
    assert (
        numbers["plural verb share after steering"]
        > numbers["plural verb share before steering"] + 0.3
    ), numbers
    return numbers


def figure(out: Path, per_word: torch.Tensor) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(["the", "ADJ", "NOUN", "near", "the", "NOUN2"], per_word.abs().mean(0).numpy())
    ax.set_ylabel("mean |IG| of the agreement margin")
    fig.tight_layout()
    path = out / "language_attributions.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
