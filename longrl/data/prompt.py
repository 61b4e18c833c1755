"""Prompt rendering: the QwenLong-L1 user template inside the tokenizer's chat template.

Training prompts are never truncated (over-long samples are bucketed out instead); evaluation inputs
are middle-truncated in the document only, so the instructions and the question always survive.
"""

from __future__ import annotations

from typing import Any

from longrl.data.records import DocQASample

QWENLONG_TEMPLATE = (
    "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n$Q$\n\n"
    'Format your response as follows: "Therefore, the answer is (insert answer here)".'
)
"""The QwenLong-L1 DocQA user prompt, verbatim; $DOC$ and $Q$ are replaced by the stripped texts."""

_DOC_SENTINEL = "\ue000longrl-document\ue000"
"""Private-use marker standing in for the document when splitting a chat prompt around it."""


def render_user_prompt(document: str, question: str) -> str:
    """Fill the template. Placeholders are substituted once each, so a document that itself
    contains '$Q$' is left intact (chained str.replace would rewrite it)."""
    head, rest = QWENLONG_TEMPLATE.split("$DOC$")
    middle, tail = rest.split("$Q$")
    return head + document.strip() + middle + question.strip() + tail


def chat_messages(sample: DocQASample) -> list[dict[str, str]]:
    """The single user turn sent to the policy."""
    return [{"role": "user", "content": render_user_prompt(sample.document, sample.question)}]


def chat_prompt_text(tokenizer: Any, sample: DocQASample) -> str:
    """The full prompt string: chat template over the user turn, with the generation prompt."""
    return tokenizer.apply_chat_template(chat_messages(sample), tokenize=False, add_generation_prompt=True)


def middle_truncate(ids: list[int], budget: int) -> list[int]:
    """Keep the first ``budget // 2`` and the last ``budget - budget // 2`` ids when over budget."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if len(ids) <= budget:
        return list(ids)
    head = budget // 2
    return list(ids[:head]) + list(ids[len(ids) - (budget - head):])


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def chat_prompt_ids(tokenizer: Any, sample: DocQASample, max_tokens: int | None = None) -> list[int]:
    """Token ids of the chat prompt; with ``max_tokens``, at most that many.

    Over budget, the prompt is encoded in three pieces (chat/template text before the document, the
    document, the rest) and only the document's ids are middle-truncated, so the instructions and the
    question are kept whole. Raises ValueError when even an empty document would not fit.
    """
    ids = _encode(tokenizer, chat_prompt_text(tokenizer, sample))
    if max_tokens is None or len(ids) <= max_tokens:
        return ids
    frame = chat_prompt_text(tokenizer, DocQASample(
        id=sample.id, source=sample.source, task=sample.task, document=_DOC_SENTINEL,
        question=sample.question, answers=sample.answers))
    if frame.count(_DOC_SENTINEL) != 1:
        raise ValueError("the chat template does not insert the user message verbatim; cannot truncate")
    prefix, suffix = frame.split(_DOC_SENTINEL)
    prefix_ids, suffix_ids = _encode(tokenizer, prefix), _encode(tokenizer, suffix)
    doc_budget = max_tokens - len(prefix_ids) - len(suffix_ids)
    if doc_budget < 0:
        raise ValueError(f"sample {sample.id!r}: instructions and question alone take "
                         f"{len(prefix_ids) + len(suffix_ids)} tokens > max_tokens={max_tokens}")
    doc_ids = _encode(tokenizer, sample.document.strip())
    return prefix_ids + middle_truncate(doc_ids, doc_budget) + suffix_ids
