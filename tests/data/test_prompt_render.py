"""Prompt rendering with the QwenLong template and the real Qwen chat template; middle truncation."""

from __future__ import annotations

import pytest

from longrl.data.prompt import (
    QWENLONG_TEMPLATE,
    chat_prompt_ids,
    chat_prompt_text,
    middle_truncate,
    render_user_prompt,
)
from longrl.data.readers import read_longbench_jsonl
from longrl.data.records import DocQASample


def _sample(document: str, question: str = "Who wrote it?") -> DocQASample:
    return DocQASample(id="s", source="hotpotqa", task="qa", document=document, question=question, answers=["x"])


def test_template_is_verbatim():
    assert QWENLONG_TEMPLATE == (
        "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n$Q$\n\n"
        "Format your response as follows: \"Therefore, the answer is (insert answer here)\"."
    )


def test_render_strips_and_fills():
    assert render_user_prompt("\n  The doc.  \n", " Why? ") == (
        "Please read the following text and answer the question below.\n\n<text>\nThe doc.\n</text>\n\nWhy?\n\n"
        "Format your response as follows: \"Therefore, the answer is (insert answer here)\"."
    )


def test_placeholders_inside_the_document_survive():
    text = render_user_prompt("costs $Q$ and $DOC$ units", "Q?")
    assert "<text>\ncosts $Q$ and $DOC$ units\n</text>\n\nQ?\n\n" in text


def test_chat_template_wraps_user_turn_with_generation_prompt(qwen_tokenizer):
    text = chat_prompt_text(qwen_tokenizer, _sample("Doc body."))
    assert text.startswith("<|im_start|>user\nPlease read the following text")
    assert text.endswith("(insert answer here)\".<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("budget", "expected"), [
    (4, [0, 1, 8, 9]),      # first 4//2 = 2, last 4 - 2 = 2
    (5, [0, 1, 7, 8, 9]),   # first 5//2 = 2, last 5 - 2 = 3
    (1, [9]),               # first 0, last 1
    (0, []),
    (10, list(range(10))),  # at budget: unchanged
    (99, list(range(10))),
])
def test_middle_truncate(budget, expected):
    assert middle_truncate(list(range(10)), budget) == expected


def test_middle_truncate_rejects_negative_budget():
    with pytest.raises(ValueError):
        middle_truncate([1, 2], -1)


def test_untruncated_ids_are_the_canonical_encoding(qwen_tokenizer):
    sample = _sample("A short document about lighthouses.")
    text = chat_prompt_text(qwen_tokenizer, sample)
    ids = qwen_tokenizer.encode(text, add_special_tokens=False)
    assert chat_prompt_ids(qwen_tokenizer, sample) == ids
    assert chat_prompt_ids(qwen_tokenizer, sample, max_tokens=len(ids)) == ids


def test_truncation_cuts_only_the_middle_of_the_document(qwen_tokenizer, shared_samples_dir):
    sample = read_longbench_jsonl(shared_samples_dir / "longbench_hotpotqa.jsonl")[0]
    full = chat_prompt_ids(qwen_tokenizer, sample)
    assert len(full) > 2000
    ids = chat_prompt_ids(qwen_tokenizer, sample, max_tokens=600)
    assert len(ids) == 600
    text = qwen_tokenizer.decode(ids)
    doc = sample.document.strip()
    assert text.startswith("<|im_start|>user\nPlease read the following text and answer the question below.\n\n"
                           "<text>\n" + doc[:100])
    assert text.endswith(doc[-100:] + "\n</text>\n\n" + sample.question.strip() + "\n\nFormat your response as "
                         "follows: \"Therefore, the answer is (insert answer here)\".<|im_end|>\n"
                         "<|im_start|>assistant\n")
    assert len(text) < len(chat_prompt_text(qwen_tokenizer, sample))


def test_budget_below_the_instructions_raises(qwen_tokenizer):
    with pytest.raises(ValueError, match="instructions and question alone"):
        chat_prompt_ids(qwen_tokenizer, _sample("word " * 200), max_tokens=20)
