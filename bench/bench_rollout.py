"""Rollout generation: prefill-once shared cache vs ``model.generate(num_return_sequences=G)``.

Small defaults; the issue's sizes: ``--prompt-len 4096 --new-tokens 64 --G 8``.
"""

from __future__ import annotations

import argparse

import torch

from bench import (
    IdTokenizer,
    add_common_args,
    add_model_args,
    describe_model,
    ensure_malloc_env,
    gib,
    load_average,
    machine,
    measure,
    model_from_args,
    setup,
)
from longrl.rollout.hf import HFGenerator


def run(args) -> dict:
    model = model_from_args(args).eval()
    prompt = torch.randint(0, args.vocab, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    res, lengths = {}, {}

    def prefill():
        with torch.no_grad():
            model(input_ids=torch.tensor([prompt], device=args.device), use_cache=True, logits_to_keep=1)

    res["prefill"] = measure(prefill, args.device, args.repeats, args.warmup)
    for name, shared in (("prefill_once", True), ("generate", False)):
        gen = HFGenerator(model, IdTokenizer(), shared_prefill=shared, seed=0)

        def step(gen=gen, name=name):
            out = gen.generate([prompt], n=args.G, max_new_tokens=args.new_tokens, temperature=1.0)
            lengths[name] = sum(len(c.token_ids) for c in out[0])

        res[name] = measure(step, args.device, args.repeats, args.warmup)
        print(f"    {name}: {res[name][0]:.2f}s ({load_average()})", flush=True)
    ratio = res["generate"][0] / res["prefill_once"][0]
    decode_s = res["prefill_once"][0] - res["prefill"][0]
    print(f"  P={args.prompt_len} new={args.new_tokens} G={args.G}: generate(num_return_sequences) "
          f"{res['generate'][0]:.2f}s {gib(res['generate'][1])} | prefill-once {res['prefill_once'][0]:.2f}s "
          f"{gib(res['prefill_once'][1])} (one prefill {res['prefill'][0]:.2f}s + decode {decode_s:.2f}s)"
          f" | speed-up {ratio:.2f}x | tokens {lengths}", flush=True)
    return {"generate_s": res["generate"][0], "prefill_once_s": res["prefill_once"][0], "speedup": ratio}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--G", type=int, default=8)
    add_model_args(ap)
    add_common_args(ap)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup(args)
    print(f"[rollout] {machine(args.device)}; {describe_model(args)}; {load_average()}", flush=True)
    run(args)


if __name__ == "__main__":
    ensure_malloc_env("bench.bench_rollout")
    main()
