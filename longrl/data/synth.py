"""Synthetic long-context DocQA with rule-checkable answers (``longrl synth``).

A document is a shuffled set of templated person paragraphs, one per person::

    Kalor lives in Maple. Kalor used to live in Cedar. Kalor works as a baker.
    Kalor has 17 coins. The manager of Kalor is Tisen.

plus, when the name pool runs out, filler sentences (``Kalor met Tisen in Maple.``). Distractors:
near-duplicate names (``Kalor`` / ``Kamun``, one syllable apart), conflicting-looking values
(``used to live in``, ``once had``, ``met ... in``), and every other paragraph stating the same
attributes for other people. The key facts are always locatable by exact (name, attribute) match,
and a longer document only adds distractors, so length makes a question harder, not different.

With ``haystack="prose"`` a document instead holds its evidence people, their near-duplicates and a
fixed number of other people (``distractor_people``); the rest is neutral prose with no name, place,
job or number in it, as in a needle-in-a-haystack test, so length adds reading, not near misses.

Question families: ``lookup`` (city, job or manager of a person; task qa), ``multihop`` (the city or
job of the manager of a person, 2 or 3 hops whose paragraphs lie in different parts of the
document; task qa), ``numeric`` (sum, difference or integer ratio of two people's coins; task
numeric), ``mcq`` (city or job with four lettered options; task mcq). Every sample carries
``metadata["family"]`` and ``metadata["reasoning"]``, a short gold chain ending in
``Therefore, the answer is X.`` for warm-up SFT.

Sample ``i`` depends only on (split, seed, target_tokens, i), through its own ``random.Random``;
distinct splits draw from distinct seed streams, so train and held-out documents never coincide.
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from longrl.config import ConfigError
from longrl.data.records import DocQASample
from longrl.data.tokens import load_tokenizer, token_counter
from longrl.locations import check_location

FAMILIES = ("lookup", "multihop", "numeric", "mcq")
FIRST_SYLLABLES = ("Ka", "Lo", "Mi", "Ta", "Ro", "Se", "Du", "Ne", "Vi", "Po", "Ha", "Ze", "Bo", "Fi", "Gu", "Ri")
SECOND_SYLLABLES = ("lor", "mun", "ris", "ten", "vak", "dim", "sol", "bel", "nar", "gus", "fen", "tox",
                    "pim", "rad", "kel", "zun")
NAMES = tuple(a + b for a in FIRST_SYLLABLES for b in SECOND_SYLLABLES)
"""256 five-letter person names; none is a substring of another, so sub-EM cannot confuse them."""
CITIES = ("Amber", "Birch", "Cedar", "Dover", "Ember", "Fjord", "Grove", "Harbor", "Island", "Juniper",
          "Kestrel", "Lagoon", "Maple", "Nettle", "Orchid", "Pebble")
JOBS = ("baker", "farmer", "tailor", "sailor", "miner", "potter", "weaver", "hunter", "singer", "doctor",
        "teacher", "builder")
TASK_OF_FAMILY = {"lookup": "qa", "multihop": "qa", "numeric": "numeric", "mcq": "mcq"}
LETTERS = "ABCD"
MAX_COINS = 40
HAYSTACKS = ("people", "prose")
DISTRACTOR_PEOPLE = 8
"""Default number of other people in a ``prose``-haystack document."""
_PROSE_SUBJECTS = ("The old bridge", "A narrow path", "The river", "The morning bell", "A wooden cart", "The north wind",
                   "The village well", "A stone wall", "The lantern", "The mill wheel", "A flock of geese", "The tall clock")
_PROSE_VERBS = ("stood quietly", "creaked softly", "was mended", "was painted green", "shone brightly", "was half hidden",
                "gathered dust", "rang twice", "leaned to one side", "was the talk of the fair", "looked older", "fell silent")
_PROSE_PLACES = ("near the square", "by the fence", "beside the road", "under the hill", "past the meadow",
                 "behind the chapel", "along the canal", "at the crossroads", "over the stream", "in the valley")
_PROSE_TIMES = ("at dawn", "that winter", "after the rain", "before the festival", "all afternoon", "in the spring",
                "on market day", "late at night", "during the storm", "every autumn")


def word_count_tokens(text: str) -> int:
    """Default token estimate: words plus punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


@dataclass
class Person:
    name: str
    city: str
    job: str
    coins: int
    manager: str = ""
    old_city: str = ""
    old_coins: int = 0

    def paragraph(self) -> str:
        parts = [f"{self.name} lives in {self.city}."]
        if self.old_city:
            parts.append(f"{self.name} used to live in {self.old_city}.")
        parts.append(f"{self.name} works as a {self.job}.")
        parts.append(f"{self.name} has {self.coins} coins.")
        if self.old_coins:
            parts.append(f"{self.name} once had {self.old_coins} coins.")
        parts.append(f"The manager of {self.name} is {self.manager}.")
        return " ".join(parts)


