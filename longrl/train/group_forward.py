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

import logging

import torch
from torch import nn

from longrl.models import maybe_autocast
from longrl.models.kernels import (
    PackedLayout,
    completion_mask,
    install_shared_attention,
    prepared_mask,
    shared_prefix_unsupported_reason,
    unwrap_peft,
)
from longrl.train.logprobs import token_logprobs_entropy

logger = logging.getLogger(__name__)

_logged_reasons: set[str] = set()


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
        input_ids=input_1L, position_ids=pos_1L.unsqueeze(0), attention_mask=prepared_mask(device),
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
    autocast: str = "none",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-token log-probs (and entropy) of G completions of one prompt under ``model``.

    ``model`` is a transformers causal LM (optionally peft-wrapped). With ``shared=True`` the prompt
    is computed once for the group (see the module docstring); otherwise, or when
    :func:`shared_prefix_unsupported_reason` gives a reason (logged once), the G full sequences are
    run as a batch. Differentiable when called with grad enabled; gradients reach the prompt.
    ``autocast`` ("bfloat16"): the transformer body runs under ``torch.autocast``; its final hidden
    states are cast back to float32, so the head and the log-probs are computed in float32.

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
    with maybe_autocast(model, autocast):
        if shared and reason is None:
            hidden_GCH = _shared_hidden(model, prompt_P, ids_GC)
        else:
            hidden_GCH = _naive_hidden(model, prompt_P, ids_GC, mask_GC)
    hidden_GCH = hidden_GCH.float()
    targets_GC = ids_GC.masked_fill(~mask_GC, -100)
    logps_GC, entropy_GC = _head_logprobs(unwrap_peft(model).get_output_embeddings(), hidden_GCH, targets_GC, chunk,
                                          temperature, with_entropy)
    if entropy_GC is not None:
        entropy_GC = entropy_GC.masked_fill(~mask_GC, 0.0)
    return logps_GC, entropy_GC, mask_GC
