"""Rollout generation: prefill-once shared cache vs ``model.generate(num_return_sequences=G)``, and with
``--vllm`` / ``--vllm-server`` the vLLM backends on the same model, plus their weight-sync cost per step
(in place vs save + reload from disk).

Small defaults; the issue's sizes: ``--prompt-lens 1024,4096 --new-tokens 64 --G 8``. The vLLM columns
need an environment with vLLM (CPU: the venv ``.ci/venv-vllm.sh`` prints); every ratio is against HF
``generate`` measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from bench import (
    IdTokenizer,
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
from longrl.rollout.hf import HFGenerator


def run(args) -> dict:
    model = model_from_args(args).eval()
    engines = vllm_engines(args, model)
    try:
        return {p: run_prompt(args, model, p, engines) for p in ints(args.prompt_lens)} | {
            "sync": {name: sync_costs(gen, model) for name, gen in engines.items()}}
    finally:
        for gen in engines.values():
            gen.close()


def vllm_engines(args, model) -> dict:
    """The requested vLLM generators over a saved copy of ``model`` (with the Qwen tokenizer)."""
    if not (args.vllm or args.vllm_server):
        return {}
    import shutil
    import tempfile

    from longrl.data.tokens import qwen_tokenizer_dir
    from longrl.rollout.vllm_engine import VLLMGenerator
    from longrl.rollout.vllm_server import VLLMServerGenerator

    if args.threads:  # the engine gets the same thread count as the HF columns (vLLM binds its own otherwise)
        os.environ.update(VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS=str(args.threads))
    work = tempfile.mkdtemp(prefix="bench-vllm-")
    model.save_pretrained(work)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(qwen_tokenizer_dir()) / f, work)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work)
    common = dict(kv_cache_gib=args.kv_cache_gib, max_model_len=max(ints(args.prompt_lens)) + args.new_tokens + 16)
    engines = {}
    if args.vllm:
        t0 = time.perf_counter()
        engines["vllm"] = VLLMGenerator(model, tok, work, **common)
        print(f"    vllm in-process engine started in {time.perf_counter() - t0:.0f}s", flush=True)
    if args.vllm_server:
        t0 = time.perf_counter()
        engines["vllm_server"] = VLLMServerGenerator(model, tok, work, **common, workdir=Path(work) / "server")
        print(f"    vllm server started in {time.perf_counter() - t0:.0f}s", flush=True)
    return engines


def sync_costs(gen, model, repeats: int = 3) -> dict:
    """Seconds per weight sync: in place (the backend's ``sync_weights``) vs save_pretrained to disk + vLLM's
    own reload from that path (what a checkpoint-reloading backend pays)."""
    import tempfile

    def in_place():
        gen.sync_weights(model)

    def save_reload():
        with tempfile.TemporaryDirectory(dir=".") as d:
            model.save_pretrained(d)
            if hasattr(gen, "llm"):
                gen.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(Path(d).resolve())})
                gen.llm.reset_prefix_cache()
            else:
                gen._request("POST", "/collective_rpc", {"method": "reload_weights",
                                                         "kwargs": {"weights_path": str(Path(d).resolve())}})
                gen._request("POST", "/reset_prefix_cache")

    fast = measure(in_place, "cpu", repeats, 1)[0]
    slow = measure(save_reload, "cpu", repeats, 1)[0]
    gen.sync_weights(model)
    name = "in-process" if hasattr(gen, "llm") else "server"
    print(f"  weight sync ({name}): in place {fast:.3f}s | save + reload {slow:.3f}s | {slow / fast:.1f}x", flush=True)
    return {"in_place_s": fast, "save_reload_s": slow, "ratio": slow / fast}


def run_prompt(args, model, prompt_len: int, engines: dict) -> dict:
    prompt = torch.randint(0, args.vocab, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
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
    for name, gen in engines.items():
        def step(gen=gen, name=name):  # a fresh prompt each call: no prefix-cache hit across calls
            gen.reset_prefix_cache()  # as after every RL step's weight sync
            out = gen.generate([prompt], n=args.G, max_new_tokens=args.new_tokens, temperature=1.0)
            lengths[name] = sum(len(c.token_ids) for c in out[0])

        res[name] = measure(step, args.device, args.repeats, args.warmup)
        print(f"    {name}: {res[name][0]:.2f}s ({load_average()})", flush=True)
    ratio = res["generate"][0] / res["prefill_once"][0]
    decode_s = res["prefill_once"][0] - res["prefill"][0]
    vllm_cols = "".join(f" | {n} {res[n][0]:.2f}s ({res['generate'][0] / res[n][0]:.2f}x generate, "
                        f"{res['prefill_once'][0] / res[n][0]:.2f}x prefill-once)" for n in engines)
    print(f"  P={prompt_len} new={args.new_tokens} G={args.G}: generate(num_return_sequences) "
          f"{res['generate'][0]:.2f}s {gib(res['generate'][1])} | prefill-once {res['prefill_once'][0]:.2f}s "
          f"{gib(res['prefill_once'][1])} (one prefill {res['prefill'][0]:.2f}s + decode {decode_s:.2f}s)"
          f" | speed-up {ratio:.2f}x{vllm_cols} | tokens {lengths}", flush=True)
    return {"generate_s": res["generate"][0], "prefill_once_s": res["prefill_once"][0], "speedup": ratio,
            **{f"{n}_s": res[n][0] for n in engines}}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompt-lens", default="512", help="comma-separated prompt lengths")
    ap.add_argument("--vllm", action="store_true", help="add the in-process vLLM engine column")
    ap.add_argument("--vllm-server", action="store_true", help="add the vLLM server column (started here)")
    ap.add_argument("--kv-cache-gib", type=float, default=2.0, help="vLLM CPU KV cache")
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
