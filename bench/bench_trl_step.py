"""A full RL step (rollouts, reward, advantages, loss, backward, AdamW) against TRL's GRPOTrainer.

Both sides get the same randomly initialised small Qwen2 model with the real Qwen tokenizer and
vocabulary, one prompt per step, G completions of exactly ``--completion`` tokens (no stop token in
the model's config), the same length-based reward function and no reference model (beta = 0).
TRL generates with ``model.generate`` over G copies of the prompt and runs the G full sequences
for the loss; longrl prefills once and runs the shared-prompt group forward.

Small defaults; the issue's sizes: ``--prompt-lens 64,4096``.

``--vllm`` (in the vLLM venv, ``.ci/venv-vllm.sh``) adds a column: the same longrl step with the rollouts
sampled by the in-process vLLM engine and the new weights pushed into it in place after every optimizer
step (the sync is inside the timed step). Without TRL installed (the vLLM venv has none) the TRL column
is left out and the ratio is vLLM rollouts against longrl's HF rollouts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from bench import (
    add_common_args,
    add_model_args,
    describe_model,
    ensure_malloc_env,
    ints,
    load_average,
    machine,
    model_from_args,
    setup,
)
from longrl.models.kernels import enable_activation_checkpointing
from longrl.rollout.hf import HFGenerator
from longrl.train.group_forward import group_logprobs


def reward_len(completions, **kwargs) -> list[float]:
    """A custom reward: completion length in characters, mod 7 (anything non-constant will do)."""
    return [float(len(str(c)) % 7) for c in completions]


def _prompt_text(tokenizer, n_tokens: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 50_000, (n_tokens,), generator=g).tolist()
    return tokenizer.decode(ids)


def longrl_step_times(model, tokenizer, prompt_text: str, args, gen=None) -> list[float]:
    """Seconds per step for ``warmup + repeats`` steps of the longrl RL step (rollouts from ``gen``, default
    HF prefill-once; its ``update_weights`` runs after every optimizer step, inside the timing)."""
    gen = gen or HFGenerator(model, tokenizer, shared_prefill=True, seed=0)
    prompt = tokenizer(prompt_text)["input_ids"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for step in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        comps = gen.generate([prompt], n=args.G, max_new_tokens=args.completion, temperature=1.0)[0]
        rewards_G = torch.tensor(reward_len([c.text for c in comps]), device=args.device)
        adv_G = (rewards_G - rewards_G.mean()) / (rewards_G.std() + 1e-4)
        logps_GC, _, mask_GC = group_logprobs(model, prompt, [c.token_ids for c in comps], with_entropy=False)
        ratio_GC = torch.exp(logps_GC - logps_GC.detach())
        loss = -(ratio_GC * adv_G[:, None] * mask_GC).sum() / mask_GC.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        gen.update_weights(model, step + 1)
        times.append(time.perf_counter() - t0)
    return times


def vllm_generator(model, prompt_len: int, args):
    """The in-process vLLM engine over a saved copy of ``model`` (Qwen tokenizer), eager, prefix caching on."""
    import os
    import shutil
    from pathlib import Path

    from transformers import AutoTokenizer

    from longrl.data.tokens import qwen_tokenizer_dir
    from longrl.rollout.vllm_engine import VLLMGenerator

    if args.threads:  # the engine gets the trainer's thread count (vLLM binds its own otherwise)
        os.environ.update(VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS=str(args.threads))
    work = tempfile.mkdtemp(prefix="bench-trl-vllm-")
    model.save_pretrained(work)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(qwen_tokenizer_dir()) / f, work)
    t0 = time.perf_counter()
    gen = VLLMGenerator(model, AutoTokenizer.from_pretrained(work), work, kv_cache_gib=args.kv_cache_gib,
                        max_model_len=prompt_len + args.completion + 16, seed=0)
    print(f"    vllm in-process engine started in {time.perf_counter() - t0:.0f}s", flush=True)
    return gen


def trl_step_times(model, tokenizer, prompt_text: str, args) -> list[float]:
    """Seconds per step for ``warmup + repeats`` GRPOTrainer steps (timed by a callback)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], 0.0

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, per_device_train_batch_size=args.G, num_generations=args.G,
            max_completion_length=args.completion, max_steps=args.warmup + args.repeats, learning_rate=1e-6, beta=0.0,
            temperature=1.0, top_p=1.0, top_k=0, report_to="none", save_strategy="no", logging_steps=1,
            use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16", disable_dropout=True, seed=0,
            gradient_checkpointing=args.checkpointing,
        )
        ds = Dataset.from_list([{"prompt": prompt_text}] * (args.G * (1 + args.warmup + args.repeats)))
        trainer = GRPOTrainer(model=model, reward_funcs=reward_len, args=cfg, train_dataset=ds,
                              processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    return timer.times


def run(args) -> list[dict]:
    from longrl.data.tokens import load_tokenizer

    tokenizer = load_tokenizer()
    rows = []
    for p in ints(args.prompt_lens):
        text = _prompt_text(tokenizer, p)
        n_prompt = len(tokenizer(text)["input_ids"])
        model = model_from_args(args)
        if args.checkpointing:
            enable_activation_checkpointing(model)
        ours = longrl_step_times(model.train(), tokenizer, text, args)
        ours_s = statistics.median(ours[args.warmup:])
        row, line = {"prompt": n_prompt, "longrl_s": ours_s}, f"longrl {ours_s:.2f}s/step"
        if _has_trl():
            theirs = trl_step_times(model_from_args(args), tokenizer, text, args)
            row["trl_s"] = theirs_s = statistics.median(theirs[args.warmup:])
            line = f"TRL GRPOTrainer {theirs_s:.2f}s/step | {line} | speed-up {theirs_s / ours_s:.2f}x"
        if args.vllm:
            model = model_from_args(args).train()
            gen = vllm_generator(model, n_prompt, args)
            try:
                row["longrl_vllm_s"] = v = statistics.median(longrl_step_times(model, tokenizer, text, args, gen)[
                    args.warmup:])
            finally:
                gen.close()
            line += f" | longrl + vLLM rollouts (in-place sync) {v:.2f}s/step, {ours_s / v:.2f}x longrl HF"
            if "trl_s" in row:
                line += f", {row['trl_s'] / v:.2f}x TRL"
        rows.append(row)
        print(f"  prompt {n_prompt} tokens, C={args.completion}, G={args.G}: {line} ({load_average()})", flush=True)
    return rows


def _has_trl() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompt-lens", default="64")
    ap.add_argument("--completion", type=int, default=16)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--vllm", action="store_true", help="add longrl with in-process vLLM rollouts (vLLM venv)")
    ap.add_argument("--kv-cache-gib", type=float, default=2.0, help="vLLM CPU KV cache")
    ap.add_argument("--checkpointing", action="store_true",
                    help="gradient checkpointing on both sides (TRL's own default is on; off here unless given)")
    add_model_args(ap)
    add_common_args(ap)
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup(args)
    print(f"[trl_step] {machine(args.device)}; Qwen tokenizer; {describe_model(args)}"
          f"{', gradient checkpointing' if args.checkpointing else ''}; {load_average()}",
          flush=True)
    run(args)


if __name__ == "__main__":
    ensure_malloc_env("bench.bench_trl_step")
    main()
