"""DocMath accuracy vs the OFFICIAL DocMath-Eval scoring, measured on a committed fixture.

``tests/fixtures/docmath_official/cases.jsonl`` holds predictions built from a fixed vocabulary and the
accuracy DocMath-Eval's own ``evaluation_utils.get_acc`` gave each (see ``generate.py`` and SOURCES.md
there; the official code is not vendored). Our metric must agree on >= 99% of them, and every case where
it does not must be one of the deliberate differences listed in docs/eval.md.
"""

import json
from pathlib import Path

import pytest

from longrl.eval.metrics import docmath_metrics
from longrl.rewards.numeric import docmath_eval_acc, docmath_normalize, safe_arith_eval

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "docmath_official" / "cases.jsonl"
CASES = [json.loads(line) for line in FIXTURE.read_text().splitlines()]

# Where we deliberately differ (docs/eval.md, "DocMath: deliberate differences"). Each maps to why.
GARBAGE_VS_ZERO = {"", "the", "N/A", "unknown", "cannot be determined", "$", "%", "zero", "1 / 0"}
BOOLEANS = {"yes", "no", "true", "false", "True", "False", "It is True"}
PYTHON_ONLY = {"abs(-12.5)", "round(12.49, 1)", "max(1, 12.5)", "2**3", "7 // 2", "1_000"}


def _deliberate(pred: str, gold: float) -> bool:
    if pred in BOOLEANS or pred in PYTHON_ONLY:
        return True
    # official: a failed eval() counts as 0, so ANY unreadable text "matches" a gold of 0
    return gold == 0 and (pred in GARBAGE_VS_ZERO or docmath_normalize(pred) is None)


def test_fixture_is_large_and_varied():
    assert len(CASES) >= 400
    assert 0.5 < sum(c["official"] for c in CASES) / len(CASES) < 0.95   # both outcomes well represented
    assert len({c["gold"] for c in CASES}) >= 10


def test_agreement_with_official_docmath_eval_is_at_least_99_percent():
    ours = [int(docmath_eval_acc(c["pred"], c["gold"])) for c in CASES]
    disagree = [(c["pred"], c["gold"], c["official"]) for c, o in zip(CASES, ours) if o != c["official"]]
    rate = 1 - len(disagree) / len(CASES)
    regular = [c for c in CASES if not _deliberate(c["pred"], c["gold"])]
    unexplained = [d for d in disagree if not _deliberate(d[0], d[1])]
    regular_rate = 1 - len(unexplained) / len(regular)
    print(f"DocMath agreement with official get_acc: all {rate:.4f} ({len(CASES) - len(disagree)}/{len(CASES)}), "
          f"outside the deliberate differences {regular_rate:.4f} ({len(regular) - len(unexplained)}/{len(regular)})")
    assert regular_rate >= 0.99, unexplained
    assert not unexplained, unexplained
    # the fixture over-samples the deliberate cases on purpose; even so they stay under 2% of it
    assert rate >= 0.98, disagree
    # every deliberate difference goes one way: the official code credits, we do not
    assert all(official == 1 for _, _, official in disagree)


@pytest.mark.parametrize("pred,gold", [("", 0.0), ("the", 0.0), ("N/A", 0.0), ("$", 0.0), ("1 / 0", 0.0),
                                       ("cannot be determined", 0.0), ("0 units of stock", 0.0)])
def test_garbage_or_empty_never_matches_a_gold_of_zero(pred, gold):
    assert not docmath_eval_acc(pred, gold)
    assert docmath_metrics(pred, [str(gold)])["acc"] == 0.0


@pytest.mark.parametrize("pred,gold", [("yes", 1.0), ("True", 1.0), ("It is True", 1.0), ("no", 0.0), ("False", 0.0)])
def test_booleans_are_not_numbers(pred, gold):
    assert not docmath_eval_acc(pred, gold)


@pytest.mark.parametrize("pred,gold", [("1,00", 100.0), ("1,00", 1.0), ("12,5", 12.5), ("(1,234)", 1234.0)])
def test_comma_tuples_are_not_credited(pred, gold):
    # Python parses "1,00" as the tuple (1, 0); the official code rejects lists (measured: 0), and so do we
    assert not docmath_eval_acc(pred, gold)


@pytest.mark.parametrize("pred,gold", [("USD 12.5", 12.5), ("$ 12.5", 12.5), ("approximately 12.5", 12.5),
                                       ("about 12.5", 12.5), ("25/2", 12.5), ("x = 12.5", 12.5),
                                       ("100 / 8 = 12.5", 12.5), ("2/3", 0.6667), ("1.25 x 10^1", 12.5),
                                       ("(20 + 5) / 2", 12.5), ("0 units", 0.0), ("0", 0.0)])
def test_forms_the_official_code_credits(pred, gold):
    assert docmath_eval_acc(pred, gold)


def test_safe_arith_eval_grammar_and_bounds():
    assert safe_arith_eval("(1 + 2) * 3 - 4 / 8") == 8.5
    assert safe_arith_eval("-(-5)") == 5
    assert safe_arith_eval("1.25*10^2") == 125.0
    assert safe_arith_eval("2 x 10^-3") is None     # ' x ' is rewritten by the official normalize, not here
    for expr in ("__import__('os').system('echo pwned')", "(lambda: 1)()", "2 ** 10", "7 // 2", "7 % 2",
                 "2 ^ 3", "abs(-1)", "1 / 0", "1e999", "10^400", "1,2", "'5'", "True", "007", "1_000",
                 "(" * 40 + "1" + ")" * 40, "+".join(["1"] * 300), ""):
        assert safe_arith_eval(expr) is None, expr


def test_long_prediction_is_refused_not_evaluated():
    assert safe_arith_eval("1+" * 600 + "1") is None
    assert not docmath_eval_acc("1 + " * 2000 + "1", 2001.0)


def test_fixture_inputs_are_what_generate_py_builds():
    """The committed inputs are regenerable: generate.py's vocabulary yields exactly them, in order (the
    official outputs need DocMath-Eval itself; see SOURCES.md for the command)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docmath_generate", FIXTURE.parent / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.build_cases() == [(c["pred"], c["gold"]) for c in CASES]
