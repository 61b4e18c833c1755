"""Numeric answers (DocMath): a safe parser and two comparison modes.

``parse_number`` reads ONE number from short answer text and never evaluates it: thousands commas,
decimals, ``1.2e5``, ``1.2 x 10^5``, fractions ``3/4``, currency symbols and words, ``%``, scale words
(thousand, million, billion, trillion, k, mn, bn), unit words around the number, the signs ``-5``,
``−5``, ``minus 5``, ``negative 5`` and the accounting form ``(1,234)``. Text after the last ``=`` or
``≈`` is what is read (``12/4 = 3`` is 3). It returns None for anything ambiguous or not a
number: two numbers ("5 or 6", "5-6"), a negation ("not 5"), brackets other than the accounting
form ("5 (approx.)", "eval('5')"), code, text over 200 characters.
A percentage is returned as written (``12.5%`` -> 12.5): DocMath-Eval also drops ``%``, and both
modes below treat x100 as equivalent.

``numeric_match(pred, gold, mode="train")`` — the reward. Relative to DocMath-Eval
(yale-nlp/DocMath-Eval ``utils/evaluation_utils.py``) the deliberate differences are:

- sign-aware: -5 never matches 5 (DocMath-Eval compares absolute values);
- scale equivalence only for x100 (percent/fraction), x1000, x1e6 and x1e9 (DocMath-Eval accepts
  ANY power-of-ten ratio, so 0.5 matches 5, and also x100000);
- an unparseable prediction is no match (DocMath-Eval turns a failed ``eval`` into 0, which
  matches a gold of 0), and ``eval`` is never used;
- yes/no/true/false and option letters are not numbers.
Kept from DocMath-Eval: 0.15% relative tolerance against the gold (against the larger value for
scaled comparisons) and equality after rounding both absolute values UP to 3 decimals.

``numeric_match(pred, gold, mode="eval")`` reproduces DocMath-Eval's scoring of one extracted answer
(``evaluation.py``: 0 when "none" is in it, else ``get_acc(pred, float(gold))`` with its ``normalize``
and ``compare_two_numbers``: 3-decimal rounding, ``log10(v1 / v2)``), for benchmark reporting, including
its quirks: sign-blind, any power-of-ten ratio matches. Agreement with the official code is measured on
``tests/fixtures/docmath_official`` (docs/eval.md). Deliberate differences:

- ``eval()`` is replaced by :func:`safe_arith_eval` (numbers, ``10^k``, unary signs, ``+ - * /``,
  parentheses; at most 200 tokens, 16 levels, 1,000 characters); names, calls, ``**``, ``//``, ``%``,
  ``^`` (XOR), strings and ``1_000`` are not evaluated, so ``abs(-12.5)`` or ``2**3`` earn nothing;
- text that does not evaluate (garbage, an empty answer, ``1 / 0``) matches nothing, where the official
  code turns it into 0 and so credits it against a gold of 0;
- ``yes``/``true``/``True`` and ``no``/``false``/``False`` are not numbers (officially True == 1 and
  False == 0 are credited);
- comma tuples (``1,00`` -> (1, 0)) are not numbers; the official code also gives them 0.
"""

from __future__ import annotations

import math
import re

from longrl.rewards.extract import clean_text

MAX_NUMBER_TEXT = 200
REL_TOL = 0.0015
"""DocMath-Eval's relative tolerance (0.15% of the gold)."""
TRAIN_SCALES = (100.0, 1e3, 1e6, 1e9)
"""Scale ratios accepted in training mode (percent<->fraction, thousands, millions, billions)."""

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(rf"(?<![\d.])(?P<sign>[-+])?(?P<num>{_NUM})(?:e(?P<exp>[-+]?\d{{1,3}}))?(?!\.?\d)")
_POW10_RE = re.compile(r"(\d)\s*(?:×|x|\*|·)\s*10\s*\^\s*([-+]?\d{1,3})")
_BARE_POW10_RE = re.compile(r"(?<![\d.])10\s*\^\s*([-+]?\d{1,3})")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_SIGN_BEFORE_CURRENCY_RE = re.compile(r"-\s*([$£€¥₹])")
_LATEX_SUBS = ((r"^{\circ}", "°"), (r"^\circ", "°"), (r"\%", "%"), (r"\$", "$"), (r"\times", "×"), (r"\cdot", "×"), (r"\approx", "≈"), (r"\,", ""))
_DASHES = str.maketrans({"−": "-", "–": "-", "—": "-", "‒": "-", "⁄": "/", "∕": "/"})
_LEFTOVER_RE = re.compile(r"[a-z\s$£€¥₹%°.,~:'/-]*")
_SCALE_WORDS = {"thousand": 1e3, "thousands": 1e3, "k": 1e3, "million": 1e6, "millions": 1e6, "mn": 1e6,
                "billion": 1e9, "billions": 1e9, "bn": 1e9, "trillion": 1e12, "trillions": 1e12, "tn": 1e12}
