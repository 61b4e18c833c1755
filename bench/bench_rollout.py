"""Rollout generation: prefill-once shared cache vs ``model.generate(num_return_sequences=G)``.

Small defaults; the issue's sizes: ``--prompt-len 4096 --new-tokens 64 --G 8``.
"""

from __future__ import annotations

import argparse

import torch

from bench import (
    QWEN_VOCAB,
    IdTokenizer,
    add_common_args,
    ensure_malloc_env,
    gib,
    machine,
    measure,
    setup,
    tiny_qwen,
)
from longrl.rollout.hf import HFGenerator


def run(args) -> dict:
    dtype = getattr(torch, args.dtype)
    model = tiny_qwen(args.vocab, args.hidden, args.layers, device=args.device, dtype=dtype)
    prompt = torch.randint(0, args.vocab, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    res, lengths = {}, {}
    for name, shared in (("generate", False), ("prefill_once", True)):
        gen = HFGenerator(model, IdTokenizer(), shared_prefill=shared, seed=0)

        def step(gen=gen, name=name):
            out = gen.generate([prompt], n=args.G, max_new_tokens=args.new_tokens, temperature=1.0)
            lengths[name] = sum(len(c.token_ids) for c in out[0])

        res[name] = measure(step, args.device, args.repeats)
    ratio = res["generate"][0] / res["prefill_once"][0]
    print(f"  P={args.prompt_len} new={args.new_tokens} G={args.G}: generate(num_return_sequences) "
          f"{res['generate'][0]:.2f}s {gib(res['generate'][1])} | prefill-once {res['prefill_once'][0]:.2f}s "
          f"{gib(res['prefill_once'][1])} | speed-up {ratio:.2f}x | tokens {lengths}", flush=True)
    return {"generate_s": res["generate"][0], "prefill_once_s": res["prefill_once"][0], "speedup": ratio}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    add_common_args(ap)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup(args)
    print(f"[rollout] {machine(args.device)}; vocab {args.vocab}, hidden {args.hidden}, layers {args.layers}, "
          f"{args.dtype}")
    run(args)


if __name__ == "__main__":
    ensure_malloc_env("bench.bench_rollout")
    main()
