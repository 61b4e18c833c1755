"""RL loss + backward for one group: shared-prompt forward vs the naive per-sequence batch.

Both sides run the same model, the same policy-gradient surrogate and the same chunked log-prob
kernel over the G*C completion positions only; the naive side is what TRL and verl compute (the G
sequences ``prompt + c_g`` as one right-padded batch), so only the prompt sharing differs.

Small defaults; the issue's sizes: ``--prompt-lens 4096,8192 --completion 256 --G 8``.
"""

from __future__ import annotations

import argparse
import functools

import torch

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
from longrl.models.kernels import enable_activation_checkpointing
from longrl.train.group_forward import group_logprobs


def _loss_step(model, prompt, completions, adv_G, shared: bool, chunk: int, out: dict, autocast: str = "none") -> None:
    """Policy-gradient surrogate (token-mean) over the group, backward, grads cleared; keeps the log-probs."""
    logps_GC, _, mask_GC = group_logprobs(model, prompt, completions, chunk=chunk, shared=shared, autocast=autocast)
    ratio_GC = torch.exp(logps_GC - logps_GC.detach())
    loss = -(ratio_GC * adv_G[:, None] * mask_GC).sum() / mask_GC.sum()
    loss.backward()
    model.zero_grad(set_to_none=True)
    out["logps"], out["mask"] = logps_GC.detach(), mask_GC


def run(args) -> list[dict]:
    model = model_from_args(args)
    if args.checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    rng = torch.Generator().manual_seed(0)
    rows = []
    for p in ints(args.prompt_lens):
        prompt = torch.randint(0, args.vocab, (p,), generator=rng).tolist()
        comps = [torch.randint(0, args.vocab, (args.completion - (i % 3),), generator=rng).tolist()
                 for i in range(args.G)]
        adv_G = torch.randn(args.G, generator=rng).to(args.device)
        res, outs = {}, {}
        for name, shared in (("shared", True), ("naive", False)):
            outs[name] = {}
            step = functools.partial(_loss_step, model, prompt, comps, adv_G, shared, args.chunk, outs[name])
            res[name] = measure(step, args.device, args.repeats, args.warmup)
            print(f"    {name}: {res[name][0]:.2f}s peak +{gib(res[name][1])} ({load_average()})", flush=True)
        mask = outs["shared"]["mask"]
        if args.autocast != "none":   # rl.autocast: the same shared step with a bf16 body
            outs["autocast"] = {}
            step = functools.partial(_loss_step, model, prompt, comps, adv_G, True, args.chunk, outs["autocast"],
                                     args.autocast)
            t, peak = measure(step, args.device, args.repeats, args.warmup)
            dlogp = (outs["autocast"]["logps"] - outs["shared"]["logps"])[mask].abs().max().item()
            print(f"  P={p:>6} shared + rl.autocast={args.autocast}: {t:.2f}s {gib(peak)} | speed-up over float32 "
                  f"shared {res['shared'][0] / t:.2f}x | max |dlogp| {dlogp:.1e}", flush=True)
        row = {"prompt": p, "naive_s": res["naive"][0], "shared_s": res["shared"][0],
               "naive_peak": res["naive"][1], "shared_peak": res["shared"][1],
               "max_abs_dlogp": (outs["shared"]["logps"] - outs["naive"]["logps"])[mask].abs().max().item()}
        rows.append(row)
        print(f"  P={p:>6} C={args.completion} G={args.G}: naive {row['naive_s']:.2f}s {gib(row['naive_peak'])}"
              f" | shared {row['shared_s']:.2f}s {gib(row['shared_peak'])}"
              f" | speed-up {row['naive_s'] / row['shared_s']:.2f}x,"
              f" memory {row['shared_peak'] / max(row['naive_peak'], 1):.2f}x"
              f" | max |dlogp| {row['max_abs_dlogp']:.1e}", flush=True)
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompt-lens", default="1024")
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on both sides")
    ap.add_argument("--autocast", choices=("none", "bfloat16"), default="none",
                    help="also time the shared step under rl.autocast and print its ratio to float32")
    add_model_args(ap)
    add_common_args(ap)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup(args)
    print(f"[group_forward] {machine(args.device)}; {describe_model(args)}"
          f"{', gradient checkpointing' if args.checkpointing else ''}; {load_average()}", flush=True)
    run(args)


if __name__ == "__main__":
    ensure_malloc_env("bench.bench_group_forward")
    main()
