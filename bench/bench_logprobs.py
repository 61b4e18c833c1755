"""Log-prob + entropy (forward + backward) over T tokens: chunked kernel vs naive full logits.

Small defaults; the issue's sizes: ``--tokens 16384,32768`` (the naive path then needs tens of GB
and is skipped above ``--naive-max-gib``).

Memory accounting. Resident before the probe: the head weights W and the hidden states h. On top
the kernel must hold, at its peak in backward, the gradient of the head (W-sized, float32) and of
the hidden states (h-sized): any training step keeps these. Beyond them the kernel's own working
set is one chunk of float32 logits plus a ``ROW_BLOCK`` x V block of temporaries. Two ratios are
printed: ``peak / (W + h + chunk)`` (the issue's formula, which leaves the gradients out) and
``peak / (W + dW + h + dh + chunk)`` (the honest floor of a chunked fwd+bwd).
"""

from __future__ import annotations

import argparse

import torch

from bench import (
    BODY,
    QWEN_VOCAB,
    add_common_args,
    ensure_malloc_env,
    gib,
    ints,
    load_average,
    machine,
    measure,
    setup,
)
from longrl.train.logprobs import token_logprobs_entropy


def _naive(hidden_1TH, weight_VH, targets_1T):
    logp_1TV = torch.log_softmax((hidden_1TH @ weight_VH.T).float(), dim=-1)
    logp_1T = logp_1TV.gather(-1, targets_1T.unsqueeze(-1)).squeeze(-1)
    return logp_1T, -(logp_1TV.exp() * logp_1TV).sum(-1)


def _step(fn, hidden_1TH, weight_VH, targets_1T):
    logp_1T, ent_1T = fn(hidden_1TH, weight_VH, targets_1T)
    (logp_1T.sum() + 0.01 * ent_1T.sum()).backward()
    hidden_1TH.grad = weight_VH.grad = None


def run(args) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    weight_VH = (torch.randn(args.vocab, args.hidden, generator=g) * 0.02).to(args.device, dtype).requires_grad_()
    chunk_bytes = args.chunk * args.vocab * 4
    w_bytes = weight_VH.numel() * weight_VH.element_size()
    rows = []
    for t in ints(args.tokens):
        hidden_1TH = torch.randn(1, t, args.hidden, generator=g).to(args.device, dtype).requires_grad_()
        targets_1T = torch.randint(0, args.vocab, (1, t), generator=g).to(args.device)
        h_bytes = hidden_1TH.numel() * hidden_1TH.element_size()
        chunked = measure(lambda h=hidden_1TH, y=targets_1T: _step(
            lambda a, b, c: token_logprobs_entropy(a, b, c, chunk=args.chunk), h, weight_VH, y),
            args.device, args.repeats, args.warmup)
        naive_need = 3 * t * args.vocab * 4
        if naive_need / 2**30 <= args.naive_max_gib:
            naive = measure(lambda h=hidden_1TH, y=targets_1T: _step(_naive, h, weight_VH, y), args.device,
                            args.repeats, args.warmup)
            naive_txt = (f"naive {naive[0]:.2f}s {gib(naive[1])} | speed {naive[0] / chunked[0]:.2f}x, "
                         f"memory {chunked[1] / naive[1]:.3f}x")
        else:
            naive = None
            naive_txt = f"naive skipped (needs ~{gib(naive_need)} > --naive-max-gib {args.naive_max_gib})"
        # inputs (weights + hidden) are resident before the probe; the peak counts what comes on top
        total = w_bytes + h_bytes + chunked[1]
        ratio = total / (w_bytes + h_bytes + chunk_bytes)
        ratio_grads = total / (w_bytes + h_bytes + 4 * weight_VH.numel() + h_bytes + chunk_bytes)
        rows.append({"tokens": t, "chunked_s": chunked[0], "chunked_peak": chunked[1], "ratio": ratio,
                     "ratio_with_grads": ratio_grads, "naive": naive})
        print(f"  T={t:>6}: chunked {chunked[0]:.2f}s +{gib(chunked[1])} (W {gib(w_bytes)}, h {gib(h_bytes)}, one"
              f" {args.chunk}-token chunk {gib(chunk_bytes)}) | {naive_txt} | peak / (W + h + chunk) = {ratio:.2f}"
              f" | peak / (W + dW + h + dh + chunk) = {ratio_grads:.2f} ({load_average()})", flush=True)
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", default="2048")
    ap.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    ap.add_argument("--hidden", type=int, default=BODY["hidden"])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--naive-max-gib", type=float, default=8.0)
    add_common_args(ap)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup(args)
    print(f"[logprobs] {machine(args.device)}; vocab {args.vocab}, hidden {args.hidden}, chunk {args.chunk}, "
          f"{args.dtype}")
    run(args)


if __name__ == "__main__":
    ensure_malloc_env("bench.bench_logprobs")
    main()
