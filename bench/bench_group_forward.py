"""RL loss + backward for one group: shared-prompt forward vs the naive per-sequence batch.

Small defaults; the issue's sizes: ``--prompt-lens 4096,8192 --completion 256 --G 8``.
"""

from __future__ import annotations

import argparse
import functools

import torch

from bench import (
    QWEN_VOCAB,
    add_common_args,
    ensure_malloc_env,
    gib,
    ints,
    machine,
    measure,
    setup,
    tiny_qwen,
)
from longrl.train.group_forward import group_logprobs


def _loss_step(model, prompt, completions, adv_G, shared: bool, chunk: int) -> float:
    """Policy-gradient surrogate (token-mean) over the group, backward, grads cleared; the loss."""
    logps_GC, entropy_GC, mask_GC = group_logprobs(model, prompt, completions, chunk=chunk, shared=shared)
    ratio_GC = torch.exp(logps_GC - logps_GC.detach())
    loss = -(ratio_GC * adv_G[:, None] * mask_GC).sum() / mask_GC.sum()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def run(args) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    model = tiny_qwen(args.vocab, args.hidden, args.layers, device=args.device, dtype=dtype)
    rng = torch.Generator().manual_seed(0)
    rows = []
    for p in ints(args.prompt_lens):
        prompt = torch.randint(0, args.vocab, (p,), generator=rng).tolist()
        comps = [torch.randint(0, args.vocab, (args.completion - (i % 3),), generator=rng).tolist()
                 for i in range(args.G)]
        adv_G = torch.randn(args.G, generator=rng).to(args.device)
        res = {}
        for name, shared in (("naive", False), ("shared", True)):
            step = functools.partial(_loss_step, model, prompt, comps, adv_G, shared, args.chunk)
            res[name] = measure(step, args.device, args.repeats)
        with torch.no_grad():
            a, _, m = group_logprobs(model, prompt, comps, shared=True, with_entropy=False)
            b, _, _ = group_logprobs(model, prompt, comps, shared=False, with_entropy=False)
        row = {"prompt": p, "naive_s": res["naive"][0], "shared_s": res["shared"][0],
               "naive_peak": res["naive"][1], "shared_peak": res["shared"][1],
               "max_abs_dlogp": (a - b)[m].abs().max().item()}
        rows.append(row)
        print(f"  P={p:>6} C={args.completion} G={args.G}: naive {row['naive_s']:.2f}s {gib(row['naive_peak'])}"
              f" | shared {row['shared_s']:.2f}s {gib(row['shared_peak'])}"
              f" | speed-up {row['naive_s'] / row['shared_s']:.2f}x,"
              f" memory {row['shared_peak'] / max(row['naive_peak'], 1):.2f}x"
              f" | max |dlogp| {row['max_abs_dlogp']:.1e}", flush=True)
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompt-lens", default="512,1024")
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1024)
    add_common_args(ap)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup(args)
    print(f"[group_forward] {machine(args.device)}; vocab {args.vocab}, hidden {args.hidden}, "
          f"layers {args.layers}, {args.dtype}")
    run(args)


if __name__ == "__main__":
    ensure_malloc_env("bench.bench_group_forward")
    main()
