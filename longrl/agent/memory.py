"""The memory agent: a document of any length read in chunks, with a bounded memory between turns.

After MemAgent (arXiv 2507.02259) and QwenLong-L1.5 (arXiv 2512.12967). The query is split into its
core question q and its format instructions f (:func:`split_query`); the document is cut into chunks
c_1..c_T of ``chunk_tokens`` policy tokens; each memory turn writes

    m_t (, p_t) = pi(m_{t-1}, p_{t-1}, c_t, q)        (the plan p only when ``plan`` is on)

and the answer turn writes the response from (m_T, q, f). Every turn is a fresh single-turn chat
prompt, so no prompt grows with the document: its length is bounded by the template, the question,
one chunk and the memory (and plan) budget, which :meth:`MemoryAgent.check_window` compares with the
window before any generation.

Model output is untrusted: a memory turn's text is parsed (:func:`parse_memory_output`: a thinking
part is dropped, the plan cut out of ``<plan>...</plan>``) and truncated to the memory budget; nothing
is executed, and an empty memory is shown as ``empty_memory``. The answer turn's text is the response
the rewards score, like a single-turn response.

Generation goes through any :class:`~longrl.rollout.base.Generator`. The ``n`` trajectories of one
question are stepped together: trajectories whose next prompt is the same (every first turn; later
turns whose memories coincide) are sampled from one prompt with ``n=count``, so a backend that prefills
once per prompt does so once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from longrl.config import AgentConfig
from longrl.data.records import DocQASample
from longrl.rewards.extract import THINK_END, THINK_START

FORMAT_INSTRUCTION = 'Format your response as follows: "Therefore, the answer is (insert answer here)".'
"""The QwenLong-L1 format line (the rewards read the answer after "the answer is")."""

_INSTRUCTION_RE = re.compile(
    r"^(?:please\s+)?(?:answer|respond|reply|format\s+your|output|only\s+(?:give|output|answer|write)|"
    r"give\s+(?:me\s+)?(?:only|your|the\s+answer)|provide\s+(?:only|your)|your\s+(?:final\s+)?answer\s+"
    r"(?:should|must)|do\s+not\s+(?:output|write|give|explain)|write\s+(?:only|your))\b",
    re.IGNORECASE)
"""A sentence that tells how to answer, not what to find (``Answer with a single word.``)."""

_SENTENCE_RE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")
_SLOT_RE = re.compile(r"\$(?:Q|MEM|PLAN|CHUNK|FMT)\$")
PLAN_OPEN, PLAN_CLOSE = "<plan>", "</plan>"
EDGE_SLACK = 8
"""Prompt tokens the window check adds for a memory re-tokenised differently inside the template."""


@dataclass
class Query:
    core: str
    """What to find: the question without its format instructions (options of a choice question included)."""
    format: str
    """How to answer: the question's own format sentences, then :data:`FORMAT_INSTRUCTION`."""


def split_query(question: str) -> Query:
    """Split a question into the core question and its format instructions.

    A line-initial or sentence-initial instruction (``Answer with ...``, ``Only give ...``, ``Your
    answer should ...``) moves to the format part; everything else, options of a multiple-choice
    question included, stays in the core. A question made only of instructions stays whole.
    """
    core_lines, fmt = [], []
    for line in question.strip().splitlines():
        kept = []
        for m in _SENTENCE_RE.finditer(line):
            sentence = m.group(0).strip()
            if sentence:
                (fmt if _INSTRUCTION_RE.match(sentence) else kept).append(sentence)
        if kept or not line.strip():
            core_lines.append(" ".join(kept) if kept else "")
    core = "\n".join(core_lines).strip()
    if not core:
        core, fmt = question.strip(), []
    return Query(core=core, format="\n".join(fmt + [FORMAT_INSTRUCTION]))


def fill_template(template: str, slots: dict[str, str]) -> str:
    """Substitute ``$Q$``-style slots in one pass (text put into a slot is never substituted again)."""
    return _SLOT_RE.sub(lambda m: slots.get(m.group(0), m.group(0)), template)


