"""Per-token log-probabilities and entropy from hidden states, chunked over tokens.

The logits of a long sequence ([T, V] with V = 151,936 for Qwen) never exist in full: the forward
pass walks the tokens in chunks, keeps only the per-token results, and the backward pass recomputes
each chunk's logits from the saved hidden states. Peak extra memory, whatever T is, is one chunk of
float32 logits plus one ``ROW_BLOCK`` x V block of temporaries, on top of the gradients every
training step holds anyway: the head's (weight-sized, float32) and the hidden states'.
"""

from __future__ import annotations

import torch

ROW_BLOCK = 128
"""Rows per block for the element-wise temporaries inside a chunk (one ROW_BLOCK x V block is alive)."""


def _chunk_logits(h_cH: torch.Tensor, weight_VH: torch.Tensor, temperature: float) -> torch.Tensor:
    """Float32 logits of one chunk divided by the temperature; [c, V]."""
    z_cV = (h_cH @ weight_VH.T).float()
    if temperature != 1.0:
        z_cV.div_(temperature)
    return z_cV


def _row_blocks(n: int):
    """Slices of at most ROW_BLOCK rows covering range(n)."""
    return (slice(i, min(i + ROW_BLOCK, n)) for i in range(0, n, ROW_BLOCK))


def _forward_chunk(z_cV: torch.Tensor, targets_c: torch.Tensor, with_entropy: bool):
    """(logp_c, entropy_c or None, lse_c) of one chunk; overwrites z_cV with z - max."""
    m_c1 = z_cV.amax(dim=-1, keepdim=True)
    z_cV.sub_(m_c1)
    picked_c = z_cV.gather(-1, targets_c.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logsum_c = torch.empty(z_cV.shape[0], device=z_cV.device)
    ent_c = torch.empty_like(logsum_c) if with_entropy else None
    for rows in _row_blocks(z_cV.shape[0]):
        e_rV = z_cV[rows].exp()
        s_r = e_rV.sum(-1)
        logsum_c[rows] = s_r.log()
        if with_entropy:
            # H = log s - sum(e * zs) / s  with zs = z - max; the product is formed in place in e
            ent_c[rows] = logsum_c[rows] - e_rV.mul_(z_cV[rows]).sum(-1) / s_r
        del e_rV  # before the next block's exp, so one block of temporaries is alive at a time
    logp_c = torch.where(targets_c >= 0, picked_c - logsum_c, 0.0)
    return logp_c, ent_c, m_c1.squeeze(-1) + logsum_c


def _grad_logits_chunk(z_cV, lse_c, ent_c, targets_c, g_logp_c, g_ent_c) -> torch.Tensor:
    """Gradient w.r.t. the tempered logits of one chunk, written into z_cV; [c, V].

    d logp_t / dz = onehot(t) - p;  dH / dz = -p * (log p + H).
    """
    z_cV.sub_(lse_c.unsqueeze(-1))  # now log p
    valid_c = targets_c >= 0
    g_lp_c = torch.where(valid_c, g_logp_c, 0.0)
    for rows in _row_blocks(z_cV.shape[0]):
        logp_rV = z_cV[rows]
        p_rV = logp_rV.exp()
        if g_ent_c is not None:
            logp_rV.add_(ent_c[rows].unsqueeze(-1)).mul_(g_ent_c[rows].unsqueeze(-1))
        else:
            logp_rV.zero_()
        logp_rV.add_(g_lp_c[rows].unsqueeze(-1)).mul_(p_rV).neg_()
        del p_rV
    z_cV.scatter_add_(-1, targets_c.clamp(min=0).unsqueeze(-1), g_lp_c.unsqueeze(-1))
    return z_cV


class _ChunkedLogprobs(torch.autograd.Function):
    """Chunked log-prob/entropy with recomputation; see :func:`token_logprobs_entropy`."""

    @staticmethod
    def forward(ctx, h_NH, weight_VH, targets_N, chunk, temperature, with_entropy):
        ctx.set_materialize_grads(False)  # entropy used only as a metric: backward skips its gradient
        n = h_NH.shape[0]
        logp_N = torch.empty(n, device=h_NH.device)
        ent_N = torch.empty(n, device=h_NH.device) if with_entropy else None
        lse_N = torch.empty(n, device=h_NH.device)
        for i in range(0, n, chunk):
            sl = slice(i, min(i + chunk, n))
            z_cV = _chunk_logits(h_NH[sl], weight_VH, temperature)
            logp_N[sl], ent_c, lse_N[sl] = _forward_chunk(z_cV, targets_N[sl], with_entropy)
            if with_entropy:
                ent_N[sl] = ent_c
            del z_cV
        ctx.save_for_backward(h_NH, weight_VH, targets_N, lse_N, ent_N if with_entropy else lse_N)
        ctx.chunk, ctx.temperature, ctx.with_entropy = chunk, temperature, with_entropy
        if with_entropy:
            return logp_N, ent_N
        return logp_N, torch.zeros(0, device=h_NH.device)

    @staticmethod
    def backward(ctx, g_logp_N, g_ent_N):
        h_NH, weight_VH, targets_N, lse_N, ent_N = ctx.saved_tensors
        chunk, temperature = ctx.chunk, ctx.temperature
        use_ent = ctx.with_entropy and g_ent_N is not None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h_NH = torch.zeros_like(h_NH) if need_h else None
        grad_w_VH = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device) if need_w else None
        if g_logp_N is None:
            g_logp_N = torch.zeros_like(lse_N)
        for i in range(0, h_NH.shape[0], chunk):
            sl = slice(i, min(i + chunk, h_NH.shape[0]))
            z_cV = _chunk_logits(h_NH[sl], weight_VH, temperature)
            g_z_cV = _grad_logits_chunk(z_cV, lse_N[sl], ent_N[sl], targets_N[sl], g_logp_N[sl].float(),
                                        g_ent_N[sl].float() if use_ent else None)
            g_z_cV.div_(temperature)
            if need_h:
                grad_h_NH[sl] = (g_z_cV.to(weight_VH.dtype) @ weight_VH).to(h_NH.dtype)
            if need_w:
                grad_w_VH.addmm_(g_z_cV.T, h_NH[sl].float())
            del z_cV, g_z_cV
        grad_w = grad_w_VH.to(weight_VH.dtype) if need_w else None
        return grad_h_NH, grad_w, None, None, None, None


def token_logprobs_entropy(
    hidden_BTH: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets_BT: torch.Tensor,
    chunk: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each target token and the entropy of each next-token distribution.

    ``hidden_BTH[b, t]`` is the final (normed) hidden state that predicts ``targets_BT[b, t]``;
    logits are ``hidden @ lm_head_weight.T / temperature`` (a bias-free LM head). Work is done in
    chunks of ``chunk`` tokens over the flattened B*T rows; backward recomputes each chunk's logits.
    A negative target gives log-prob 0 with no gradient (its entropy is still computed).

    Returns ``(logps_BT, entropy_BT)`` in float32; ``entropy_BT`` is None when ``with_entropy`` is
    False. Both are differentiable w.r.t. ``hidden_BTH`` and ``lm_head_weight``.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    b, t, h = hidden_BTH.shape
    logp_N, ent_N = _ChunkedLogprobs.apply(
        hidden_BTH.reshape(b * t, h), lm_head_weight, targets_BT.reshape(b * t), chunk, float(temperature),
        with_entropy,
    )
    return logp_N.view(b, t), (ent_N.view(b, t) if with_entropy else None)