_NEGATION_WORDS = frozenset({"not", "no", "never", "nor", "neither", "none", "cannot", "unknown"})
_SIGN_WORDS_RE = re.compile(r"\b(minus|negative)\b")


def _prepare(text: str) -> str:
    """Lower-cased text without markdown/LaTeX noise, dashes unified, powers of ten as ``e``, after the last '='."""
    s = clean_text(text).lower().translate(_DASHES)
    for latex, plain in _LATEX_SUBS:
        s = s.replace(latex, plain)
    s = _FRAC_RE.sub(r"\1/\2", s)
    s = re.sub(r"\\[a-z]+|[{}\\]", " ", s)
    s = _POW10_RE.sub(r"\1e\2", s)
    s = _BARE_POW10_RE.sub(r"1e\1", s)
    s = re.sub(r"[*`]", " ", s)  # "**7**" is 7, "2*3" is two numbers
    s = _SIGN_BEFORE_CURRENCY_RE.sub(r"\1-", s)
    return re.split(r"[=≈]", s)[-1].strip()


def _to_float(match: re.Match) -> float:
    value = float(match.group("num").replace(",", "") + "e" + (match.group("exp") or "0"))  # inf, never raises
    return -value if match.group("sign") == "-" else value


def _read_value(s: str, matches: list[re.Match]) -> tuple[float, str] | None:
    """The value of one number or one fraction ``a/b``, and the text left around it."""
    if len(matches) == 1:
        m = matches[0]
        return _to_float(m), s[:m.start()] + " " + s[m.end():]
    if len(matches) == 2:
        a, b = matches
        if s[a.end():b.start()].strip() == "/" and b.group("sign") is None:
            den = _to_float(b)
            if den != 0:
                return _to_float(a) / den, s[:a.start()] + " " + s[b.end():]
    return None


def _accounting_negative(s: str, m: re.Match) -> bool:
    """The number is written in parentheses, e.g. "(1,234)" or "($1,234)"."""
    before = s[:m.start()].rstrip(" $£€¥₹")
    after = s[m.end():].lstrip(" %")
    return m.group("sign") is None and before.endswith("(") and after.startswith(")")


def parse_number(text: str) -> float | None:
    """The single number written in text, or None; see the module docstring. Never raises."""
    if not isinstance(text, str) or len(text) > MAX_NUMBER_TEXT:
        return None
    s = _prepare(text)
    negated = bool(_SIGN_WORDS_RE.search(s))
    s = _SIGN_WORDS_RE.sub(" ", s)
    matches = list(_NUMBER_RE.finditer(s))
    read = _read_value(s, matches)
    if read is None:
        return None
    value, leftover = read
    accounting = _accounting_negative(s, matches[0])
    if accounting:
        leftover = leftover.replace("(", " ", 1).replace(")", " ", 1)
    if not _LEFTOVER_RE.fullmatch(leftover) or "/" in leftover:
        return None
    words = re.findall(r"[a-z']+", leftover)
    if any(w in _NEGATION_WORDS or w.endswith("n't") for w in words):
        return None
    for w in words:
        value *= _SCALE_WORDS.get(w, 1.0)
    if negated != accounting:
        value = -value
    return value if math.isfinite(value) else None


def round_up(x: float, decimals: int = 3) -> float:
    """DocMath-Eval's rounding: ceil(x * 10**decimals) / 10**decimals."""
    factor = 10 ** decimals
    return math.ceil(x * factor) / factor


def within_tol(x: float, target: float) -> bool:
    """|x - target| <= 0.15% of |target| (DocMath-Eval's within_eps)."""
    eps = abs(target) * REL_TOL
    return target - eps <= x <= target + eps


def numbers_match_train(p: float, g: float) -> bool:
    """Training comparison: same sign, then equal within tolerance, 3-decimal rounding, or a TRAIN_SCALES ratio."""
    if p != 0 and g != 0 and (p < 0) != (g < 0):
        return False
    if within_tol(p, g) or round_up(abs(p)) == round_up(abs(g)):
        return True
    big, small = max(abs(p), abs(g)), min(abs(p), abs(g))
    return any(within_tol(small * s, big) for s in TRAIN_SCALES)


