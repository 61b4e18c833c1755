"""Held-out evaluation batches: prompts prefilled one at a time and decoded as a batch (what
``longrl.eval.batched.generate_batch`` does) vs the whole left-padded batch prefilled at once (its baseline).

A left-padded batch's attention needs an explicit mask; a lone prompt's is plain causal attention, which CPU
attention kernels run far faster. Each side generates the same greedy tokens (checked and printed).
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
    for name, prefill in (("batch_prefill", lambda *a, **k: None), ("prefill_apart", real)):
        def call(name=name):
            out[name] = batched.generate_batch(model, _Tok(), prompts, args.new_tokens, 0.0, 1.0, 0, args.autocast)

        batched.prefill_apart = prefill
        try:
            res[name] = measure(call, args.device, args.repeats, args.warmup)
        finally:
            batched.prefill_apart = real
        print(f"    {name}: {res[name][0]:.2f}s ({load_average()})", flush=True)
    same = sum(a == b for a, b in zip(out["batch_prefill"], out["prefill_apart"]))
    ratio = res["batch_prefill"][0] / res["prefill_apart"][0]
    print(f"  P={prompt_len} B={args.batch} new={args.new_tokens} autocast={args.autocast}: batch prefill "
          f"{res['batch_prefill'][0]:.2f}s {gib(res['batch_prefill'][1])} | prefill apart "
          f"{res['prefill_apart'][0]:.2f}s {gib(res['prefill_apart'][1])} | speed-up {ratio:.2f}x | "
          f"same greedy tokens in {same} of {args.batch} rows", flush=True)
    return {"batch_prefill_s": res["batch_prefill"][0], "prefill_apart_s": res["prefill_apart"][0],
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
