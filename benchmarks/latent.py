"""Benchmark: latent caching and patching sweeps on a tiny GPT-2 (random weights), on CPU.

1. Caching every block output: ``tdlens.latent.cache`` against the same forward pass with
   hand-written raw forward hooks that store the same tensors (registered and removed in each
   call, as user code would), and tdhook 0.3's ``ActivationCaching`` on the same model beside
   them. Goal: tdlens / raw hooks at most 1.1.
2. A patching sweep of L layers x P positions on one prompt pair (the usual circuit-finding
   case): ``tdlens.latent.patch`` (variants stacked along the batch under the row budget)
   against a Python loop of single-cell patches with hand-written forward hooks (the clean
   run cached once per layer), with the number of forward calls of each. Goal: the loop /
   the sweep at least 5. Both do the same arithmetic; the sweep saves the per-call cost of
   the model's Python code (about 3 ms a call for this GPT-2 on one thread), so the ratio
   falls as the batch grows (``--batch``).

Before timing, the cached tensors are checked equal across the three caching variants and the
sweep's scores equal to the loop's (float32, 1e-4; tests/latent check 1e-6 in float64). Every variant runs once untimed, then the
variants run in interleaved rounds; ratios are medians of per-round ratios, with a 95%
bootstrap interval. Run with ``python benchmarks/latent.py`` (``--threads``, ``--repeat``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import transformers
from _common import (
    environment_lines,
    format_table,
    load_line,
    paired_ratio,
    paired_ratio_interval,
    time_interleaved,
)
from tdhook.latent.activation_caching import ActivationCaching
from tensordict import TensorDict

from tdlens import latent


def gpt2(dtype: torch.dtype, n_layer: int, n_embd: int) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=512, n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).to(dtype).eval()


def raw_hooks(model: Any, ids: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    stored: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _a, out, name=name: stored.__setitem__(name, out.detach())
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return stored


def tdhook_cache(model: Any, ids: torch.Tensor) -> Any:
    context = ActivationCaching(r"transformer\.h\.\d+$").prepare(
        model, in_keys=["input_ids"], out_keys=["logits"]
    )
    with context as hooked, torch.no_grad():
        return hooked(TensorDict({"input_ids": ids}, batch_size=[ids.shape[0]]))["cache"]


def patch_loop(model, clean, corrupted, paths, metric) -> tuple[torch.Tensor, int]:
    """What a user writes without sweeps: one patched forward per cell, raw hooks."""
    calls = 1
    with torch.no_grad():
        base = metric(model(corrupted).logits)
        t = clean.shape[1]
        scores = torch.empty(len(paths), t, dtype=torch.float64)
        for i, path in enumerate(paths):
            module = model.get_submodule(path)
            stored: dict[str, torch.Tensor] = {}
            handle = module.register_forward_hook(
                lambda _m, _a, out, stored=stored: stored.__setitem__("clean", out)
            )
            model(clean)
            handle.remove()
            calls += 1
            for j in range(t):

                def patch_position(_m, _a, out, j=j, clean_out=stored["clean"]):
                    out = out.clone()
                    out[:, j] = clean_out[:, j]
                    return out

                handle = module.register_forward_hook(patch_position)
                try:
                    scores[i, j] = (metric(model(corrupted).logits) - base).mean()
                finally:
                    handle.remove()
                calls += 1
    return scores, calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="timed rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=1, help="prompt pairs in the sweep")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for line in [*environment_lines(), load_line()]:
        print(line, flush=True)
    rows: list[list[str]] = []

    # -- 1. caching ------------------------------------------------------------------------
    model = gpt2(torch.float32, n_layer=4, n_embd=128)
    ids = torch.randint(3, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    names = [f"transformer.h.{i}" for i in range(4)]
    ours = latent.cache(model, ids, paths="transformer.h.*")
    theirs = tdhook_cache(model, ids)
    for name, value in raw_hooks(model, ids, names).items():
        assert torch.equal(ours[name], value) and torch.equal(theirs[name], value), name
    print(f"== caching {len(names)} block outputs of GPT-2 (4 x 128), ids {tuple(ids.shape)}")
    fns = {
        "raw hooks": lambda: raw_hooks(model, ids, names),
        "tdlens": lambda: latent.cache(model, ids, paths="transformer.h.*"),
        "tdhook": lambda: tdhook_cache(model, ids),
    }
    times = time_interleaved(fns, repeat=args.repeat * 3)
    for name in ("tdlens", "tdhook"):
        low, high = paired_ratio_interval(times, name, "raw hooks")
        rows.append(
            [
                f"cache: {name} / raw hooks",
                f"{times[name].median * 1e3:.2f} ms",
                f"{times['raw hooks'].median * 1e3:.2f} ms",
                f"{paired_ratio(times, name, 'raw hooks'):.3f} [{low:.3f}, {high:.3f}]",
                "1 / 1",
            ]
        )

    # -- 2. patching sweep ------------------------------------------------------------------
    small = gpt2(torch.float32, n_layer=4, n_embd=64)
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(3, 512, (args.batch, 16), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 5] = torch.randint(3, 512, (args.batch,), generator=gen)
    metric = latent.logit_diff(7, 11)
    paths = [f"transformer.h.{i}" for i in range(4)]
    sweep = latent.patch(small, clean, corrupted, paths=paths, metric=metric)
    loop_scores, loop_calls = patch_loop(small, clean, corrupted, paths, metric)
    torch.testing.assert_close(sweep.scores.double(), loop_scores, atol=1e-4, rtol=1e-4)
    cells = len(paths) * clean.shape[1]
    print(
        f"== patching sweep: {len(paths)} layers x {clean.shape[1]} positions = {cells} cells, "
        f"batch {clean.shape[0]}, GPT-2 (4 x 64, float32); the sweep equals the loop (1e-4)"
    )
    fns = {
        "loop": lambda: patch_loop(small, clean, corrupted, paths, metric),
        "sweep": lambda: latent.patch(small, clean, corrupted, paths=paths, metric=metric),
    }
    times = time_interleaved(fns, repeat=args.repeat)
    low, high = paired_ratio_interval(times, "loop", "sweep")
    rows.append(
        [
            "patch: loop / sweep",
            f"{times['sweep'].median * 1e3:.1f} ms",
            f"{times['loop'].median * 1e3:.1f} ms",
            f"{paired_ratio(times, 'loop', 'sweep'):.2f} [{low:.2f}, {high:.2f}]",
            f"{sweep.forward_passes} / {loop_calls}",
        ]
    )
    print()
    print(load_line())
    print("Medians of interleaved rounds (wall clock); ratio: median of per-round ratios with")
    print("a 95% bootstrap interval. Goals: cache ratio <= 1.1, patch loop / sweep >= 5.")
    headers = ["comparison", "tdlens (or tdhook)", "reference", "ratio", "forward calls"]
    print(format_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