def parse_memory_output(text: str, plan: bool) -> tuple[str, str]:
    """(memory, plan) from a memory turn's untrusted text.

    The part after the last ``</think>`` counts; a thinking part that never closed leaves nothing. With
    ``plan`` on, the plan is the text after the last ``<plan>`` (up to ``</plan>``) and the memory the
    text before it; without a ``<plan>`` the plan is empty.
    """
    if THINK_END in text:
        body = text.rpartition(THINK_END)[2]
    elif text.lstrip().startswith(THINK_START):
        body = ""
    else:
        body = text
    new_plan = ""
    if plan and PLAN_OPEN in body:
        body, _, tail = body.rpartition(PLAN_OPEN)
        new_plan = tail.partition(PLAN_CLOSE)[0]
    return body.strip(), new_plan.strip()


@dataclass
class Turn:
    """One model call of a trajectory."""

    kind: str
    """'memory' or 'answer'."""
    prompt: str
    """The user message (chat template not applied)."""
    prompt_ids: list[int]
    """The chat prompt's token ids, as generated from."""
    completion_ids: list[int]
    output: str
    finish_reason: str
    memory: str = ""
    """Memory turns: the memory kept after this turn (parsed, truncated)."""
    plan: str = ""
    """Memory turns with plan on: the plan kept after this turn."""
    logprobs: list[float] | None = None
    """The engine's log-probs of ``completion_ids`` when the backend reports them."""

    def record(self) -> dict[str, Any]:
        """The turn as a JSON-able dict (the predictions file's ``turns`` entries)."""
        rec = {"kind": self.kind, "prompt": self.prompt, "output": self.output, "finish_reason": self.finish_reason,
               "prompt_tokens": len(self.prompt_ids), "completion_tokens": len(self.completion_ids)}
        if self.kind == "memory":
            rec["memory"] = self.memory
            if self.plan:
                rec["plan"] = self.plan
        return rec


@dataclass
class Trajectory:
    """The turns of one reading of a document: memory turns, then the answer turn."""

    turns: list[Turn] = field(default_factory=list)

    @property
    def answer(self) -> Turn:
        return self.turns[-1]

    @property
    def response(self) -> str:
        """The answer turn's text (what the rewards score)."""
        return self.turns[-1].output if self.turns and self.turns[-1].kind == "answer" else ""

    def records(self) -> list[dict[str, Any]]:
        return [t.record() for t in self.turns]


class WindowError(ValueError):
    """A turn's prompt cannot fit the window with these chunk and memory budgets."""


@dataclass
class MemoryState:
    """What one trajectory carries from a memory turn to the next: m_t and p_t."""

    memory: str = ""
    plan: str = ""


