"""Numeric parsing and the two DocMath comparison modes."""

import pytest

from longrl.rewards.numeric import numeric_match, parse_number, round_up, safe_arith_eval


@pytest.mark.parametrize("text, value", [
    ("42", 42.0),
    ("1,234.5", 1234.5),
    ("$1,234", 1234.0),
    ("-5", -5.0),
    ("−5", -5.0),                  # U+2212 minus sign
    ("minus 7", -7.0),
    ("(1,234)", -1234.0),          # accounting negative
    ("-$5", -5.0),                 # sign before the currency symbol
    ("12.5%", 12.5),               # percent kept as written
    ("3/4", 0.75),
    ("\\frac{3}{4}", 0.75),
    ("2.5 million", 2.5e6),
    ("5bn", 5e9),
    ("1.2 x 10^5", 1.2e5),
    ("1.5e3", 1500.0),
    ("USD 300", 300.0),
    ("approximately 42 employees", 42.0),
    ("12 / 4 = 3", 3.0),           # the value after the last '='
    ("**7**", 7.0),
])
def test_parse_number(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "five", "5 or 6", "5-6", "not 5", "1,2", "1/0", "Q3 2019 revenue 5",
                                  "__import__('os')", "x" * 300, "1e999"])
def test_parse_number_rejects(text):
    assert parse_number(text) is None


def test_train_mode_tolerance_and_rounding():
    assert numeric_match("100.1", "100")          # |0.1| <= 0.15% of 100
    assert not numeric_match("100.2", "100")      # 0.2 > 0.15
    assert numeric_match("0.1225", "0.123")       # ceil(122.5)/1000 = 0.123
    assert round_up(0.1221) == 0.123


def test_train_mode_scales():
    assert numeric_match("12.5%", "0.125")        # x100
    assert numeric_match("5 million", "5")        # x1e6
    assert numeric_match("5000", "5")             # x1000
    assert not numeric_match("0.5", "5")          # x10 is a real error (DocMath-Eval would accept it)
    assert not numeric_match("500000", "5")       # x1e5 not accepted


def test_train_mode_is_sign_aware():
    assert not numeric_match("-5", "5")
    assert not numeric_match("5", "-5")
    assert numeric_match("(5)", "-5")
    assert numeric_match("0", "0")
    assert not numeric_match("0.001", "0")


def test_eval_mode_reproduces_docmath_eval_quirks():
    # compare_two_numbers works on absolute values and accepts any power-of-ten ratio
    assert numeric_match("-5", "5", mode="eval")
    assert numeric_match("0.5", "5", mode="eval")
    # deliberate difference: officially a failed eval() is 0 and matches a gold of 0; here it matches nothing
    assert not numeric_match("the", "0", mode="eval")
    assert not numeric_match("", "0", mode="eval")
    # "US" is dropped before "USD", leaving "5 D", whose unit is then dropped
    assert numeric_match("5 USD", "5", mode="eval")
    # "2^3" is Python XOR in the official eval() (2 ^ 3 == 1); not arithmetic here
    assert not numeric_match("2^3", "1", mode="eval")
    # "(1,234)" evaluates to a tuple, which never matches
    assert not numeric_match("(1,234)", "1234", mode="eval")
    assert numeric_match("12.35%", "0.1235", mode="eval")


def test_safe_arith_eval_never_executes():
    assert safe_arith_eval("__import__('os').system('echo pwned')") is None
    assert safe_arith_eval("(lambda: 1)()") is None
    assert safe_arith_eval("2 ** 10 ** 10") is None          # refused, not computed
    assert safe_arith_eval("1 / 0") is None
    assert safe_arith_eval("3 * 4 - 2") == 10
    assert safe_arith_eval("True") is None


def test_bad_mode_raises():
    with pytest.raises(ValueError):
        numeric_match("1", "1", mode="fuzzy")
