"""The one HTTP client of longrl: a retrying JSON request under one policy, and a bounded thread pool.

Every client of an OpenAI-compatible (or vLLM) server goes through :func:`request_json`: the rollout
generator (:mod:`longrl.rollout.openai`, and through it the distillation teacher), the vLLM server's
weight-sync calls, the evaluation harness's endpoint backend and the LLM judge. They differ only in
the numbers of their :class:`HttpPolicy`, which each config section builds with ``http_policy()``
from fields of the same names (``timeout_s``, ``max_retries``, ``backoff_s``, ``max_backoff_s``).

The rule, for every attempt of a request:

* transport errors (connection refused or reset, timeouts) and the statuses in :data:`RETRY_STATUS`
  (408, 409, 429, and every 5xx except 501 and 505) are retried, at most ``max_retries`` times;
* retry ``k`` (1-based) waits ``min(max_backoff_s, backoff_s * 2**(k-1))``, shortened by a random
  fraction of at most ``jitter`` (so that clients refused together do not come back together);
* any other error status fails at once, and so does a 2xx answer that is not JSON or that the
  caller's ``parse`` cannot use (a malformed answer is a wrong endpoint or server, not a hiccup);
* every failure is one :class:`HttpError` naming the URL, the status or cause, and the attempts made.

The defaults, one place for every section (timeouts differ by purpose; retries and back-off do not):

=================================  ==========  ===========================================
field                              default     sections
=================================  ==========  ===========================================
``max_retries``                    3           all
``backoff_s``                      1.0         all
``max_backoff_s``                  30.0        all
``timeout_s`` (judge verdict)      60          ``reward.judge``
``timeout_s`` (generation)         600         ``rollout``, ``distill``
``timeout_s`` (benchmark answer)   1800        ``eval`` (long documents, long answers)
=================================  ==========  ===========================================

Hooks let a caller keep its own bookkeeping without its own loop: ``gate()`` runs before every
attempt and may raise to stop (the judge's circuit breaker), ``observe(attempt)`` runs after every
attempt with an :class:`Attempt` (the judge's counters and breaker). :func:`map_concurrent` runs a
function over items with a bounded number in flight, results in input order, either stopping at the
first error or collecting every error in place.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_RETRIES = 3
"""Retries after the first attempt, every section."""
DEFAULT_BACKOFF_S = 1.0
"""First retry delay in seconds, every section; doubles per retry."""
DEFAULT_MAX_BACKOFF_S = 30.0
"""Cap on one retry delay in seconds, every section."""
DEFAULT_JITTER = 0.5
"""Each delay is shortened by a uniformly random fraction in [0, jitter)."""
JUDGE_TIMEOUT_S = 60.0
"""Per-attempt timeout of a judge verdict (a short answer): ``reward.judge.timeout_s``."""
GENERATION_TIMEOUT_S = 600.0
"""Per-attempt timeout of a rollout or teacher request: ``rollout.timeout_s``, ``distill.timeout_s``."""
EVAL_TIMEOUT_S = 1800.0
"""Per-attempt timeout of a benchmark answer (documents up to 120K tokens): ``eval.timeout_s``."""

RETRY_STATUS = frozenset({408, 409, 429} | set(range(500, 600)) - {501, 505})
"""Statuses that are retried: request timeout, conflict, too many requests, and the server errors
that can pass (501 Not Implemented and 505 HTTP Version Not Supported cannot)."""


@dataclass(frozen=True)
class HttpPolicy:
    """Timeout, retries and back-off of one client (module docstring: the rule and the defaults)."""

    timeout_s: float = GENERATION_TIMEOUT_S
    """Per-attempt timeout (connect, read, write, pool), seconds."""
    max_retries: int = DEFAULT_MAX_RETRIES
    """Retries after the first attempt (0 = one attempt)."""
    backoff_s: float = DEFAULT_BACKOFF_S
    """First retry delay; doubles on each retry."""
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    """Cap on one retry delay."""
    jitter: float = DEFAULT_JITTER
    """Random fraction in [0, jitter) taken off each delay (0 = exact delays)."""

    def __post_init__(self):
        for name, ok, rule in (("timeout_s", self.timeout_s > 0, "> 0"), ("max_retries", self.max_retries >= 0, ">= 0"),
                               ("backoff_s", self.backoff_s >= 0, ">= 0"),
                               ("max_backoff_s", self.max_backoff_s >= 0, ">= 0"),
                               ("jitter", 0 <= self.jitter < 1, "in [0, 1)")):
            if not ok:
                raise ValueError(f"HttpPolicy.{name} must be {rule}, got {getattr(self, name)!r}")

    @property
    def attempts(self) -> int:
        """Attempts at most: ``max_retries + 1``."""
        return self.max_retries + 1

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry`` (1-based)."""
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        return base * (1 - self.jitter * (rng or random).random())


@dataclass(frozen=True)
class Attempt:
    """What :func:`request_json` tells ``observe`` after each attempt."""

    url: str
    number: int
    """1-based."""
    status: int | None
    """The HTTP status; None when no answer came (transport error, timeout)."""
    cause: str
    """Empty for a success; else what went wrong (``HTTP 503: busy``, ``ReadTimeout: ...``,
    ``answer is not JSON ...``)."""
    will_retry: bool
    """A retry follows (unless ``gate`` stops it)."""
    latency_s: float

    @property
    def ok(self) -> bool:
        return not self.cause


