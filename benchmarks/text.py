"""Benchmark: tdlens.text against captum 0.9 on text models, in one process, on CPU.

Cases (models built from transformers configs with random weights, float32, eval mode;
tokenizers trained in the script: byte-level BPE, no network):

* **IG generation attribution, 16 new tokens**: a GPT-2-like model (4 layers, width 128) on a
  prompt of about 20 tokens, 16 greedily generated tokens explained with Integrated Gradients
  (32 Gauss-Legendre steps, log-probabilities). Three variants: tdlens's
  ``IntegratedGradients`` explainer (one attribution over the full sequence, 16 targets on the
  multi-target engine); captum's ``LLMGradientAttribution(LayerIntegratedGradients(wte))``,
  which loops over the generated tokens and runs one IG per token; and a hand-written
  shared-forward version (one forward pass over the 32 interpolated sequences, 16 backward
  passes with ``retain_graph``: the practical limit on a CPU, since each generated token needs
  its own backward pass). Before timing, tdlens's numbers are checked in float64 against a
  per-token loop of captum's ``LayerIntegratedGradients`` on the embedding layer under
  tdlens's convention (every earlier token, generated or not, interpolated from the pad
  embedding).
* **KernelShap on a BERT-like classifier**: 8 texts, word granularity, 200 samples each, on a
  tiny BERT (2 layers, width 32: the libraries' own costs dominate) and a small one (4 layers,
  width 128: both run the same 1,608 forward rows, which dominate).
  captum's ``LLMAttribution(KernelShap)`` reads next-token log-probabilities of a causal LM and
  cannot score a classifier's ``[B, C]`` logits, so the captum side is what it runs inside, one
  text at a time: ``KernelShap`` on the token ids with a word feature mask and the mask token as
  baseline, ``perturbations_per_eval=200``.

Speed-ups are paired ratios (median over rounds of the slow variant's time over the fast one's
in the same round), printed last. Run with ``python benchmarks/text.py``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import transformers
from _common import environment_lines, format_table, paired_ratio, time_interleaved
from captum.attr import KernelShap as CaptumKernelShap
from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tdlens.attribution.integration import quadrature
from tdlens.text import Granularity, InferenceModes, IntegratedGradients, KernelShap
from tdlens.text.granularity import encode

CORPUS = [
    "the movie was great and the actors were wonderful, a story to remember.",
    "a dull and long film: i hated the plot, the music and the ending!",
    "this story is not very good but the photography is fun to watch.",
    "i loved the acting. the script was terrible and the dialogue was worse?",
    "what a beautiful city, the food was delicious and the people were kind.",
    "the hotel room was dirty, the service was awful and the staff rude.",
] * 4
PROMPT = "the movie was great and the actors were wonderful, but the plot was"
TEXTS = [
    "the movie was great and the actors were wonderful",
    "a dull and long film, i hated the plot",
    "this story is not very good but the photography is fun",
    "i loved the acting. the script was terrible",
    "what a beautiful city, the food was delicious",
    "the hotel room was dirty and the staff rude",
    "the music and the ending were worse than the dialogue",
    "a story to remember: kind people, delicious food",
]
N_NEW, N_STEPS, N_SAMPLES = 16, 32, 200
TARGET_CAPTUM_GEN, TARGET_HAND, TARGET_KS = 1.5, 1.15, 5.0


def tokenizer(bert: bool) -> transformers.PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    extra = {"mask_token": "<mask>"} if bert else {}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", **extra
    )


def gpt2(vocab: int) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_embd=128, n_layer=4, n_head=4)
    return transformers.GPT2LMHeadModel(config).eval()


def bert(vocab: int, width: int, layers: int) -> transformers.BertForSequenceClassification:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * width,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config).eval()


def hand_written(model, ids: list[int], p: int, pad: int) -> torch.Tensor:
    """IG of the K generated tokens: one forward over the interpolated sequences, K backward
    passes over its graph; ``[K, L]`` token scores."""
    alphas, weights = quadrature("gausslegendre", N_STEPS)
    wte = model.get_input_embeddings()
    x = torch.tensor([ids])
    with torch.no_grad():
        end, start = wte(x), wte(torch.full_like(x, pad))
    diff = end - start
    points = (start + alphas.to(end).reshape(-1, 1, 1) * diff).requires_grad_()
    log_probs = model(inputs_embeds=points).logits.log_softmax(-1)
    w = weights.to(end)
    rows = []
    for k in range(len(ids) - p):
        y = (w * log_probs[:, p + k - 1, ids[p + k]]).sum()
        (grad,) = torch.autograd.grad(y, points, retain_graph=k < len(ids) - p - 1)
        rows.append((grad.sum(0) * diff[0]).sum(-1))
    return torch.stack(rows)


def check_generation(tok, model) -> None:
    """tdlens's rows equal a per-token loop of captum's LayerIntegratedGradients (float64)."""
    model = model.double()
    explainer = IntegratedGradients(
        model,
        tok,
        granularity=Granularity.TOKEN,
        inference_mode=InferenceModes.LOG_SOFTMAX,
        max_new_tokens=N_NEW,
        n_steps=N_STEPS,
    )
    e = explainer(PROMPT)[0]
    ids = tok(PROMPT)["input_ids"] + e.targets
    p = len(ids) - len(e.targets)

    def last(input_ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids).logits[:, -1].log_softmax(-1)

    lig = LayerIntegratedGradients(last, model.get_input_embeddings())
    worst = 0.0
    for k in range(len(e.targets)):
        x = torch.tensor([ids[: p + k]])
        theirs = lig.attribute(
            x, torch.full_like(x, tok.pad_token_id), target=ids[p + k], n_steps=N_STEPS
        )[0].sum(-1)
        worst = max(worst, float((e.scores[k, : p + k] - theirs).abs().max()))
    hand = hand_written(model, ids, p, tok.pad_token_id)
    worst_hand = float((torch.nan_to_num(e.scores) - torch.tril(hand, p - 1)).abs().max())
    print(f"generation: max |tdlens - captum LIG per token| = {worst:.2e} (float64)")
    print(f"generation: max |tdlens - hand-written| = {worst_hand:.2e} (float64)")
    assert worst < 1e-6 and worst_hand < 1e-6
    model.float()


def captum_kernel_shap(clf, btok) -> Callable[[], list[torch.Tensor]]:
    """captum's KernelShap one text at a time, on token ids with a word feature mask."""
    method = CaptumKernelShap(lambda ids: clf(input_ids=ids).logits)

    def run() -> list[torch.Tensor]:
        out = []
        for text in TEXTS:
            enc = encode(btok, [text], Granularity.WORD, torch.device("cpu"))
            x = enc.input_ids
            base = torch.where(enc.element_of >= 0, btok.mask_token_id, x)
            out.append(
                method.attribute(
                    x,
                    baselines=base,
                    target=1,
                    feature_mask=enc.element_of.clamp(min=0),
                    n_samples=N_SAMPLES,
                    perturbations_per_eval=N_SAMPLES,
                )
            )
        return out

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine more threads than free "
        "cores make timings erratic, 10x here; 0 keeps torch's default)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    for line in environment_lines():
        print(line)
    rows, summary = [], []

    # -- IG generation attribution -------------------------------------------------------------
    tok = tokenizer(bert=False)
    lm = gpt2(len(tok))
    check_generation(tok, lm)
    ig = IntegratedGradients(
        lm, tok, inference_mode=InferenceModes.LOG_SOFTMAX, max_new_tokens=N_NEW, n_steps=N_STEPS
    )
    generated = ig(PROMPT)[0].targets
    assert len(generated) == N_NEW, "the model stopped early: pick another seed"
    forced = tok.decode(generated)
    assert tok(forced, add_special_tokens=False)["input_ids"] == generated
    ids = tok(PROMPT)["input_ids"] + generated
    p = len(ids) - N_NEW
    print(f"generation: prompt of {p} tokens, {N_NEW} new tokens")
    captum_llm = LLMGradientAttribution(
        LayerIntegratedGradients(lm, lm.get_input_embeddings()), tok
    )
    prompt_input = TextTokenInput(PROMPT, tok)
    target_ids = torch.tensor(generated)
    variants = {
        "captum": lambda: captum_llm.attribute(prompt_input, target=target_ids, n_steps=N_STEPS),
        "hand-written": lambda: hand_written(lm, ids, p, tok.pad_token_id),
        "tdlens": lambda: ig(PROMPT, targets=forced),
    }
    timings = time_interleaved(variants, repeat=args.repeat)
    for slow, target in (("captum", TARGET_CAPTUM_GEN), ("hand-written", None)):
        ratio = paired_ratio(timings, slow, "tdlens")
        name = f"IG generation, 16 tokens, vs {slow}"
        rows.append(
            [
                name,
                f"{timings[slow].median * 1e3:.0f}",
                f"{timings['tdlens'].median * 1e3:.0f}",
                f"{ratio:.2f}x",
            ]
        )
        summary.append((name, ratio, target if target else 1 / TARGET_HAND))

    # -- KernelShap on a classifier -----------------------------------------------------------
    btok = tokenizer(bert=True)
    for label, width, layers, target in (("tiny", 32, 2, TARGET_KS), ("small", 128, 4, None)):
        clf = bert(len(btok), width, layers)
        ks = KernelShap(
            clf, btok, batch_size=8, granularity=Granularity.WORD, n_samples=N_SAMPLES, seed=0
        )
        timings = time_interleaved(
            {"captum": captum_kernel_shap(clf, btok), "tdlens": lambda ks=ks: ks(TEXTS, targets=1)},
            repeat=args.repeat,
        )
        ratio = paired_ratio(timings, "captum", "tdlens")
        name = f"KernelShap, 8 texts x 200 samples, BERT {label} ({layers} x {width})"
        rows.append(
            [
                name,
                f"{timings['captum'].median * 1e3:.0f}",
                f"{timings['tdlens'].median * 1e3:.0f}",
                f"{ratio:.2f}x",
            ]
        )
        if target is not None:
            summary.append((name, ratio, target))

    print()
    print(format_table(["case", "other ms (median)", "tdlens ms (median)", "speed-up"], rows))
    print()
    for name, ratio, target in summary:
        verdict = "met" if ratio >= target else "MISSED"
        print(f"target {name}: {ratio:.2f}x vs >= {target:.2f}x: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
