"""Readers that turn DocQA records of several public formats into :class:`DocQASample`, and writers.

Formats (``format=`` name, what identifies it under ``format="auto"``):

- ``verl``: verl RL parquet as in DocQA-RL-1.6K (``data_source``, ``prompt`` = chat messages whose user
  turn follows the QwenLong template, ``ability``, ``reward_model.ground_truth``, ``extra_info``);
  ``.parquet`` files, or jsonl records holding ``prompt`` and ``reward_model``.
- ``longbench``: LongBench v1 jsonl (``input``, ``context``, ``answers``, ``dataset``, ``all_classes``, ``_id``).
- ``docmath``: DocMath-Eval json array or jsonl (``question_id``, ``question``, ``paragraphs``,
  optional ``tables``, ``ground_truth``).
- ``frames``: FRAMES (``Prompt``/``Answer`` with ``wiki_items``, or the questions-only
  ``problem``/``answer``/``wiki_links`` variant, whose document is empty).
- ``jsonl``: plain jsonl (``document``, ``question``, ``answer`` or ``answers``; optional ``id``,
  ``source``, ``task``, ``n_tokens``, ``metadata``); the document may be empty (questions-only
  FRAMES samples written back by :func:`write_jsonl`).

Every malformed record becomes a :class:`RecordError` naming the file, the line (jsonl), row (parquet)
or item (json array), and the field. With ``on_error="skip"`` it is recorded in a :class:`SkipLog`
instead, so skipped records are always counted and can be reported.

Source names: an explicit ``name`` wins; otherwise LongBench uses ``dataset`` (e.g. ``hotpotqa``),
verl uses ``data_source``, DocMath and FRAMES use ``docmath`` / ``frames``, plain jsonl uses the
record's ``source`` or the file stem. These names drive reward dispatch.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longrl.data.prompt import QWENLONG_TEMPLATE, render_user_prompt
from longrl.data.records import TASK_TYPES, DocQASample, RecordError, task_for_source

FORMATS = ("verl", "longbench", "docmath", "frames", "jsonl")
"""Reader names accepted by :func:`read_source` (besides ``auto`` and the aliases below)."""

_FORMAT_ALIASES = {"synthetic": "jsonl"}
"""``synthetic`` sources are files written by :func:`write_jsonl`."""

_ABILITY_BY_TASK = {"qa": "doc-qa", "numeric": "doc-math", "mcq": "doc-mcq"}
"""verl ``ability`` written for each task type."""

_OPTION_RE = re.compile(r"(?:^|\s)\(([A-H])\)|^([A-H])[.:)]\s", re.MULTILINE)
"""Answer-option markers: '(A) ...' anywhere, or 'A. ...' / 'A) ...' at a line start."""

_TEMPLATE_DOC_HEAD, _rest = QWENLONG_TEMPLATE.split("$DOC$")
_TEMPLATE_Q_HEAD, _TEMPLATE_TAIL = _rest.split("$Q$")


class _FieldError(Exception):
    """A bad field inside one record; the reader loop adds the file and position."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field_name, self.message = field_name, message