class HttpError(RuntimeError):
    """A request that failed: its URL, the last status (None: no answer), the cause, the attempts made."""

    def __init__(self, url: str, cause: str, *, status: int | None = None, attempts: int = 1,
                 retried_out: bool = False):
        self.url, self.cause, self.status, self.attempts = url, cause, status, attempts
        self.retried_out = retried_out
        """True when the failure was retryable and the retries ran out."""
        if retried_out:
            text = f"{url}: failed after {attempts} attempts: {cause}"
        else:
            text = f"{url}: {cause} (attempt {attempts}, not retryable)"
        super().__init__(text)


def new_client(*, concurrency: int = 8, headers: dict[str, str] | None = None, base_url: str = "") -> httpx.Client:
    """An ``httpx.Client`` for :func:`request_json` with ``concurrency`` connections (timeouts are set per
    request, from the policy)."""
    import httpx  # here, not at the top: config.py imports this module, and httpx takes ~90 ms to import

    return httpx.Client(base_url=base_url, headers=headers or {},
                        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))


def bearer(api_key: str) -> dict[str, str]:
    """The Authorization header for ``api_key`` (none for an empty key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _snippet(text: str, n: int = 200) -> str:
    return text[:n] + ("..." if len(text) > n else "")


def request_json(client: httpx.Client, url: str, policy: HttpPolicy, body: Any = None, *, method: str = "POST",
                 parse: Callable[[Any], R] | None = None, gate: Callable[[], None] | None = None,
                 observe: Callable[[Attempt], None] | None = None, rng: random.Random | None = None) -> R | Any:
    """Send ``body`` as JSON (None: no body) and return the answer's JSON (None for an empty answer), or
    ``parse(answer)``; retried and failed as the module docstring says.

    ``url`` may be relative to the client's ``base_url`` (errors name the full URL). ``parse`` raising
    ValueError, KeyError, IndexError or TypeError marks the answer malformed: not retried. ``gate()`` runs
    before every attempt; what it raises propagates. ``observe(attempt)`` runs after every attempt.
    """
    import httpx  # see new_client

    full = url if url.startswith(("http://", "https://")) else str(client.base_url).rstrip("/") + "/" + url.lstrip("/")
    for number in range(1, policy.attempts + 1):
        if gate is not None:
            gate()
        status, cause, retryable, result = None, "", False, None
        t0 = time.monotonic()
        try:
            resp = client.request(method, url, json=body, timeout=policy.timeout_s)
        except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
            cause, retryable = f"{type(exc).__name__}: {exc}", True
        except httpx.HTTPError as exc:  # the rest (too many redirects, undecodable content): not transient
            cause = f"{type(exc).__name__}: {exc}"
        else:
            status = resp.status_code
            if status >= 300:
                cause, retryable = f"HTTP {status}: {_snippet(resp.text)}", status in RETRY_STATUS
            else:
                cause, result = _read_answer(resp, parse)
        latency = time.monotonic() - t0
        will_retry = retryable and number < policy.attempts
        if observe is not None:
            observe(Attempt(full, number, status, cause, will_retry, latency))
        if not cause:
            return result
        if not will_retry:
            raise HttpError(full, cause, status=status, attempts=number, retried_out=retryable)
        delay = policy.delay(number, rng)
        log.warning("%s failed (%s); retry %d/%d in %.1fs", full, cause, number, policy.max_retries, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


def _read_answer(resp: httpx.Response, parse: Callable[[Any], R] | None) -> tuple[str, Any]:
    """("", the answer) or (what is wrong with it, None)."""
    try:
        answer = resp.json() if resp.content else None
    except (ValueError, UnicodeDecodeError) as exc:
        return f"answer is not JSON ({exc}): {_snippet(resp.text)!r}", None
    if parse is None:
        return "", answer
    try:
        return "", parse(answer)
    except ValueError as exc:
        return f"malformed answer: {exc}", None
    except (KeyError, IndexError, TypeError) as exc:
        return f"malformed answer ({type(exc).__name__}: {exc}): {_snippet(json.dumps(answer))}", None


def map_concurrent(fn: Callable[[T], R], items: Iterable[T], concurrency: int, *, fail_fast: bool = True,
                   on_done: Callable[[int, R | Exception], None] | None = None) -> list[R | Exception]:
    """``[fn(x) for x in items]`` with at most ``concurrency`` calls in flight, results in input order.

    ``fail_fast=True``: the first exception to happen cancels the calls not yet started and is raised once
    the running ones end. ``fail_fast=False``: an exception is returned in its item's place.
    ``on_done(index, result_or_exception)`` runs in the calling thread as each call finishes.
    """
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items)))) as pool:
        futures = [pool.submit(fn, x) for x in items]
        index = {f: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            exc = fut.exception()
            if exc is not None and (fail_fast or not isinstance(exc, Exception)):
                for f in futures:
                    f.cancel()
                raise exc
            if on_done is not None:
                on_done(index[fut], exc if exc is not None else fut.result())
    return [f.exception() or f.result() for f in futures]