class MemoryAgent:
    """Reads ``sample.document`` in chunks and answers from its memory; see the module docstring.

    ``max_new_tokens`` is the answer turn's budget unless ``cfg.answer_new_tokens`` is set; a memory turn
    may generate ``memory_tokens`` (+ ``plan_tokens``). ``window``: the most prompt tokens any turn may
    have (None: unchecked).
    """

    def __init__(self, tokenizer, cfg: AgentConfig, *, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, window: int | None = None):
        self.tok, self.cfg = tokenizer, cfg
        self.temperature, self.top_p, self.window = temperature, top_p, window
        self.answer_budget = cfg.answer_new_tokens or max_new_tokens
        self.memory_budget = cfg.memory_tokens + (cfg.plan_tokens if cfg.plan else 0)

    # ------------------------------------------------------------------ text and ids
    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def _chat_ids(self, user: str) -> list[int]:
        text = self.tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                            add_generation_prompt=True)
        return self._encode(text)

    def _truncate(self, text: str, budget: int) -> str:
        """``text`` cut to its first tokens so that it re-encodes to at most ``budget`` tokens (decoding a cut
        and encoding it again can give more tokens: the cut is shortened until it fits)."""
        ids = self._encode(text)
        keep = budget
        while len(ids) > budget:
            text = self.tok.decode(ids[:keep], skip_special_tokens=True).strip()
            ids, keep = self._encode(text), keep - 1
        return text

    def chunks(self, document: str) -> list[str]:
        """The document cut into pieces of ``chunk_tokens`` policy tokens (one empty chunk when empty)."""
        ids = self._encode(document.strip())
        size = self.cfg.chunk_tokens
        return [self.tok.decode(ids[i:i + size]) for i in range(0, len(ids), size)] or [""]

    def memory_prompt(self, query: Query, state: MemoryState, chunk: str) -> str:
        c = self.cfg
        slots = {"$Q$": query.core, "$MEM$": state.memory or c.empty_memory, "$CHUNK$": chunk,
                 "$PLAN$": state.plan or c.empty_memory}
        return fill_template(c.plan_template if c.plan else c.memory_template, slots)

    def answer_prompt(self, query: Query, state: MemoryState) -> str:
        slots = {"$Q$": query.core, "$MEM$": state.memory or self.cfg.empty_memory, "$FMT$": query.format}
        return fill_template(self.cfg.answer_template, slots)

    def check_window(self, sample: DocQASample, chunks: list[str] | None = None) -> None:
        """Raise :class:`WindowError` when the longest possible turn prompt of ``sample`` exceeds the window:
        the template and question, one full chunk, and a memory (and plan) at its budget (plus
        :data:`EDGE_SLACK`)."""
        if self.window is None:
            return
        query = split_query(sample.question)
        chunk = max(chunks or self.chunks(sample.document), key=lambda t: len(self._encode(t)))
        frame = len(self._chat_ids(self.memory_prompt(query, MemoryState(), chunk)))
        need = frame + self.cfg.memory_tokens + (self.cfg.plan_tokens if self.cfg.plan else 0) + EDGE_SLACK
        answer = len(self._chat_ids(self.answer_prompt(query, MemoryState()))) + self.cfg.memory_tokens + EDGE_SLACK
        if max(need, answer) > self.window:
            raise WindowError(
                f"sample {sample.id!r}: a memory turn needs up to {need} prompt tokens (template, question and a "
                f"{self.cfg.chunk_tokens}-token chunk: {frame}; memory, plan and slack: {need - frame}) and the answer "
                f"turn "
                f"{answer}, over the window of {self.window}; lower agent.chunk_tokens or agent.memory_tokens")

    # ------------------------------------------------------------------ the loop
    def run(self, generator, sample: DocQASample, n: int, seed: int | None = None) -> list[Trajectory]:
        """``n`` trajectories over ``sample``. With ``seed``, turn t's k-th distinct prompt is sampled after
        ``generator.reseed(turn_seed(seed, t, k))`` (reproducible where the backend's sampling is)."""
        chunks = self.chunks(sample.document)
        self.check_window(sample, chunks)
        query = split_query(sample.question)
        states = [MemoryState() for _ in range(n)]
        trajs = [Trajectory() for _ in range(n)]
        for t, chunk in enumerate(chunks):
            prompts = [self.memory_prompt(query, st, chunk) for st in states]
            turns = self._generate(generator, "memory", prompts, self.memory_budget, seed, t)
            for st, traj, turn in zip(states, trajs, turns):
                memory, plan = parse_memory_output(turn.output, self.cfg.plan)
                st.memory = self._truncate(memory, self.cfg.memory_tokens)
                st.plan = self._truncate(plan, self.cfg.plan_tokens) if self.cfg.plan else ""
                turn.memory, turn.plan = st.memory, st.plan
                traj.turns.append(turn)
        prompts = [self.answer_prompt(query, st) for st in states]
        for traj, turn in zip(trajs, self._generate(generator, "answer", prompts, self.answer_budget, seed,
                                                     len(chunks))):
            traj.turns.append(turn)
        return trajs

    def _generate(self, generator, kind: str, prompts: list[str], budget: int, seed: int | None,
                  t: int) -> list[Turn]:
        """One turn of every trajectory: each distinct prompt sampled once with ``n`` = its count."""
        distinct: dict[str, list[int]] = {}
        for j, p in enumerate(prompts):
            distinct.setdefault(p, []).append(j)
        out: list[Turn | None] = [None] * len(prompts)
        for k, (prompt, rows) in enumerate(distinct.items()):
            ids = self._chat_ids(prompt)
            if self.window is not None and len(ids) > self.window:
                raise WindowError(f"{kind} turn {t}: prompt of {len(ids)} tokens > window {self.window}")
            if seed is not None:
                generator.reseed(turn_seed(seed, t, k))
            comps = generator.generate([ids], n=len(rows), max_new_tokens=budget, temperature=self.temperature,
                                       top_p=self.top_p)[0]
            for j, c in zip(rows, comps):
                out[j] = Turn(kind=kind, prompt=prompt, prompt_ids=ids, completion_ids=list(c.token_ids),
                              output=c.text, finish_reason=c.finish_reason, logprobs=getattr(c, "logprobs", None))
        return out  # type: ignore[return-value]


def turn_seed(seed: int, turn: int, k: int) -> int:
    """Seed of the k-th distinct prompt of turn ``turn`` of a question seeded ``seed``."""
    return ((seed * 1_000_033 + turn) * 10_007 + k) % (2**63 - 1)