@dataclass
class SkipLog:
    """Records skipped because they were malformed: counted per file and kept for the report."""

    errors: list[RecordError] = field(default_factory=list)

    def add(self, err: RecordError) -> None:
        self.errors.append(err)

    def __len__(self) -> int:
        return len(self.errors)

    def counts_by_file(self) -> dict[str, int]:
        return dict(Counter(e.path for e in self.errors))

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per skip: file, where (line/row/item), field, reason."""
        return [{"file": e.path, "where": e.where, "field": e.field_name, "reason": str(e)} for e in self.errors]


# --------------------------------------------------------------------------------------------------
# Field helpers (raise _FieldError)
# --------------------------------------------------------------------------------------------------


def _get(rec: dict[str, Any], key: str) -> Any:
    if key not in rec or rec[key] is None:
        raise _FieldError(key, "missing")
    return rec[key]


def _text(rec: dict[str, Any], key: str, allow_empty: bool = False) -> str:
    value = _get(rec, key)
    if not isinstance(value, str):
        raise _FieldError(key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _FieldError(key, "is empty")
    return value


def _answer_text(value: Any, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _FieldError(key, f"expected a string or number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _FieldError(key, f"not a finite number: {value}")
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise _FieldError(key, "is empty")
    return text


def _answer_list(value: Any, key: str) -> list[str]:
    """A gold answer or a non-empty list of them, as strings."""
    if hasattr(value, "tolist") and not isinstance(value, (str, int, float)):
        value = value.tolist()
    if isinstance(value, list):
        if not value:
            raise _FieldError(key, "is an empty list")
        return [_answer_text(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return [_answer_text(value, key)]


def looks_multiple_choice(question: str) -> bool:
    """True when the question lists at least two lettered options ('(A) ...', 'B. ...')."""
    letters = {a or b for a, b in _OPTION_RE.findall(question)}
    return len(letters) >= 2


def split_user_prompt(content: str) -> tuple[str, str]:
    """(document, question) from a user turn rendered with the QwenLong template."""
    if not (content.startswith(_TEMPLATE_DOC_HEAD) and content.endswith(_TEMPLATE_TAIL)):
        raise _FieldError("prompt", "user message does not follow the QwenLong template")
    body = content[len(_TEMPLATE_DOC_HEAD): len(content) - len(_TEMPLATE_TAIL)]
    document, sep, question = body.rpartition(_TEMPLATE_Q_HEAD)
    if not sep:
        raise _FieldError("prompt", "no '</text>' separator between document and question")
    return document, question


# --------------------------------------------------------------------------------------------------
# Per-format record parsers: (record, position, source name, file stem) -> DocQASample
# --------------------------------------------------------------------------------------------------


def _parse_longbench(rec: dict[str, Any], pos: int, name: str, stem: str) -> DocQASample:
    question = _text(rec, "input")
    classes = rec.get("all_classes") or []
    task = "mcq" if classes or looks_multiple_choice(question) else "qa"
    source = name or _text(rec, "dataset")
    meta = {k: rec[k] for k in ("length", "language", "all_classes") if rec.get(k) is not None}
    return DocQASample(id=str(rec.get("_id") or f"{stem}-{pos}"), source=source, task=task,
                       document=_text(rec, "context"), question=question,
                       answers=_answer_list(_get(rec, "answers"), "answers"), metadata=meta)


def _docmath_document(rec: dict[str, Any]) -> str:
    paragraphs = _get(rec, "paragraphs")
    tables = rec.get("tables") or []
    for key, parts in (("paragraphs", paragraphs), ("tables", tables)):
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise _FieldError(key, "expected a list of strings")
    if not any(p.strip() for p in paragraphs + tables):
        raise _FieldError("paragraphs", "document is empty")
    return "\n".join(paragraphs + tables)


def _parse_docmath(rec: dict[str, Any], pos: int, name: str, stem: str) -> DocQASample:
    meta = {k: rec[k] for k in ("table_evidence", "paragraph_evidence", "python_solution", "source")
            if rec.get(k) is not None}
    return DocQASample(id=str(_get(rec, "question_id")), source=name or "docmath", task="numeric",
                       document=_docmath_document(rec), question=_text(rec, "question"),
                       answers=_answer_list(_get(rec, "ground_truth"), "ground_truth"), metadata=meta)


def _wiki_document(items: Any) -> str:
    """Join FRAMES ``wiki_items`` (strings, or dicts with ``text``/``content`` and optional ``title``)."""
    if not isinstance(items, list) or not items:
        raise _FieldError("wiki_items", "expected a non-empty list")
    parts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            parts.append(item)
            continue
        body = item.get("text", item.get("content")) if isinstance(item, dict) else None
        if not isinstance(body, str):
            raise _FieldError(f"wiki_items[{i}]", "expected a string or a mapping with 'text' or 'content'")
        title = item.get("title") or ""
        parts.append(f"{title}\n{body}" if title else body)
    return "\n\n".join(parts)


def _parse_frames(rec: dict[str, Any], pos: int, name: str, stem: str) -> DocQASample:
    if "Prompt" in rec:
        question, answer_key = _text(rec, "Prompt"), "Answer"
        document = _wiki_document(_get(rec, "wiki_items"))
    else:
        question, answer_key, document = _text(rec, "problem"), "answer", ""
    meta = {k: rec[k] for k in ("wiki_links", "reasoning_type", "reasoning_types") if rec.get(k) is not None}
    return DocQASample(id=str(rec.get("id", rec.get("Unnamed: 0", pos))), source=name or "frames", task="qa",
                       document=document, question=question,
                       answers=_answer_list(_get(rec, answer_key), answer_key), metadata=meta)


def _parse_plain(rec: dict[str, Any], pos: int, name: str, stem: str) -> DocQASample:
    question = _text(rec, "question")
    answers_key = "answers" if "answers" in rec else "answer"
    answers = _answer_list(_get(rec, answers_key), answers_key)
    task = rec.get("task") or ("mcq" if looks_multiple_choice(question) else "qa")
    if task not in TASK_TYPES:
        raise _FieldError("task", f"must be one of {TASK_TYPES}, got {task!r}")
    metadata = rec.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _FieldError("metadata", "expected a mapping")
    n_tokens = rec.get("n_tokens", -1)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int):
        raise _FieldError("n_tokens", f"expected an integer, got {n_tokens!r}")
    return DocQASample(id=str(rec.get("id", f"{stem}-{pos}")), source=name or rec.get("source") or stem,
                       task=task, document=_text(rec, "document", allow_empty=True), question=question,
                       answers=answers, n_tokens=n_tokens, metadata=metadata)


def _user_content(prompt: Any) -> str:
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if not isinstance(prompt, list) or not prompt:
        raise _FieldError("prompt", "expected a non-empty list of chat messages")
    users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if len(users) != 1 or not isinstance(users[0], str):
        raise _FieldError("prompt", "expected exactly one user message with string content")
    return users[0]


def _parse_verl(rec: dict[str, Any], pos: int, name: str, stem: str) -> DocQASample:
    """A verl row; ``extra_info`` written by :func:`write_verl_parquet` restores id, task, all answers."""
    data_source = _text(rec, "data_source")
    document, question = split_user_prompt(_user_content(_get(rec, "prompt")))
    reward_model = _get(rec, "reward_model")
    if not isinstance(reward_model, dict):
        raise _FieldError("reward_model", "expected a mapping")
    extra = dict(rec.get("extra_info") or {})
    answers = extra.pop("answers", None)
    answers = _answer_list(answers if answers is not None else reward_model.get("ground_truth"),
                           "reward_model.ground_truth" if answers is None else "extra_info.answers")
    task = extra.pop("task", None) or task_for_source(data_source)
    if task not in TASK_TYPES:
        raise _FieldError("extra_info.task", f"must be one of {TASK_TYPES}, got {task!r}")
    try:
        metadata = json.loads(extra.pop("metadata_json", None) or "{}")
    except json.JSONDecodeError as e:
        raise _FieldError("extra_info.metadata_json", f"invalid JSON: {e.msg}") from None
    metadata.update({k: v for k, v in extra.items() if k not in ("id", "index", "n_tokens", "question") and v is not None})
    return DocQASample(id=str(extra.get("id") or extra.get("index", f"{stem}-{pos}")),
                       source=name or data_source, task=task, document=document, question=question,
                       answers=answers, n_tokens=int(extra.get("n_tokens", -1)), metadata=metadata)


_PARSERS: dict[str, Callable[[dict[str, Any], int, str, str], DocQASample]] = {
    "verl": _parse_verl, "longbench": _parse_longbench, "docmath": _parse_docmath,
    "frames": _parse_frames, "jsonl": _parse_plain,
}


# --------------------------------------------------------------------------------------------------
# File iteration and the reader loop
# --------------------------------------------------------------------------------------------------


def _not_utf8(path: Path, line: int, data: bytes, err: UnicodeDecodeError) -> RecordError:
    col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    return RecordError(str(path), f"line {line}", "<encoding>",
                       f"not UTF-8 (byte 0x{data[err.start]:02x} at column {col})")


def _iter_json_array(path: Path, data: bytes) -> Iterator[tuple[str, int, dict[str, Any] | RecordError]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield "line", line, _not_utf8(path, line, data, e)
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        yield "line", e.lineno, RecordError(str(path), f"line {e.lineno}", "<json>", f"invalid JSON: {e.msg}")
        return
    for i, item in enumerate(items, 1):
        yield "item", i, item


def _first_char(f) -> bytes:
    """The first non-whitespace byte of a binary file (b"" when there is none)."""
    while block := f.read(1 << 16):
        if stripped := block.lstrip():
            return stripped[:1]
    return b""


def _iter_json_records(path: Path) -> Iterator[tuple[str, int, dict[str, Any] | RecordError]]:
    """(position kind, 1-based position, record or error) for a jsonl file or a json array file.

    jsonl is streamed line by line; lines end at newline bytes only (a U+2028 inside a string is no line
    break), and a line that is not UTF-8 is an error naming it, as is a line that is not JSON.
    """
    with path.open("rb") as f:
        is_array = _first_char(f) == b"["
        f.seek(0)
        if is_array:
            yield from _iter_json_array(path, f.read())
            return
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield "line", i, _not_utf8(path, i, raw, e)
                continue
            try:
                yield "line", i, json.loads(line)
            except json.JSONDecodeError as e:
                yield "line", i, RecordError(str(path), f"line {i}", "<json>", f"invalid JSON: {e.msg}")


def read_json_objects(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL (or JSON array) file, in order. The first malformed line raises its
    :class:`RecordError` (``FILE:line N``: not UTF-8, invalid JSON, or not a JSON object)."""
    path = Path(path)
    rows = []
    for kind, pos, rec in _iter_json_records(path):
        if isinstance(rec, RecordError):
            raise rec
        if not isinstance(rec, dict):
            raise RecordError(str(path), f"{kind} {pos}", "<json>", "expected a JSON object")
        rows.append(rec)
    return rows


