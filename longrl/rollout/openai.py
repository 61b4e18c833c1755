"""OpenAI-compatible server backend (vLLM, SGLang, ``transformers serve``), same protocol as HF.

``mode="completions"`` posts token-id prompts to ``/v1/completions`` with ``n`` choices per
request; ``prompt_format="text"`` sends the decoded prompt instead, for servers that only accept
strings (``transformers serve``). ``split_n=True`` sends ``n`` one-choice requests per prompt, for
servers that ignore ``n`` (``transformers serve``). ``mode="chat"`` posts to
``/v1/chat/completions`` with the decoded prompt as one user message and ``add_generation_prompt``
left to the server: use it only with prompts that were NOT already chat-templated
(:meth:`OpenAIGenerator.generate_chat` takes messages directly).

Completion token ids come from the response when the server returns them (vLLM:
``return_token_ids``); otherwise the text is re-tokenised, which may differ from the sampled ids,
the tokenizer's EOS id is appended when the server says it stopped, and the ids are cut to
``max_new_tokens``. Prompts run concurrently (``max_concurrency`` requests in flight) through
:mod:`longrl.http`: timeouts, retries and back-off follow its one policy; any failure, including an
answer that is not the expected JSON, is an :class:`~longrl.http.HttpError` naming the URL, and the
first one fails the batch.

The server holds its own weights. :meth:`OpenAIGenerator.update_weights` (called by the RL loop
after each optimizer step) saves the policy to ``sync_dir`` every ``sync_every`` steps and POSTs
``reload_path`` so the server re-reads it; see docs/rollouts.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx

from longrl import http
from longrl.models import save_pretrained_dir
from longrl.rollout.base import Completion, Generator

logger = logging.getLogger(__name__)


def chat_text(message: dict) -> str:
    """A chat answer's text; a separate reasoning field (``reasoning_content``: DeepSeek, vLLM's reasoning
    parsers; ``reasoning``) is put back in front as ``<think>...</think>``, the format the rewards read."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning.strip():
        return f"<think>\n{reasoning.strip()}\n</think>\n\n{content.lstrip()}"
    return content


GenerationError = http.HttpError
"""What :class:`OpenAIGenerator` raises: a request failed after its retries, or the answer was unusable
(the one HTTP error of :mod:`longrl.http`, under the name callers of the generator know)."""


@dataclass
class OpenAIGeneratorConfig:
    """Connection and request settings of :class:`OpenAIGenerator`."""

    base_url: str
    """Server root ending in /v1, e.g. http://127.0.0.1:8000/v1."""
    model: str
    """Model name the server expects (``transformers serve``: the model directory path)."""
    api_key: str = "EMPTY"
    mode: str = "completions"
    """'completions' (token-id or text prompts) or 'chat'."""
    prompt_format: str = "ids"
    """completions mode: 'ids' (token ids) or 'text' (decoded prompt; ``transformers serve``)."""
    split_n: bool = False
    """Send n one-choice requests per prompt instead of one request with ``n`` (servers that ignore
    ``n``, such as ``transformers serve``)."""
    max_concurrency: int = 8
    http: http.HttpPolicy = field(default_factory=http.HttpPolicy)
    """Timeout, retries and back-off of every request (:mod:`longrl.http`; a config section's
    ``http_policy()``, e.g. ``RolloutConfig.http_policy()``)."""
    extra_body: dict = field(default_factory=dict)
    """Merged into every request body (vLLM: {"return_token_ids": True}; ``transformers serve``:
    {"generation_config": '{"do_sample": true}'}, without which it decodes greedily)."""
    sync_dir: str = ""
    """Weight sync: directory the policy is saved to by :meth:`OpenAIGenerator.update_weights`
    ('' = never sync; the server keeps its initial weights)."""
    sync_every: int = 1
    """Save and reload every this many optimizer steps."""
    reload_path: str = "/reset"
    """POSTed (relative to the server root, i.e. base_url without /v1) after saving, so the server
    re-reads ``sync_dir``; ``/reset`` makes ``transformers serve`` reload on the next request.
    '' = do not POST (something else reloads)."""



