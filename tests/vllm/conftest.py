"""Fixtures of the vLLM tests (marker ``vllm``; run by ``make test-vllm`` in the venv .ci/venv-vllm.sh
builds): a tiny fp32 Qwen2 with tied embeddings and head_dim 64 (vLLM's CPU attention rejects head_dim
16), and (from tests/conftest.py) the real SmolLM2-135M de-quantised from its GGUF; plus the exactness check shared by both backends."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))  # _tiny_rl_job
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _vllm_checks

@pytest.fixture(scope="session")
def tiny64_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny random Qwen2 (hidden 128, 2 heads of 64, 1 KV head, tied embeddings, fp32)."""
    from longrl.models import build_tiny_model, save_pretrained_dir

    model = build_tiny_model(tiny_tokenizer, hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1)
    c = model.config
    assert c.tie_word_embeddings and c.hidden_size // c.num_attention_heads == 64
    return save_pretrained_dir(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny64"))