def _iter_parquet_records(path: Path) -> Iterator[tuple[str, int, dict[str, Any] | RecordError]]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
        yield "row", i, row


def _iter_records(path: Path) -> Iterator[tuple[str, int, dict[str, Any] | RecordError]]:
    return _iter_parquet_records(path) if path.suffix == ".parquet" else _iter_json_records(path)


def detect_format(path: str | Path) -> str:
    """Reader name for a file, from its extension and the field names of its first readable record."""
    path = Path(path)
    if path.suffix == ".parquet":
        return "verl"
    first_error = None
    for kind, pos, rec in _iter_json_records(path):
        if isinstance(rec, RecordError):  # the reader loop reports (or skips) it; detect from a later record
            first_error = first_error or rec
            continue
        keys = set(rec) if isinstance(rec, dict) else set()
        rules = [("verl", {"prompt", "reward_model"}), ("longbench", {"input", "context"}),
                 ("docmath", {"paragraphs"}), ("frames", {"Prompt"}), ("frames", {"problem", "wiki_links"}),
                 ("jsonl", {"document", "question"})]
        for fmt, needed in rules:
            if needed <= keys:
                return fmt
        raise RecordError(str(path), f"{kind} {pos}", "<format>", f"cannot tell the format from fields {sorted(keys)}")
    raise first_error or RecordError(str(path), "line 1", "<format>", "file holds no records")


