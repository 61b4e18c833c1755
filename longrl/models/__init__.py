"""Policy loading (any Hugging Face causal LM, GGUF included) and tiny from-scratch models.

Tiny models are for the CPU demo and the tests: a byte-level BPE tokenizer trained locally with the
Qwen2 pre-tokenizer pipeline and a ChatML chat template, and a small ``Qwen2ForCausalLM``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from longrl.config import ConfigError, ModelConfig
from longrl.models.kernels import enable_activation_checkpointing

log = logging.getLogger(__name__)

QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""The Qwen2 tokenizer's pre-tokenization regex (digits split one by one)."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]
"""Added as single, non-special tokens (as in Qwen's tokenizers) so decoding keeps them."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """Train a byte-level BPE tokenizer with the Qwen2 pre-tokenizer pipeline on ``texts``."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


TINY_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")
"""Architectures :func:`tiny_causal_lm` builds (those the shared-prompt paths support)."""


def tiny_causal_lm(model_type: str = "qwen2", vocab_size: int = 1000, hidden_size: int = 64, num_layers: int = 2,
                   num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int | None = None,
                   max_position_embeddings: int = 32768, tie_word_embeddings: bool = True, seed: int = 0,
                   **config_kwargs):
    """A randomly initialised float32 causal LM of ``model_type`` (one of :data:`TINY_MODEL_TYPES`).

    Mistral is built without a sliding window (as Mistral 7B v0.2 and later); ``config_kwargs`` go
    to the config (token ids, for example)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in TINY_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {TINY_MODEL_TYPES}")
    extra = {"sliding_window": None} if model_type == "mistral" else {}
    config = AutoConfig.for_model(
        model_type, vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size or 4 * hidden_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, **extra, **config_kwargs,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).float()


def build_tiny_model(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     num_kv_heads: int = 2, intermediate_size: int | None = None,
                     max_position_embeddings: int = 32768, seed: int = 0, model_type: str = "qwen2"):
    """A randomly initialised causal LM (Qwen2 by default) sized for ``tokenizer``, tied embeddings."""
    model = tiny_causal_lm(
        model_type, vocab_size=len(tokenizer), hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, seed=seed,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


NEWLINE_BEFORE_TEXT = r"\n(?=[^\n])"


def space_after_newline(text: str) -> str:
    """What :func:`adapt_tiny_tokenizer`'s normalizer does to a text."""
    return re.sub(NEWLINE_BEFORE_TEXT, "\n ", text)


def adapt_tiny_tokenizer(tokenizer):
    """``build_tiny_tokenizer``'s output with a normalizer that puts a space after a newline before text.

    A paragraph's first word is then the same token as everywhere else: the Qwen2 pre-tokenizer never
    merges a newline into a word, so ``"\\n\\nKalor"`` would give ``Kalor``, not `` Kalor``, and a model
    learning from scratch would first have to learn that the two are one name. Load the saved directory
    with :func:`load_tokenizer`, which keeps the normalizer (``AutoTokenizer`` would not).
    """
    from tokenizers import Regex, normalizers

    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(NEWLINE_BEFORE_TEXT), "\n ")])
    return tokenizer


def build_tiny_policy(texts: Iterable[str], *, vocab_size: int = 2000, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 4, num_kv_heads: int = 2, seed: int = 0, model_type: str = "qwen2"):
    """THE from-scratch policy (``longrl pipeline`` with no ``model.path``, ``longrl sft --init-tiny``):
    (model, tokenizer), a BPE tokenizer trained on ``texts`` (:func:`adapt_tiny_tokenizer`) and a random
    model of ``model_type`` sized for it."""
    tokenizer = adapt_tiny_tokenizer(build_tiny_tokenizer([space_after_newline(t) for t in texts], vocab_size))
    model = build_tiny_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                             num_kv_heads=num_kv_heads, seed=seed, model_type=model_type)
    return model, tokenizer