def numeric_match(pred: str | float | None, gold: str | float, mode: str = "train") -> bool:
    """Whether the prediction matches the gold number; see the module docstring for the two modes."""
    if mode == "train":
        p = pred if isinstance(pred, float | int) else parse_number(pred)
        g = gold if isinstance(gold, float | int) else parse_number(gold)
        return p is not None and g is not None and numbers_match_train(float(p), float(g))
    if mode == "eval":
        return docmath_eval_acc(pred, gold)
    raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")


# --------------------------------------------------------------------------------------------------
# DocMath-Eval reproduction (mode="eval")
# --------------------------------------------------------------------------------------------------

_MAX_EVAL_TEXT = 1000
"""Longer text is not read (the official unit patterns backtrack quadratically)."""
_OFFICIAL_DROP = ("£", "€", "¥", "million", "billion", "thousand", "US", "USD", "RMB")
_NUMBER_TOKEN = r"[-+]?(?:[\d,]*\.*\d+)"
_UNIT_PATTERNS = (
    re.compile(rf"({_NUMBER_TOKEN}) [^0-9 ]+$"),
    re.compile(rf"[^0-9 ]+ ({_NUMBER_TOKEN})$"),
    re.compile(rf"({_NUMBER_TOKEN})[^\d]{{1,2}}$"),
    re.compile(r"[^-+\d]{1,2}((?:[\d,]*\.*\d+))$"),
)
_OFFICIAL_IS_NUMBER = re.compile(r"[-+]?(\d{1,3}(,\d{3})*|(\d+))(\.\d+)?$")


def _official_strip(s: str) -> str:
    """DocMath-Eval normalize, stage 1: trim, drop currency/scale words, keep text after '='/'≈', drop symbols."""
    s = s.strip().rstrip(".")
    for token in _OFFICIAL_DROP:
        s = s.replace(token, "")
    for sep in ("=", "≈"):
        if sep in s:
            s = s.split(sep)[-1].strip()
    for ch in "`%$°":
        s = s.replace(ch, "")
    return s


def _official_words(s: str) -> str:
    """DocMath-Eval normalize: booleans, 'approximately', ' or ', then the four unit-dropping patterns."""
    if s in ("true", "yes", "false", "no"):
        s = "True" if s in ("true", "yes") else "False"
    if "True" in s or "False" in s:
        s = "True" if "True" in s else "False"
    if "approximately" in s:
        s = s.replace("approximately", "").strip()
    if " or " in s:
        s = s.split(" or ")[0]
    for pattern in _UNIT_PATTERNS:
        m = pattern.match(s)
        if m:
            s = m.group(1)
    return s


def _official_expression(s: str) -> str:
    """DocMath-Eval normalize, final stage: 'x'/'×' products, commas of a plain number, options.

    ``10^k`` stays as written (the official code rewrites it to ``math.pow(10, k)``; the evaluator
    below reads it directly).
    """
    s = s.replace(" x ", "*").replace(" × ", "*")
    if _OFFICIAL_IS_NUMBER.match(s):
        s = s.replace(",", "")
    option = re.search(r"\([a-d]\)", s)
    if option:
        s = '"' + option.group(0) + '"'
    return s


def docmath_normalize(text: str) -> float | None:
    """The number DocMath-Eval's ``normalize`` would compute from text, or None (see module docstring).

    None where the official code gets a boolean, a string, a list/tuple, or a failed ``eval`` (which it
    turns into 0), and where the text needs Python beyond the arithmetic of :func:`safe_arith_eval`.
    """
    if not isinstance(text, str) or len(text) > _MAX_EVAL_TEXT:
        return None
    s = _official_words(_official_strip(text))
    if s in ("True", "False"):
        return None
    return safe_arith_eval(_official_expression(s))


_ARITH_TOKEN = re.compile(r"\s*(?:(?P<pow>10\^(?P<k>-?\d+))|(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
                          r"|(?P<op>[-+*/()]))")
_BAD_INT_LITERAL = re.compile(r"0+[1-9]\d*")
_MAX_ARITH_TOKENS = 200
_MAX_ARITH_DEPTH = 16


