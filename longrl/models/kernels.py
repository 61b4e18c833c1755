"""Attention plumbing shared by the training forward (``train.group_forward``) and the rollouts
(``rollout.hf``): a registered attention dispatcher, the architecture check, and the calling
conventions that differ across transformers versions.

The dispatcher routes a decoder call to

- the shared-prefix attention of a packed ``[prompt | c_1 .. c_G]`` sequence when the call carries a
  :class:`PackedLayout` (``longrl_layout=...``; see ``longrl.train.group_forward``);
- the decode cache's own attention when it carries one (``longrl_decode=...``; any object with an
  ``attention(module, query, key, value, scaling)`` method, see ``longrl.rollout.hf``);
- the model's original implementation otherwise, with its own mask.

Calls that carry a layout or a decode cache pass :func:`prepared_mask` as ``attention_mask``: a 4-D
placeholder that every supported architecture's mask builder returns unchanged (transformers treats a
4-D mask as already prepared), so no [L, L] mask is ever built for them; the dispatcher ignores it.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

SHARED_ATTENTION = "longrl_shared_prefix"
SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")
"""Decoder-only architectures whose decoder takes a prepared 4-D mask as-is and calls the attention
interface with (module, query, key, value, mask, scaling, dropout, **kwargs); each is tested against
the naive path in tests/train/test_group_forward.py and tests/rollout/test_hf.py."""

SUPPORTED_ATTENTION = ("sdpa", "eager")
"""Implementations the dispatcher can delegate ordinary (non-packed) calls to."""


@dataclass(frozen=True)
class PackedLayout:
    """Where the prompt and the completions sit in a packed ``[prompt | c_1 .. c_G]`` sequence."""

    prompt_len: int
    num_completions: int
    completion_len: int
    mask_CK: torch.Tensor
    """[C, P + C] bool, True = may attend: completion queries over (prompt keys, own keys); one mask
    for every completion and every layer."""


def completion_mask(p: int, c: int, device) -> torch.Tensor:
    """[C, P + C] bool: every prompt key, then causal over the completion's own block."""
    mask_CK = torch.ones(c, p + c, dtype=torch.bool, device=device)
    mask_CK[:, p:] = torch.ones(c, c, dtype=torch.bool, device=device).tril()
    return mask_CK


def _completion_blocks(x_1HLD: torch.Tensor, p: int, g: int, c: int) -> torch.Tensor:
    """The completion part of a packed [1, H, P + G*C, D] tensor as a [G, H, C, D] view."""
    h, d = x_1HLD.shape[1], x_1HLD.shape[-1]
    return x_1HLD[0, :, p:].view(h, g, c, d).transpose(0, 1)


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention over a packed ``[prompt | c_1 .. c_G]`` sequence.

    Prompt queries over prompt keys, causal (P^2/2 scores); completion queries as a [G, C] batch over
    ``cat(prompt K/V expanded to G, own K/V)`` with one [C, P+C] mask shared by the group (G*C*(P+C)
    scores, never the dense (P+G*C)^2 of a packed mask). ``query`` is [1, Hq, L, D], ``key``/``value``
    [1, Hkv, L, D] with L = P + G*C; ``kwargs["longrl_layout"]`` is the :class:`PackedLayout`.
    Returns ([1, L, Hq, D], None) like the transformers attention functions.
    """
    layout: PackedLayout = kwargs["longrl_layout"]
    p, g, c = layout.prompt_len, layout.num_completions, layout.completion_len
    gqa = query.shape[1] != key.shape[1]
    sdpa = functools.partial(nn.functional.scaled_dot_product_attention, dropout_p=dropout, scale=scaling,
                             enable_gqa=gqa)
    out_1HPD = sdpa(query[:, :, :p], key[:, :, :p], value[:, :, :p], is_causal=True)
    if c == 0:
        return out_1HPD.transpose(1, 2).contiguous(), None
    q_GHCD = _completion_blocks(query, p, g, c)
    k_GHKD = torch.cat([key[:, :, :p].expand(g, -1, -1, -1), _completion_blocks(key, p, g, c)], dim=2)
    v_GHKD = torch.cat([value[:, :, :p].expand(g, -1, -1, -1), _completion_blocks(value, p, g, c)], dim=2)
    out_GHCD = sdpa(q_GHCD, k_GHKD, v_GHKD, attn_mask=layout.mask_CK)
    out_1HLD = torch.cat([out_1HPD, out_GHCD.transpose(0, 1).reshape(1, query.shape[1], g * c, -1)], dim=2)
    return out_1HLD.transpose(1, 2).contiguous(), None


def _dispatch_attention(module, query, key, value, attention_mask, *args, inner: str, **kwargs):
    """Shared-prefix attention when the call carries a layout, the decode cache's attention when it
    carries one, else the model's own implementation."""
    if "longrl_layout" in kwargs:
        return shared_prefix_attention(module, query, key, value, attention_mask, *args, **kwargs)
    if "longrl_decode" in kwargs:
        return kwargs["longrl_decode"].attention(module, query, key, value, kwargs.get("scaling"))
    if inner == "eager":
        fn = sys.modules[type(module).__module__].eager_attention_forward
    else:
        fn = ALL_ATTENTION_FUNCTIONS[inner]
    return fn(module, query, key, value, attention_mask, *args, **kwargs)


def install_shared_attention(config) -> None:
    """Point ``config`` at a dispatcher that adds the longrl paths to its attention (idempotent).

    The switch is permanent rather than scoped to one call: gradient checkpointing re-runs the
    layers during backward, after any scope would have ended. Calls without a layout or decode cache
    (``model.generate``, the naive path) go to the original implementation with its own mask.
    """
    inner = config._attn_implementation
    if inner.startswith(SHARED_ATTENTION):
        return
    name = f"{SHARED_ATTENTION}_{inner}"
    AttentionInterface.register(name, functools.partial(_dispatch_attention, inner=inner))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    config._attn_implementation = name


def prepared_mask(device) -> torch.Tensor:
    """The 4-D placeholder mask passed with a layout or a decode cache (see the module docstring)."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)


def unwrap_peft(model) -> nn.Module:
    """The transformers CausalLM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def shared_prefix_unsupported_reason(model) -> str | None:
    """Why the shared-prompt paths cannot run on ``model``, or None when they can."""
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not in {SUPPORTED_MODEL_TYPES}"
    attn = config._attn_implementation or ""
    if attn not in SUPPORTED_ATTENTION and not attn.startswith(SHARED_ATTENTION):
        return f"attention implementation {attn!r} is not one of {SUPPORTED_ATTENTION}"
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return "sliding-window attention layers are not supported"
    if model_type == "mistral" and getattr(config, "sliding_window", None):
        return f"Mistral sliding-window attention (sliding_window={config.sliding_window}) is not supported"
    head = base.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return f"output head {type(head).__name__} is not a bias-free nn.Linear"
    return None


@functools.cache
def _cache_kwarg(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(module: nn.Module, cache) -> dict:
    """``{name: cache}`` under the name ``module.forward`` takes: ``cache`` from transformers 5.24
    (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    return {_cache_kwarg(type(unwrap_peft(module))): cache}


def enable_activation_checkpointing(model) -> None:
    """Non-reentrant activation (gradient) checkpointing under the name the installed transformers has:
    ``activation_checkpointing_enable`` from 5.24 (where ``gradient_checkpointing_enable`` is deprecated),
    ``gradient_checkpointing_enable`` before."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