class OpenAIGenerator(Generator):
    """:class:`~longrl.rollout.base.Generator` over an OpenAI-compatible HTTP server."""

    def __init__(self, cfg: OpenAIGeneratorConfig, tokenizer, client: httpx.Client | None = None):
        if cfg.mode not in ("completions", "chat"):
            raise ValueError(f"mode must be 'completions' or 'chat', got {cfg.mode!r}")
        if cfg.prompt_format not in ("ids", "text"):
            raise ValueError(f"prompt_format must be 'ids' or 'text', got {cfg.prompt_format!r}")
        if cfg.sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {cfg.sync_every}")
        self.cfg = cfg
        self.policy = cfg.http
        self.tokenizer = tokenizer
        self.client = client or http.new_client(concurrency=cfg.max_concurrency, headers=http.bearer(cfg.api_key),
                                                base_url=cfg.base_url.rstrip("/"))
        self._warned_no_sync = False
        self._seed: int | None = None

    def reseed(self, seed: int | None) -> None:
        """Send ``seed + k`` as the ``seed`` of the k-th request of each later call (None: unseeded).

        Reproducible only where the server honours per-request seeds (vLLM); ``transformers serve``
        seeds its global RNG per request, so it repeats only with ``max_concurrency=1``.
        """
        self._seed = seed

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> list[list[Completion]]:
        """``result[i][j]`` is the j-th of ``n`` completions of ``prompt_ids[i]``."""
        if self.cfg.mode == "chat":
            messages = [[{"role": "user", "content": self.tokenizer.decode(p)}] for p in prompt_ids]
            return self.generate_chat(messages, n, max_new_tokens, temperature, top_p)
        prompts = [self.tokenizer.decode(p) if self.cfg.prompt_format == "text" else list(p) for p in prompt_ids]
        return self._run_all("/completions", [{"prompt": p} for p in prompts], n, max_new_tokens, temperature, top_p)

    def generate_chat(self, messages: list[list[dict]], n: int, max_new_tokens: int, temperature: float = 1.0,
                      top_p: float = 1.0) -> list[list[Completion]]:
        """Like :meth:`generate`, for chat message lists (the server applies the chat template)."""
        return self._run_all("/chat/completions", [{"messages": m} for m in messages], n, max_new_tokens,
                             temperature, top_p)

    def update_weights(self, model, step: int) -> None:
        """Every ``sync_every`` steps: save ``model`` (+ tokenizer) to ``sync_dir``, then POST ``reload_path``.

        Called by the RL loop after optimizer step ``step`` (1-based). Without ``sync_dir`` the server
        keeps its initial weights; a warning says so once.
        """
        if not self.cfg.sync_dir:
            if not self._warned_no_sync:
                logger.warning("OpenAIGenerator: no sync_dir, the server keeps its initial weights; "
                               "rollouts drift off-policy as training proceeds")
                self._warned_no_sync = True
            return
        if step % self.cfg.sync_every:
            return

        path = save_pretrained_dir(getattr(model, "module", model), self.tokenizer, self.cfg.sync_dir)
        if self.cfg.reload_path:
            root = self.cfg.base_url.rstrip("/").removesuffix("/v1")
            http.request_json(self.client, root + self.cfg.reload_path, self.policy, {})
        logger.info("step %d: policy saved to %s and server reloaded", step, path)

    def _body(self, request: dict, n: int, max_new_tokens, temperature, top_p) -> dict:
        return {"model": self.cfg.model, **request, "n": n, "max_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, **self.cfg.extra_body}

    def _run_all(self, path: str, requests: list[dict], n: int, max_new_tokens: int, temperature: float,
                 top_p: float) -> list[list[Completion]]:
        """All requests with at most ``max_concurrency`` in flight, answers in input order.

        The first failure cancels the requests not yet started and is raised.
        """
        per_request = 1 if self.cfg.split_n else n
        copies = n if self.cfg.split_n else 1
        bodies = [self._body(r, per_request, max_new_tokens, temperature, top_p) for r in requests for _ in range(copies)]
        if self._seed is not None:
            for k, body in enumerate(bodies):
                body["seed"] = (self._seed + k) % 2**31

        def one(body: dict) -> list[dict]:
            return http.request_json(self.client, path, self.policy, body,
                                     parse=lambda answer: self._choices(answer, per_request))

        answers = http.map_concurrent(one, bodies, self.cfg.max_concurrency)
        # the tokenizer re-tokenises here, in this thread: a fast tokenizer is not safe to share across threads
        parsed = [[self._completion(c, max_new_tokens) for c in choices] for choices in answers]
        return [[c for answer in parsed[i * copies:(i + 1) * copies] for c in answer] for i in range(len(requests))]

    @staticmethod
    def _choices(answer: object, n: int) -> list[dict]:
        """The ``n`` choices of one answer, ordered by index; ValueError for any other answer."""
        if not isinstance(answer, dict):
            raise ValueError(f"answer is not a JSON object: {str(answer)[:200]!r}")
        choices = answer.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise ValueError(f"answer has no list of choices: {str(answer)[:200]}")
        if len(choices) != n:
            hint = " (the server ignores n? set split_n=True)" if len(choices) < n else ""
            raise ValueError(f"expected {n} choices, got {len(choices)}{hint}")
        return sorted(choices, key=lambda c: c.get("index", 0))

    @staticmethod
    def _token_logprobs(choice: dict, n_tokens: int) -> list[float] | None:
        """The sampled tokens' log-probs (``logprobs.token_logprobs``, vLLM with ``logprobs: 0``) when the
        answer has one per token id; None otherwise."""
        lp = (choice.get("logprobs") or {}).get("token_logprobs") if isinstance(choice.get("logprobs"), dict) else None
        if not isinstance(lp, list) or len(lp) != n_tokens or not all(isinstance(x, (int, float)) for x in lp):
            return None
        return [float(x) for x in lp]

    def _completion(self, choice: dict, max_new_tokens: int) -> Completion:
        text = choice.get("text")
        if text is None:
            text = chat_text(choice.get("message") or {})
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        ids = choice.get("token_ids")
        if ids is not None:
            return Completion(token_ids=list(ids), text=text, finish_reason=reason,
                              logprobs=self._token_logprobs(choice, len(ids)))
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        eos = getattr(self.tokenizer, "eos_token_id", None)
        tail = [eos] if reason == "stop" and eos is not None else []
        budget = max_new_tokens - len(tail)
        if len(ids) > budget:
            ids = ids[:budget]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(token_ids=ids + tail, text=text, finish_reason=reason)