@dataclass
class Question:
    question: str
    answer: str
    reasoning: list[str]
    """Gold steps; the generator appends "Therefore, the answer is X."."""
    spread: list[str]
    """Names whose paragraphs must lie in different parts of the document (the evidence)."""
    meta: dict


class _World:
    """The people of one document, drawn without replacement from a shuffled name pool."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.free = list(NAMES)
        rng.shuffle(self.free)
        self.people: dict[str, Person] = {}
        self.required: list[str] = []

    def new_person(self, name: str = "", required: bool = True, distractors: float = 0.3, **fixed) -> Person:
        rng = self.rng
        name = name or self.free[-1]
        self.free.remove(name)
        p = Person(name, rng.choice(CITIES), rng.choice(JOBS), rng.randint(2, MAX_COINS))
        for k, v in fixed.items():
            setattr(p, k, v)
        if not p.old_city and rng.random() < distractors:
            p.old_city = rng.choice([c for c in CITIES if c != p.city])
        if not p.old_coins and rng.random() < distractors:
            p.old_coins = rng.choice([c for c in range(2, MAX_COINS + 1) if c != p.coins])
        self.people[name] = p
        if required:
            self.required.append(name)
        return p

    def near_duplicate(self, p: Person) -> Person | None:
        """A required person whose name differs from ``p``'s in one syllable, with other values."""
        cands = [n for n in self.free if sum(a != b for a, b in zip((n[:2], n[2:]), (p.name[:2], p.name[2:]))) == 1]
        if not cands:
            return None
        return self.new_person(self.rng.choice(cands), city=self.rng.choice([c for c in CITIES if c != p.city]),
                               job=self.rng.choice([j for j in JOBS if j != p.job]),
                               coins=self.rng.choice([c for c in range(2, MAX_COINS + 1) if c != p.coins]))

    def assign_managers(self) -> None:
        names = list(self.people)
        for p in self.people.values():
            if not p.manager:
                p.manager = self.rng.choice([n for n in names if n != p.name])


# ---------------------------------------------------------------------------- question families
_ATTR_Q = {"city": "Where does {} live?", "job": "What is the job of {}?", "manager": "Who is the manager of {}?"}
_ATTR_FACT = {"city": "{} lives in {}.", "job": "{} works as a {}.", "manager": "The manager of {} is {}."}


def _lookup(w: _World) -> Question:
    attr = w.rng.choice(("city", "job", "manager"))
    p = w.new_person()
    w.near_duplicate(p)
    if attr == "manager":
        p.manager = w.new_person().name
    value = getattr(p, attr)
    return Question(_ATTR_Q[attr].format(p.name), value, [_ATTR_FACT[attr].format(p.name, value)],
                    [p.name], {"attribute": attr})


def _multihop(w: _World) -> Question:
    hops, attr = w.rng.choice((2, 3)), w.rng.choice(("city", "job"))
    chain = [w.new_person() for _ in range(hops)]
    for a, b in zip(chain, chain[1:]):
        a.manager = b.name
    for p in chain:
        w.near_duplicate(p)
    target = chain[-1]
    subject = "the manager of " * (hops - 1) + chain[0].name
    steps = [_ATTR_FACT["manager"].format(a.name, b.name) for a, b in zip(chain, chain[1:])]
    steps.append(_ATTR_FACT[attr].format(target.name, getattr(target, attr)))
    return Question(_ATTR_Q[attr].format(subject), getattr(target, attr), steps, [p.name for p in chain],
                    {"attribute": attr, "hops": hops})


