"""Log-probs of a group of G completions that share one prompt, with the prompt computed once.

Shared path: the prompt and the G (right-padded) completions are packed into ONE sequence
``[prompt | c_1 | ... | c_G]`` of length P + G*C, with position ids ``0..P-1`` for the prompt and
``P..P+C-1`` again for every completion. All linear layers (projections, MLP, norms) therefore see
P + G*C tokens instead of the naive G*(P+C). A registered attention function splits each layer's
attention in two scaled-dot-product calls:

- prompt queries over prompt keys, causal (the fast ``is_causal`` path): P^2/2 scores;
- completion queries as a [G, C] batch over ``cat(prompt K/V expanded to G, own K/V)`` with ONE
  [C, P+C] mask shared by the group (all prompt keys, causal over the own block): G*C*(P+C)
  scores, never the dense (P+G*C)^2 of a packed mask.

One forward, one autograd graph: gradients from all G completions flow back into the prompt's keys
and values (through the expand) exactly as in G separate forwards, while the prompt's activations
are computed and stored once. No KV cache is used, so it works unchanged under gradient
checkpointing and with peft LoRA layers.

The first completion token is predicted from the LAST prompt position's hidden state, which is
shared by the whole group; completion token t > 0 from completion position t - 1.

Naive path (``shared=False`` or an unsupported architecture): the G full sequences
``prompt + c_g`` as one right-padded batch, which is what TRL and verl compute; the head and the
log-prob kernel run over the completion positions only, exactly as on the shared path.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from longrl.train.logprobs import token_logprobs_entropy

logger = logging.getLogger(__name__)

SHARED_ATTENTION = "longrl_shared_prefix"
SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")
"""Decoder-only architectures whose forward takes a prepared mask dict and calls the attention
interface with (module, query, key, value, mask, scaling, dropout, **kwargs)."""

SUPPORTED_ATTENTION = ("sdpa", "eager")
"""Implementations the dispatcher can delegate ordinary (non-packed) calls to."""

_logged_reasons: set[str] = set()


@dataclass(frozen=True)
class PackedLayout:
    """Where the prompt and the completions sit in the packed sequence."""

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
    """Attention over a packed ``[prompt | c_1 .. c_G]`` sequence (see the module docstring).

    ``query`` is [1, Hq, L, D], ``key``/``value`` [1, Hkv, L, D] with L = P + G*C;
    ``kwargs["longrl_layout"]`` is the :class:`PackedLayout`. Returns ([1, L, Hq, D], None) like the
    transformers attention functions.
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
    carries one (``longrl_decode``, see ``longrl.rollout.hf``), else the model's own implementation."""
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
    """Point ``config`` at a dispatcher that adds the shared-prefix path to its attention (idempotent).

    The switch is permanent rather than scoped to one call: gradient checkpointing re-runs the
    layers during backward, after any scope would have ended. Calls without a layout (generation,
    the naive path) go to the original implementation with its own mask format.
    """
    inner = config._attn_implementation
    if inner.startswith(SHARED_ATTENTION):
        return
    name = f"{SHARED_ATTENTION}_{inner}"
    AttentionInterface.register(name, functools.partial(_dispatch_attention, inner=inner))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    config._attn_implementation = name


