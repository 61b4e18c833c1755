"""The guard in conftest.py fails a test when longrl's own code calls a deprecated API."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

import longrl
from longrl.models import tiny_causal_lm
from longrl.models.kernels import cache_kwargs

LONGRL_DIR = str(Path(longrl.__file__).resolve().parent) + os.sep


def _call_from_longrl(src: str, env: dict):
    """Run ``src`` as if it were a line of a longrl module (its frames carry a longrl file name)."""
    exec(compile(src, f"{LONGRL_DIR}pretend_module.py", "exec"), env)


def test_a_deprecated_call_from_longrl_fails_the_test():
    model = tiny_causal_lm("llama", vocab_size=50)
    env = {"model": model, "torch": torch, "cache": DynamicCache(config=model.config)}
    if "cache" not in cache_kwargs(model, None):
        pytest.fail("this transformers version has no `cache` argument; the deprecated name is the current one")
    with pytest.raises(AssertionError, match="deprecated API at .*pretend_module.py:1: `past_key_values`"):
        _call_from_longrl("model(input_ids=torch.tensor([[1, 2]]), past_key_values=cache, use_cache=True)", env)
    # the current name passes, and a third party's own deprecation warning stays a warning
    _call_from_longrl("model(input_ids=torch.tensor([[1, 2]]), use_cache=True, **kw)",
                      dict(env, kw=cache_kwargs(model, env["cache"])))
    with pytest.warns(FutureWarning):
        warnings.warn("third-party deprecation", FutureWarning, stacklevel=1)