def _read_file(path: Path, fmt: str, name: str, on_error: str, skips: SkipLog) -> list[DocQASample]:
    parse = _PARSERS[fmt]
    samples, seen_ids = [], set()
    for kind, pos, rec in _iter_records(path):
        try:
            if isinstance(rec, RecordError):
                raise rec
            if not isinstance(rec, dict):
                raise RecordError(str(path), f"{kind} {pos}", "<record>", "expected a JSON object")
            try:
                sample = parse(rec, pos, name, path.stem)
            except _FieldError as e:
                raise RecordError(str(path), f"{kind} {pos}", e.field_name, e.message) from None
            if (sample.source, sample.id) in seen_ids:
                raise RecordError(str(path), f"{kind} {pos}", "id", f"duplicate id {sample.id!r}")
        except RecordError as err:
            if on_error == "raise":
                raise
            skips.add(err)
            continue
        seen_ids.add((sample.source, sample.id))
        samples.append(sample)
    return samples


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
    if not path.is_file():
        raise RecordError(str(path), "-", "<file>", "not found")
    return [path]


def read_source(path: str | Path, format: str = "auto", name: str = "", on_error: str = "raise",
                skips: SkipLog | None = None) -> list[DocQASample]:
    """Read one file, or every .jsonl/.json/.parquet file of a directory, into samples.

    ``format="auto"`` detects each file's format. ``on_error``: ``"raise"`` raises the first
    RecordError; ``"skip"`` records it in ``skips`` (which must then be given) and continues.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if on_error == "skip" and skips is None:
        raise ValueError("on_error='skip' needs a SkipLog to record the skipped records")
    format = _FORMAT_ALIASES.get(format, format)
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    samples: list[DocQASample] = []
    for file in _files(Path(path)):
        fmt = detect_format(file) if format == "auto" else format
        samples += _read_file(file, fmt, name, on_error, skips if skips is not None else SkipLog())
    return samples


def read_verl_parquet(path: str | Path, name: str = "", on_error: str = "raise",
                      skips: SkipLog | None = None) -> list[DocQASample]:
    """verl RL rows (parquet, or jsonl with the same fields); see :func:`read_source`."""
    return read_source(path, "verl", name, on_error, skips)


def read_longbench_jsonl(path: str | Path, name: str = "", on_error: str = "raise",
                         skips: SkipLog | None = None) -> list[DocQASample]:
    """LongBench v1 jsonl; see :func:`read_source`."""
    return read_source(path, "longbench", name, on_error, skips)


def read_docmath(path: str | Path, name: str = "", on_error: str = "raise",
                 skips: SkipLog | None = None) -> list[DocQASample]:
    """DocMath-Eval json array or jsonl; see :func:`read_source`."""
    return read_source(path, "docmath", name, on_error, skips)


def read_frames(path: str | Path, name: str = "", on_error: str = "raise",
                skips: SkipLog | None = None) -> list[DocQASample]:
    """FRAMES with ``wiki_items`` or questions-only; see :func:`read_source`."""
    return read_source(path, "frames", name, on_error, skips)


def read_plain_jsonl(path: str | Path, name: str = "", on_error: str = "raise",
                     skips: SkipLog | None = None) -> list[DocQASample]:
    """Plain jsonl (also what :func:`write_jsonl` writes); see :func:`read_source`."""
    return read_source(path, "jsonl", name, on_error, skips)


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------


def write_jsonl(samples: list[DocQASample], path: str | Path) -> None:
    """One ``DocQASample.to_dict()`` per line (the plain-jsonl format, read back losslessly)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.to_dict(), ensure_ascii=False) + "\n")