def unwrap_peft(model) -> nn.Module:
    """The transformers CausalLM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def shared_prefix_unsupported_reason(model) -> str | None:
    """Why the shared-prompt path cannot run on ``model``, or None when it can."""
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
    head = base.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return f"output head {type(head).__name__} is not a bias-free nn.Linear"
    return None


def _pad_completions(completion_ids: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [G, C] right-padded with 0, mask [G, C] bool) for the completions."""
    c = max((len(x) for x in completion_ids), default=0)
    ids_GC = torch.zeros(len(completion_ids), c, dtype=torch.long, device=device)
    mask_GC = torch.zeros(len(completion_ids), c, dtype=torch.bool, device=device)
    for i, ids in enumerate(completion_ids):
        ids_GC[i, :len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
        mask_GC[i, :len(ids)] = True
    return ids_GC, mask_GC


def _shared_hidden(model, prompt_P: torch.Tensor, ids_GC: torch.Tensor) -> torch.Tensor:
    """Final hidden states predicting each completion token, via the packed forward; [G, C, H]."""
    base = unwrap_peft(model)
    g, c = ids_GC.shape
    p = prompt_P.shape[0]
    device = prompt_P.device
    input_1L = torch.cat([prompt_P, ids_GC.reshape(-1)]).unsqueeze(0)
    pos_1L = torch.cat([torch.arange(p, device=device), torch.arange(p, p + c, device=device).repeat(g)])
    layout = PackedLayout(p, g, c, completion_mask(p, c, device))
    install_shared_attention(base.config)
    hidden_1LH = base.get_decoder()(
        input_ids=input_1L, position_ids=pos_1L.unsqueeze(0), attention_mask={"full_attention": None},
        use_cache=False, longrl_layout=layout,
    ).last_hidden_state
    last_prompt_GH = hidden_1LH[0, p - 1].expand(g, -1)
    comp_GCH = hidden_1LH[0, p:].view(g, c, hidden_1LH.shape[-1])
    return torch.cat([last_prompt_GH.unsqueeze(1), comp_GCH[:, :-1]], dim=1)[:, :c]


def _naive_hidden(model, prompt_P: torch.Tensor, ids_GC: torch.Tensor, mask_GC: torch.Tensor) -> torch.Tensor:
    """Final hidden states predicting each completion token, one full sequence per row; [G, C, H]."""
    base = unwrap_peft(model)
    g, c = ids_GC.shape
    p = prompt_P.shape[0]
    input_GL = torch.cat([prompt_P.expand(g, -1), ids_GC], dim=1)
    attn_GL = torch.cat([torch.ones(g, p, dtype=torch.long, device=ids_GC.device), mask_GC.long()], dim=1)
    hidden_GLH = base.get_decoder()(input_ids=input_GL, attention_mask=attn_GL, use_cache=False).last_hidden_state
    return hidden_GLH[:, p - 1:p - 1 + c]


def _head_logprobs(head, hidden_GCH, targets_GC, chunk, temperature, with_entropy):
    """Chunked kernel for a bias-free linear head; full logits through any other head module."""
    if isinstance(head, nn.Linear) and head.bias is None:
        return token_logprobs_entropy(hidden_GCH, head.weight, targets_GC, chunk, temperature, with_entropy)
    logp_GCV = torch.log_softmax(head(hidden_GCH).float() / temperature, dim=-1)
    logps_GC = logp_GCV.gather(-1, targets_GC.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps_GC = torch.where(targets_GC >= 0, logps_GC, 0.0)
    entropy_GC = -(logp_GCV.exp() * logp_GCV).sum(-1) if with_entropy else None
    return logps_GC, entropy_GC


def _log_fallback(reason: str) -> None:
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        logger.warning("group_logprobs: shared-prompt path unavailable (%s); using the naive path", reason)


def group_logprobs(
    model,
    prompt_ids: list[int] | torch.Tensor,
    completion_ids: list[list[int]],
    chunk: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = True,
    shared: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-token log-probs (and entropy) of G completions of one prompt under ``model``.

    ``model`` is a transformers causal LM (optionally peft-wrapped). With ``shared=True`` the prompt
    is computed once for the group (see the module docstring); otherwise, or when
    :func:`shared_prefix_unsupported_reason` gives a reason (logged once), the G full sequences are
    run as a batch. Differentiable when called with grad enabled; gradients reach the prompt.

    Returns ``(logps [G, C_max], entropy [G, C_max] or None, mask [G, C_max] bool)``, float32,
    with C_max the longest completion; padded positions have log-prob 0 and mask False.
    """
    device = next(model.parameters()).device
    prompt_P = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).reshape(-1)
    if prompt_P.numel() == 0:
        raise ValueError("group_logprobs needs a non-empty prompt")
    ids_GC, mask_GC = _pad_completions(completion_ids, device)
    reason = shared_prefix_unsupported_reason(model) if shared else None
    if reason is not None:
        _log_fallback(reason)
    if shared and reason is None:
        hidden_GCH = _shared_hidden(model, prompt_P, ids_GC)
    else:
        hidden_GCH = _naive_hidden(model, prompt_P, ids_GC, mask_GC)
    targets_GC = ids_GC.masked_fill(~mask_GC, -100)
    logps_GC, entropy_GC = _head_logprobs(unwrap_peft(model).get_output_embeddings(), hidden_GCH, targets_GC, chunk,
                                          temperature, with_entropy)
    if entropy_GC is not None:
        entropy_GC = entropy_GC.masked_fill(~mask_GC, 0.0)
    return logps_GC, entropy_GC, mask_GC