def _arith_tokens(expr: str) -> list[tuple[str, float | str]] | None:
    """('n', value) and ('op', char) tokens, or None for anything outside the grammar."""
    tokens, pos, end = [], 0, len(expr.rstrip())
    while pos < end:
        m = _ARITH_TOKEN.match(expr, pos)
        if m is None or len(tokens) >= _MAX_ARITH_TOKENS:
            return None
        if m.group("pow"):
            k = int(m.group("k"))
            if k > 308:
                return None  # math.pow(10, k) overflows: the official eval fails
            tokens.append(("n", 10.0 ** k if k > -400 else 0.0))
        elif m.group("num"):
            num = m.group("num")
            if _BAD_INT_LITERAL.fullmatch(num):
                return None  # "007" is a SyntaxError in Python
            tokens.append(("n", float(num)))
        else:
            tokens.append(("op", m.group("op")))
        pos = m.end()
    return tokens


class _Arith:
    """Recursive descent over numbers, unary +/-, * /, + -, parentheses (Python's precedence)."""

    def __init__(self, tokens: list[tuple[str, float | str]]):
        self.tokens, self.i, self.depth = tokens, 0, 0

    def peek(self) -> float | str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) and self.tokens[self.i][0] == "op" else None

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.tokens[self.i][1]
            self.i += 1
            value = value + self.term() if op == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.tokens[self.i][1]
            self.i += 1
            value = value * self.factor() if op == "*" else value / self.factor()
        return value

    def factor(self) -> float:
        if self.i >= len(self.tokens):
            raise ValueError("expression ends early")
        kind, value = self.tokens[self.i]
        self.i += 1
        if kind == "n":
            return float(value)
        if value in ("+", "-"):
            inner = self.factor()
            return inner if value == "+" else -inner
        if value == "(":
            self.depth += 1
            if self.depth > _MAX_ARITH_DEPTH:
                raise ValueError("nested too deep")
            inner = self.expr()
            if self.peek() != ")":
                raise ValueError("unbalanced parenthesis")
            self.i += 1
            self.depth -= 1
            return inner
        raise ValueError(f"unexpected {value!r}")


def safe_arith_eval(expr: str) -> float | None:
    """The value of an arithmetic expression, or None; nothing is ever executed.

    Grammar: numbers (``12``, ``1.5``, ``.5``, ``2e-3``), ``10^k``, unary + and -, ``* /``, ``+ -`` and
    parentheses, with Python's precedence. Everything else (names, calls, ``**``, ``//``, ``%``, ``^``
    other than ``10^k``, strings, commas) is None, as are a division by zero, a non-finite result,
    more than 200 tokens or 16 levels of parentheses, and text over 1,000 characters.
    """
    if not isinstance(expr, str) or len(expr) > _MAX_EVAL_TEXT:
        return None
    tokens = _arith_tokens(expr)
    if not tokens:
        return None
    parser = _Arith(tokens)
    try:
        value = parser.expr()
    except (ValueError, ArithmeticError):
        return None
    if parser.i != len(tokens) or not math.isfinite(value):
        return None
    return value


def _official_compare(p: object, gt: float) -> bool:
    """DocMath-Eval compare_two_numbers (3-decimal rounding, log10(v1 / v2)); False where it would raise."""
    v1, v2 = max(abs(gt), abs(p)), min(abs(gt), abs(p))
    if v1 != 0 and v2 != 0 and int(math.log10(v1 / v2)) == math.log10(v1 / v2):
        return True
    for ratio, factor in ((50, 100), (500, 1000), (50000, 100000)):
        if v2 <= v1 / ratio and within_tol(v2 * factor, v1):
            return True
    if round_up(v1) == round_up(v2):
        return True
    return within_tol(p, gt)


def _gold_value(gold: str | float) -> float | None:
    """DocMath-Eval reads the gold with ``float()``; text that float() refuses goes through docmath_normalize."""
    if isinstance(gold, bool):
        return None
    if isinstance(gold, int | float):
        return float(gold)
    try:
        return float(str(gold).replace(",", ""))
    except ValueError:
        return docmath_normalize(str(gold))


def docmath_eval_acc(pred: str | None, gold: str | float) -> bool:
    """DocMath-Eval accuracy of one extracted answer against the gold (see module docstring):
    ``evaluation.py`` scores 0 when "none" is in the answer, else ``get_acc(pred, float(gold))``."""
    if not isinstance(pred, str) or "none" in pred.lower():
        return False
    gt, p = _gold_value(gold), docmath_normalize(pred)
    if gt is None or p is None:
        return False
    try:
        return _official_compare(p, gt)
    except (OverflowError, ValueError, ZeroDivisionError):
        return False
