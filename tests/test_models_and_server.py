"""The shared fixtures work: tiny model round-trips through load_policy, and a real server answers."""

import copy

import httpx
import torch

from longrl.config import ModelConfig
from longrl.models import load_policy


def test_tiny_model_loads_through_load_policy(tiny_model_dir):
    model, tok = load_policy(ModelConfig(path=str(tiny_model_dir)))
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    out = model(torch.tensor([ids]))
    assert out.logits.shape == (1, len(ids), len(tok))


def test_lora_and_yarn_options(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    cfg.lora.enabled = True
    cfg.rope.yarn_factor = 2.0
    cfg.rope.original_max_position_embeddings = 1024
    model, _ = load_policy(cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert model.base_model.model.config.rope_parameters["rope_type"] == "yarn"


def test_transformers_serve_chat_completion(openai_server, tiny_model_dir):
    base, _ = openai_server(tiny_model_dir)
    r = httpx.post(f"{base}/chat/completions", timeout=120, json={
        "model": str(tiny_model_dir), "max_tokens": 5, "temperature": 0,
        "messages": [{"role": "user", "content": "Answer 1: 42"}],
    })
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["choices"][0]["message"]["content"], str)


def test_think_tags_are_single_tokens_that_survive_decoding(tiny_tokenizer):
    ids = tiny_tokenizer.encode("<think>abc</think> x", add_special_tokens=False)
    think, end = tiny_tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    assert ids[0] == think and end in ids
    text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert text.startswith("<think>") and "</think>" in text
    eos = tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode([*ids, eos], skip_special_tokens=True) == text


def test_load_tokenizer_keeps_a_custom_normalizer(tiny_tokenizer, tmp_path):
    from tokenizers import Regex, normalizers

    from longrl.models import build_tiny_model, load_tokenizer, save_pretrained_dir

    tok = copy.deepcopy(tiny_tokenizer)
    tok.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\n(?=\S)"), "\n ")])
    save_pretrained_dir(build_tiny_model(tok, hidden_size=32, num_layers=1), tok, tmp_path)
    again = load_tokenizer(str(tmp_path))
    text = "Port Amber\nNorwick flows"
    assert again.encode(text) == tok.encode(text)
    # the token counter used by `prepare`, `synth` and `eval` loads through the same path
    from longrl.data.tokens import load_tokenizer as counting_tokenizer

    assert counting_tokenizer(str(tmp_path)).encode(text) == tok.encode(text)
    assert again.chat_template == tok.chat_template