def read_jsonl_samples(path: str | Path) -> list[DocQASample]:
    """Samples written by :func:`write_jsonl` (errors raise, naming the line)."""
    return read_source(path, "jsonl")


def verl_row(sample: DocQASample, index: int) -> dict[str, Any]:
    """The verl RL row for a sample: QwenLong user prompt, rule reward with the first gold answer.

    ``reward_model.ground_truth`` holds the first answer as a string (the DocQA-RL-1.6K type);
    ``extra_info.answers`` holds all of them, with id, task, question (so ``compute_score`` can reject
    question echoes), token count and metadata (as JSON).
    """
    return {
        "data_source": sample.source,
        "prompt": [{"role": "user", "content": render_user_prompt(sample.document, sample.question)}],
        "ability": _ABILITY_BY_TASK[sample.task],
        "reward_model": {"style": "rule", "ground_truth": sample.answer},
        "extra_info": {"index": index, "id": sample.id, "task": sample.task, "answers": list(sample.answers),
                       "question": sample.question,
                       "n_tokens": sample.n_tokens,
                       "metadata_json": json.dumps(sample.metadata, ensure_ascii=False, default=str)},
    }


def write_verl_parquet(samples: list[DocQASample], path: str | Path) -> None:
    """Export samples as a verl RL parquet (see :func:`verl_row`); :func:`read_source` reads it back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    rows = [verl_row(s, i) for i, s in enumerate(samples)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def read_sources(sources, on_error: str) -> list[DocQASample]:
    """Every sample of ``sources`` (config ``DataSource`` entries: path, format, name), in order."""
    out: list[DocQASample] = []
    for src in sources:
        out.extend(read_source(src.path, format=src.format, name=src.name, on_error=on_error))
    return out
