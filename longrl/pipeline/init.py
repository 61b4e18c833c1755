"""The initial policy built from scratch when ``model.path`` is empty (the CPU demo)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longrl.config import Config
from longrl.data.prompt import render_user_prompt
from longrl.data.synth import generate
from longrl.models import build_tiny_policy, save_pretrained_dir
from longrl.train.copy_pretrain import copy_pretrain
from longrl.train.recall_pretrain import recall_pretrain
from longrl.train.sft import sft_target

PRETRAIN_METRICS = "pretrain.json"
"""File in a from-scratch init model folder: the copy / recall pretraining metrics."""


def build_policy_from_scratch(cfg: Config, path: Path, progress: bool = False) -> Path:
    """A tokenizer trained on synthetic prompts (the QwenLong template filled with synthetic documents and
    questions) and SFT targets, and a random Qwen2 model, saved at ``path``.

    With ``pipeline.tiny.copy_pretrain.steps`` > 0 the model is first trained on the copying task
    (:mod:`longrl.train.copy_pretrain`), then, with ``pipeline.tiny.recall_pretrain.steps`` > 0, on document
    recall (:mod:`longrl.train.recall_pretrain`); their logs go to ``path.parent / "copy_pretrain"`` and
    ``path.parent / "recall_pretrain"``, their final held-out metrics to ``path / PRETRAIN_METRICS``.
    """
    t = cfg.pipeline.tiny
    corpus = generate(t.corpus_samples, t.corpus_tokens, cfg.seed, cfg.pipeline.synthetic.families, split="corpus")
    texts = [x for s in corpus for x in (render_user_prompt(s.document, s.question), sft_target(s))]
    model, tokenizer = build_tiny_policy(texts, vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                                         num_layers=t.num_layers, num_heads=t.num_heads,
                                         num_kv_heads=t.num_kv_heads, seed=cfg.seed)
    metrics: dict[str, Any] = {}
    if t.copy_pretrain.steps:
        metrics |= copy_pretrain(model, tokenizer, t.copy_pretrain, seed=cfg.seed, run_dir=path.parent / "copy_pretrain",
                                 progress=progress)
    if t.recall_pretrain.steps:
        metrics |= recall_pretrain(model, tokenizer, t.recall_pretrain, families=cfg.pipeline.synthetic.families,
                                   seed=cfg.seed, run_dir=path.parent / "recall_pretrain", progress=progress)
    save_pretrained_dir(model, tokenizer, path)
    if metrics:
        (path / PRETRAIN_METRICS).write_text(json.dumps(metrics, indent=1))
    return path
