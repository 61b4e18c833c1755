"""Held-out evaluation batches on a CPU: what ``longrl.eval.batched.generate_batch`` does (each prompt prefilled
alone, then the batch decoded in place by ``PaddedDecodeCache``) vs ``model.generate`` on the left-padded batch
(its baseline, and what it did before).

A left-padded batch's prefill attention needs an explicit mask, which CPU attention kernels run far slower than
a lone prompt's plain causal attention; ``generate``'s ``DynamicCache`` copies the whole cache every decode
step and repeats the keys to the query heads. Both sides decode greedily; the rows whose tokens agree are
counted (bf16 autocast can flip a near tie).
``--autocast bfloat16`` runs both under bf16 autocast (as the demo-real recipe's ``eval.autocast``). The
demo-real model's shape: ``--vocab 49152 --hidden 576 --layers 30 --heads 9 --kv-heads 3 --intermediate 1536``.
"""

from __future__ import annotations

import argparse

import torch

import longrl.eval.batched as batched
from bench import (
    add_common_args,
    add_model_args,
    describe_model,
    ensure_malloc_env,
    gib,
    ints,
    load_average,
    machine,
    measure,
    model_from_args,
    setup,
)


class _Tok:
    eos_token_id = None
    pad_token_id = 0


def run_prompt(args, model, prompt_len: int) -> dict:
    gen = torch.Generator().manual_seed(prompt_len)
    # lengths spread over ~6% below prompt_len, as a length-sorted batch of real questions is
    lengths = [prompt_len - (i * prompt_len) // (16 * args.batch) for i in range(args.batch)]
    prompts = [torch.randint(1, args.vocab, (n,), generator=gen).tolist() for n in lengths]
    out, res = {}, {}
    real = batched.prefill_apart
    for name, prefill in (("generate", lambda *a, **k: None), ("apart_in_place", real)):
        def call(name=name):
            out[name] = batched.generate_batch(model, _Tok(), prompts, args.new_tokens, 0.0, 1.0, 0, args.autocast)

        batched.prefill_apart = prefill
        try:
            res[name] = measure(call, args.device, args.repeats, args.warmup)
        finally:
            batched.prefill_apart = real
        print(f"    {name}: {res[name][0]:.2f}s ({load_average()})", flush=True)
    same = sum(a == b for a, b in zip(out["generate"], out["apart_in_place"]))
    ratio = res["generate"][0] / res["apart_in_place"][0]
    print(f"  P={prompt_len} B={args.batch} new={args.new_tokens} autocast={args.autocast}: generate "
          f"{res['generate'][0]:.2f}s {gib(res['generate'][1])} | prefill apart + in-place decode "
          f"{res['apart_in_place'][0]:.2f}s {gib(res['apart_in_place'][1])} | speed-up {ratio:.2f}x | "
          f"same greedy tokens in {same} of {args.batch} rows", flush=True)
    return {"generate_s": res["generate"][0], "apart_in_place_s": res["apart_in_place"][0],
            "speedup": ratio, "same_rows": same}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompt-lens", default="1024", help="comma-separated (longest) prompt lengths")
    ap.add_argument("--batch", type=int, default=8, help="prompts per batch (the demo-real eval_batch_size)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--autocast", default="none", choices=["none", "bfloat16"])
    add_model_args(ap)
    add_common_args(ap)
    return ap


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    setup(args)
    print(f"[eval] {machine(args.device)}; {describe_model(args)}; {load_average()}", flush=True)
    model = model_from_args(args).eval()
    return {p: run_prompt(args, model, p) for p in ints(args.prompt_lens)}


if __name__ == "__main__":
    ensure_malloc_env("bench.bench_eval")
    main()
