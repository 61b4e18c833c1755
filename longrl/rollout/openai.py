"""OpenAI-compatible server backend (vLLM, SGLang, ``transformers serve``), same protocol as HF.

``mode="completions"`` posts token-id prompts to ``/v1/completions`` with ``n`` choices per
request; ``prompt_format="text"`` sends the decoded prompt instead, for servers that only accept
strings. ``mode="chat"`` posts to ``/v1/chat/completions`` with the decoded prompt as one user
message and ``add_generation_prompt`` left to the server: use it only with prompts that were NOT
already chat-templated (:meth:`OpenAIGenerator.generate_chat` takes messages directly).

Completion token ids come from the response when the server returns them (vLLM:
``return_token_ids``); otherwise the text is re-tokenised, which may differ from the sampled ids.
Prompts run concurrently (``max_concurrency`` requests in flight); each request has a timeout and
is retried with exponential back-off on transport errors, timeouts, 429 and 5xx answers.
The server holds its own weights: reload them between RL steps (see ``Generator``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from longrl.rollout.base import Completion

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class GenerationError(RuntimeError):
    """A request failed after all retries, or the server's answer was unusable."""


@dataclass
class OpenAIGeneratorConfig:
    """Connection and request settings of :class:`OpenAIGenerator`."""

    base_url: str
    """Server root ending in /v1, e.g. http://127.0.0.1:8000/v1."""
    model: str
    """Model name the server expects."""
    api_key: str = "EMPTY"
    mode: str = "completions"
    """'completions' (token-id or text prompts) or 'chat'."""
    prompt_format: str = "ids"
    """completions mode: 'ids' (token ids) or 'text' (decoded prompt)."""
    max_concurrency: int = 8
    timeout_s: float = 600.0
    max_retries: int = 3
    backoff_s: float = 1.0
    """First retry delay; doubles on each retry."""
    extra_body: dict = field(default_factory=dict)
    """Merged into every request body (e.g. {"return_token_ids": True} for vLLM)."""


class OpenAIGenerator:
    """:class:`~longrl.rollout.base.Generator` over an OpenAI-compatible HTTP server."""

    def __init__(self, cfg: OpenAIGeneratorConfig, tokenizer, client: httpx.Client | None = None):
        if cfg.mode not in ("completions", "chat"):
            raise ValueError(f"mode must be 'completions' or 'chat', got {cfg.mode!r}")
        if cfg.prompt_format not in ("ids", "text"):
            raise ValueError(f"prompt_format must be 'ids' or 'text', got {cfg.prompt_format!r}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.client = client or httpx.Client(
            base_url=cfg.base_url.rstrip("/"), timeout=cfg.timeout_s,
            headers={"Authorization": f"Bearer {cfg.api_key}"},
            limits=httpx.Limits(max_connections=cfg.max_concurrency),
        )

    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> list[list[Completion]]:
        """``result[i][j]`` is the j-th of ``n`` completions of ``prompt_ids[i]``."""
        if self.cfg.mode == "chat":
            messages = [[{"role": "user", "content": self.tokenizer.decode(p)}] for p in prompt_ids]
            return self.generate_chat(messages, n, max_new_tokens, temperature, top_p)
        bodies = [self._completions_body(p, n, max_new_tokens, temperature, top_p) for p in prompt_ids]
        return self._run_all("/completions", bodies, n)

    def generate_chat(self, messages: list[list[dict]], n: int, max_new_tokens: int, temperature: float = 1.0,
                      top_p: float = 1.0) -> list[list[Completion]]:
        """Like :meth:`generate`, for chat message lists (the server applies the chat template)."""
        bodies = [{"model": self.cfg.model, "messages": m, "n": n, "max_tokens": max_new_tokens,
                   "temperature": temperature, "top_p": top_p, **self.cfg.extra_body} for m in messages]
        return self._run_all("/chat/completions", bodies, n)

    def _completions_body(self, prompt: list[int], n, max_new_tokens, temperature, top_p) -> dict:
        text = self.cfg.prompt_format == "text"
        return {"model": self.cfg.model, "prompt": self.tokenizer.decode(prompt) if text else list(prompt),
                "n": n, "max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                **self.cfg.extra_body}

    def _run_all(self, path: str, bodies: list[dict], n: int) -> list[list[Completion]]:
        """All requests with at most ``max_concurrency`` in flight, answers in input order."""
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.max_concurrency)) as pool:
            answers = list(pool.map(lambda body: self._post_with_retries(path, body), bodies))
        return [self._parse(answer, n) for answer in answers]

    def _post_with_retries(self, path: str, body: dict) -> dict:
        """POST ``body``; retry transient failures; raise :class:`GenerationError` when out of retries."""
        delay = self.cfg.backoff_s
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = self.client.post(path, json=body)
                if resp.status_code not in RETRY_STATUS:
                    resp.raise_for_status()
                    return resp.json()
                problem = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            except httpx.HTTPStatusError as exc:
                raise GenerationError(f"{path}: HTTP {exc.response.status_code}: {exc.response.text[:500]}") from exc
            if attempt < self.cfg.max_retries:
                logger.warning("%s failed (%s); retry %d/%d in %.1fs", path, problem, attempt + 1,
                               self.cfg.max_retries, delay)
                time.sleep(delay)
                delay *= 2
        raise GenerationError(f"{path}: failed after {self.cfg.max_retries + 1} attempts: {problem}")

    def _parse(self, answer: dict, n: int) -> list[Completion]:
        """Completions of one answer, ordered by choice index."""
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise GenerationError(f"expected {n} choices, got {len(choices)}")
        return [self._completion(c) for c in choices]

    def _completion(self, choice: dict) -> Completion:
        text = choice.get("text")
        if text is None:
            text = (choice.get("message") or {}).get("content") or ""
        ids = choice.get("token_ids")
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(token_ids=list(ids), text=text, finish_reason=reason)
