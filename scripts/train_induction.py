"""Train the 2-layer attention-only induction model of ``tdlens.latent.models`` (run once).

    python scripts/train_induction.py            # writes src/tdlens/data/induction_2l.pt

Each sequence is random noise tokens, then ``half`` random tokens, then the same ``half``
tokens again (24 tokens in all, ``half`` drawn from 4..12 per batch so that the distance to
the first copy varies and no positional head can solve it). The loss is the next-token
cross-entropy on the second copy after its first token, which only an induction circuit (a
previous-token head in layer 0 read by an induction head in layer 1) can predict. About two
minutes of CPU.
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from tdlens.latent.models import INDUCTION_WEIGHTS, AttnOnlyTransformer, induction_batch

VOCAB, N_CTX, STEPS, BATCH = 64, 24, 1500, 64


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = AttnOnlyTransformer(vocab=VOCAB, d_model=64, n_heads=4, n_layers=2, n_ctx=N_CTX)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    began = time.time()
    for step in range(STEPS):
        half = int(torch.randint(4, N_CTX // 2 + 1, (), generator=generator))
        ids = induction_batch(BATCH, half, VOCAB, N_CTX, generator=generator)
        logits = model(ids[:, :-1])
        # the second copy after its first token, which the first copy predicts
        first = N_CTX - half
        predicted = logits[:, first:].reshape(-1, VOCAB)
        loss = F.cross_entropy(predicted, ids[:, first + 1 :].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 250 == 0 or step == STEPS - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  ({time.time() - began:.0f} s)")
    INDUCTION_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state_dict": model.state_dict()}, INDUCTION_WEIGHTS)
    print(f"wrote {INDUCTION_WEIGHTS}")


if __name__ == "__main__":
    main()