def maybe_autocast(model, dtype: str = "none"):
    """``torch.autocast`` on ``model``'s device in ``dtype`` ("bfloat16"), or a no-op for "none": matmuls in
    bfloat16 while the weights stay as loaded (on a CPU with AVX512-BF16 a SmolLM2 prefill runs ~2.3x faster
    than in float32). Generation (``rollout.autocast``, ``eval.autocast``) and the RL training forward
    (``rl.autocast``) use it, each only where configured."""
    if dtype == "none":
        return contextlib.nullcontext()
    if dtype != "bfloat16":
        raise ValueError(f"autocast dtype must be 'none' or 'bfloat16', got {dtype!r}")
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def hf_progress_bars_off():
    """transformers' per-call progress bars ("Loading weights", saving) off inside the block: a run's console
    shows longrl's own progress, not one bar per model load or checkpoint."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_pretrained_dir(model, tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _pretrained_location(path: str) -> tuple[str, dict]:
    """Split a GGUF file path into (directory, {'gguf_file': name}); other paths pass through."""
    p = Path(path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ConfigError("model.path", f"GGUF file not found: {path}")
        return str(p.parent), {"gguf_file": p.name}
    return path, {}


def _rope_kwargs(cfg: ModelConfig, location: str, extra: dict) -> dict:
    if not cfg.rope.yarn_factor:
        return {}
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(location, **extra)
    params = dict(getattr(base, "rope_parameters", None) or {})
    params.update(rope_type="yarn", factor=cfg.rope.yarn_factor,
                  original_max_position_embeddings=cfg.rope.original_max_position_embeddings)
    return {"rope_parameters": params}


GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
"""tokenizer_config classes that mean "exactly the saved tokenizer.json" (tokenizers built here)."""


def _saved_tokenizer_class(path: str) -> str:
    cfg = Path(path) / "tokenizer_config.json"
    if not cfg.is_file():
        return ""
    return str(json.loads(cfg.read_text()).get("tokenizer_class") or "")


def load_tokenizer(path: str, extra: dict | None = None):
    """The tokenizer at ``path``. A generic fast tokenizer (one built by :func:`build_tiny_tokenizer`) is
    loaded from its tokenizer.json as saved: ``AutoTokenizer`` would rebuild it as the model type's class
    and drop a custom normalizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not extra and _saved_tokenizer_class(path) in GENERIC_TOKENIZER_CLASSES:
        tok = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tok = AutoTokenizer.from_pretrained(path, **(extra or {}))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(cfg: ModelConfig, trainable: bool = True):
    """Load (model, tokenizer) as the config says: dtype, device, YaRN, gradient checkpointing, LoRA."""
    from transformers import AutoModelForCausalLM

    if not cfg.path:
        raise ConfigError("model.path", "is required (a Hugging Face id, a local directory or a .gguf file)")
    location, extra = _pretrained_location(cfg.path)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    tok_loc, tok_extra = _pretrained_location(cfg.tokenizer) if cfg.tokenizer else (location, extra)
    tokenizer = load_tokenizer(tok_loc, tok_extra)
    model = AutoModelForCausalLM.from_pretrained(
        location, dtype=dtype, attn_implementation=cfg.attn_implementation,
        **extra, **_rope_kwargs(cfg, location, extra),
    ).to(device)
    if extra.get("gguf_file"):
        dequantized(model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if trainable and cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    if trainable and cfg.lora.enabled:
        model = _apply_lora(model, cfg)
    return model, tokenizer


def dequantized(model):
    """Make a model loaded from a GGUF file an ordinary one of its architecture, in place; returns it.

    transformers de-quantises GGUF tensors into plain ``nn.Linear`` weights on load but keeps the
    model marked as GGUF-quantized, which ``save_pretrained`` refuses ("not serializable"), so no
    checkpoint could be written. Dropping the marks leaves exactly the loaded weights, saved as an
    ordinary checkpoint (safetensors + config without ``quantization_config``)."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def export_gguf_as_hf_dir(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """De-quantise a GGUF checkpoint into a plain Hugging Face directory (model + tokenizer), for
    ``transformers serve``, vLLM, or any tool that cannot read GGUF."""
    model, tokenizer = load_policy(ModelConfig(path=str(gguf_path), device="cpu", dtype=dtype), trainable=False)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained_dir(model, tokenizer, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)        # whole or absent: a killed export is never mistaken for a finished one
    return out_dir


def _apply_lora(model, cfg: ModelConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model