def _numeric(w: _World) -> Question:
    rng = w.rng
    op = rng.choice(("sum", "difference", "ratio"))
    if op == "ratio":
        b = rng.randint(2, MAX_COINS // 4)
        a = b * rng.randint(2, MAX_COINS // b)
    else:
        a, b = rng.sample(range(2, MAX_COINS + 1), 2)
        if op == "difference" and a < b:
            a, b = b, a
    p, q = w.new_person(coins=a), w.new_person(coins=b)
    w.near_duplicate(p)
    w.near_duplicate(q)
    question, expr, value = {
        "sum": (f"How many coins do {p.name} and {q.name} have in total?", f"{a} + {b}", a + b),
        "difference": (f"How many more coins does {p.name} have than {q.name}?", f"{a} - {b}", a - b),
        "ratio": (f"How many times as many coins as {q.name} does {p.name} have?", f"{a} / {b}", a // b),
    }[op]
    steps = [f"{p.name} has {a} coins.", f"{q.name} has {b} coins.", f"{expr} = {value}."]
    return Question(question, str(value), steps, [p.name, q.name], {"op": op})


def _mcq(w: _World) -> Question:
    rng = w.rng
    attr = rng.choice(("city", "job"))
    pool = CITIES if attr == "city" else JOBS
    p = w.new_person(old_city=rng.choice(CITIES))
    while p.old_city == p.city:
        p.old_city = rng.choice(CITIES)
    dup = w.near_duplicate(p)
    value = getattr(p, attr)
    options = [value] + [v for v in (p.old_city if attr == "city" else "", getattr(dup, attr) if dup else "")
                         if v and v != value]
    options = list(dict.fromkeys(options))
    options += rng.sample([v for v in pool if v not in options], 4 - len(options))
    rng.shuffle(options)
    letter = LETTERS[options.index(value)]
    listing = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    steps = [_ATTR_FACT[attr].format(p.name, value), f"Option {letter} is {value}."]
    return Question(f"{_ATTR_Q[attr].format(p.name)}\n{listing}", letter, steps, [p.name],
                    {"attribute": attr, "options": options})


_BUILDERS: dict[str, Callable[[_World], Question]] = {
    "lookup": _lookup, "multihop": _multihop, "numeric": _numeric, "mcq": _mcq}


# ---------------------------------------------------------------------------- documents
def _prose(rng: random.Random) -> str:
    """A filler paragraph with no name, city, job or number in it (the ``prose`` haystack)."""
    return " ".join(f"{rng.choice(_PROSE_SUBJECTS)} {rng.choice(_PROSE_VERBS)} {rng.choice(_PROSE_PLACES)} "
                    f"{rng.choice(_PROSE_TIMES)}." for _ in range(3))


def _fill(w: _World, budget: int, count: Callable[[str], int], haystack: str,
          distractor_people: int) -> list[tuple[str, int]]:
    """Distractor paragraphs totalling at most ``budget`` tokens.

    ``people``: new people, then ``met`` sentences once the name pool is used up. ``prose``:
    ``distractor_people`` new people, then paragraphs of neutral prose (:func:`_prose`).
    """
    out: list[tuple[str, int]] = []
    used = 0
    known = list(w.people)
    while used < budget:
        if haystack == "prose" and len(known) - len(w.required) >= distractor_people:
            text = _prose(w.rng)
        elif w.free:
            p = w.new_person(required=False, manager=w.rng.choice(known))
            text = p.paragraph()
            known.append(p.name)
        else:
            a, b = w.rng.sample(known, 2)
            text = f"{a} met {b} in {w.rng.choice(CITIES)}."
        t = count(text)
        if used + t > budget:
            break
        out.append((text, t))
        used += t
    return out


def _place(rng: random.Random, n_total: int, n_spread: int) -> list[int]:
    """Positions for the evidence paragraphs: one in each of ``n_spread`` equal parts, in random order."""
    parts = list(range(n_spread))
    rng.shuffle(parts)
    return [rng.randrange(k * n_total // n_spread, max(k * n_total // n_spread + 1, (k + 1) * n_total // n_spread))
            for k in parts]


def _assemble(w: _World, q: Question, target_tokens: int, count: Callable[[str], int], haystack: str,
              distractor_people: int) -> tuple[str, list[float]]:
    """The document text and the relative depth (0..1) of each evidence paragraph."""
    rng = w.rng
    required = {n: w.people[n].paragraph() for n in w.required}
    budget = target_tokens - count("\n\n".join(required.values()))
    fillers = _fill(w, budget, count, haystack, distractor_people)
    while True:
        others = [required[n] for n in w.required if n not in q.spread] + [t for t, _ in fillers]
        rng.shuffle(others)
        n_total = len(others) + len(q.spread)
        slots = sorted(zip(_place(rng, n_total, len(q.spread)), q.spread))
        paragraphs = list(others)
        for pos, name in slots:
            paragraphs.insert(pos, required[name])
        doc = "\n\n".join(paragraphs)
        over = count(doc) - target_tokens
        if over <= 0 or not fillers:
            break
        while fillers and over > 0:
            over -= fillers.pop()[1]
    depth = [paragraphs.index(required[n]) / max(1, len(paragraphs) - 1) for n in q.spread]
    return doc, depth


def make_sample(i: int, family: str, target_tokens: int, seed: int = 0, split: str = "train",
                count_tokens: Callable[[str], int] | None = None, haystack: str = "people",
                distractor_people: int = DISTRACTOR_PEOPLE) -> DocQASample:
    """Sample ``i`` of (split, seed, target_tokens): a document of about ``target_tokens`` tokens.

    ``haystack`` is what fills the document beyond the evidence: ``people`` (other people's
    paragraphs, as many as fit) or ``prose`` (``distractor_people`` other people, then neutral
    prose). The question and its evidence depend only on (split, seed, target_tokens, i).
    """
    count = count_tokens or word_count_tokens
    rng = random.Random(f"longrl-synth:{split}:{seed}:{target_tokens}:{i}")
    w = _World(rng)
    q = _BUILDERS[family](w)
    w.assign_managers()
    doc, depth = _assemble(w, q, target_tokens, count, haystack, distractor_people)
    reasoning = " ".join(q.reasoning + [f"Therefore, the answer is {q.answer}."])
    meta = {"family": family, "reasoning": reasoning, "split": split, "seed": seed,
            "target_tokens": target_tokens, "doc_tokens": count(doc), "evidence": q.reasoning,
            "evidence_depth": [round(d, 3) for d in depth], "haystack": haystack} | q.meta
    return DocQASample(id=f"{split}-s{seed}-t{target_tokens}-{i:06d}", source="synthetic",
                       task=TASK_OF_FAMILY[family], document=doc, question=q.question,
                       answers=[q.answer], metadata=meta)


def generate(n: int, target_tokens: int, seed: int = 0, families: Sequence[str] = FAMILIES,
             split: str = "train", count_tokens: Callable[[str], int] | None = None, haystack: str = "people",
             distractor_people: int = DISTRACTOR_PEOPLE) -> list[DocQASample]:
    """``n`` samples cycling through ``families``; ``generate(m)`` is a prefix of ``generate(n)``, m < n.

    ``count_tokens(text) -> int`` measures document length (default: ``word_count_tokens``); each
    document is at most ``target_tokens`` long (unless its evidence alone is longer) and within
    about one paragraph of it. ``n_tokens`` is left at -1: prompt tokens are counted downstream.
    """
    unknown = [f for f in families if f not in _BUILDERS]
    if unknown or not families:
        raise ValueError(f"unknown question families {unknown}; choose from {FAMILIES}")
    if target_tokens < 1:
        raise ValueError(f"target_tokens must be >= 1, got {target_tokens}")
    if haystack not in HAYSTACKS:
        raise ValueError(f"unknown haystack {haystack!r}; choose from {HAYSTACKS}")
    if distractor_people < 0:
        raise ValueError(f"distractor_people must be >= 0, got {distractor_people}")
    return [make_sample(i, families[i % len(families)], target_tokens, seed, split, count_tokens, haystack,
                        distractor_people) for i in range(n)]


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=100, help="samples per document length")
    parser.add_argument("--tokens", type=int, nargs="+", default=[2000],
                        help="target document length(s) in tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="split name (train, heldout, ...): disjoint documents")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated question families")
    parser.add_argument("--haystack", choices=HAYSTACKS, default="people",
                        help="what fills a document beyond the evidence: other people's paragraphs (as many as fit), "
                             "or --distractor-people people then neutral prose")
    parser.add_argument("--distractor-people", type=int, default=DISTRACTOR_PEOPLE,
                        help="--haystack prose: people besides the evidence and its near-duplicate names")
    parser.add_argument("--tokenizer", default="",
                        help="count tokens with this Hugging Face tokenizer (default: a word-based estimate)")
    parser.add_argument("--out", required=True, help="output .jsonl (DocQASample records)")


def check_arguments(args: argparse.Namespace) -> list[str]:
    """Validate the CLI arguments (ConfigError naming the flag); returns the question families."""
    if args.n < 1:
        raise ConfigError("--n", f"must be >= 1, got {args.n}")
    for t in args.tokens:
        if t < 1:
            raise ConfigError("--tokens", f"must be >= 1, got {t}")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not families:
        raise ConfigError("--families", f"no question family given; choose from {', '.join(FAMILIES)}")
    for f in families:
        if f not in _BUILDERS:
            raise ConfigError("--families", f"unknown question family {f!r}; choose from {', '.join(FAMILIES)}")
    if args.distractor_people < 0:
        raise ConfigError("--distractor-people", f"must be >= 0, got {args.distractor_people}")
    check_location(args.tokenizer, "--tokenizer", "tokenizer")
    return families


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    families = check_arguments(args)
    count = None
    if args.tokenizer:
        count = token_counter(load_tokenizer(args.tokenizer))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for target in args.tokens:
            samples = generate(args.n, target, args.seed, families, args.split, count, args.haystack,
                               args.distractor_people)
            for s in samples:
                f.write(json.dumps(s.to_dict()) + "\n")
            mean = sum(s.metadata["doc_tokens"] for s in samples) / max(1, len(samples))
            print(f"{len(samples)} samples, target {target} tokens, mean document {mean:.0f} tokens")
    print(f"wrote {out}")
    return 0
