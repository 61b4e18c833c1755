"""Every name a user picks in a config goes through one registry style."""

from __future__ import annotations

import typing

import pytest

from longrl.algo import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS
from longrl.algo.registry import Registry
from longrl.config import AlgoConfig


def test_duplicate_and_unknown_names():
    reg: Registry = Registry("widget")
    reg.register("a")(len)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(abs)
    assert reg.lookup("a") is len
    with pytest.raises(ValueError, match=r"unknown widget 'b'; choose from \['a'\]"):
        reg.lookup("b")


@pytest.mark.parametrize(("field", "registry"), [("advantage", ADVANTAGE_ESTIMATORS),
                                                 ("kl_estimator", KL_ESTIMATORS), ("loss_agg", LOSS_AGGREGATIONS)])
def test_config_choices_are_the_registered_names(field, registry):
    # the config validates a name against its Literal; it must offer exactly what the registry dispatches
    choices = typing.get_args(typing.get_type_hints(AlgoConfig)[field])
    assert isinstance(registry, Registry) and set(choices) == set(registry)
