"""AEPO as published (QwenLong-L1.5; state rule confirmed in Tongyi-Zhiwen/Qwen-Doc issue #16): a batch
rule with a hysteresis band [entropy_low, entropy_high] whose state is a small checkpointed object."""

import json

import pytest
import torch

from longrl.algo.aepo import AEPOState, drop_negative_samples, hysteresis_active
from longrl.config import ConfigError, load_config

SCRIPT = [0.4, 0.9, 1.2, 0.9, 0.6, 0.45, 0.7, 1.0, 1.01, 0.5, 0.49]
EXPECTED = [False, False, True, True, True, False, False, False, True, True, False]
"""low = 0.5, high = 1.0: switch on only above high, off only below low; inside the band the state holds."""


def test_state_switches_on_a_scripted_entropy_sequence():
    state = AEPOState(low=0.5, high=1.0)
    assert [state.update(h) for h in SCRIPT] == EXPECTED
    assert [hysteresis_active(False, h, 0.5, 1.0) for h in (0.49, 0.75, 1.0, 1.01)] == [False, False, False, True]
    assert [hysteresis_active(True, h, 0.5, 1.0) for h in (0.49, 0.5, 0.75, 1.01)] == [False, True, True, True]


@pytest.mark.parametrize("cut", range(len(SCRIPT) + 1))
def test_resume_equals_uninterrupted(cut):
    first = AEPOState(low=0.5, high=1.0)
    head = [first.update(h) for h in SCRIPT[:cut]]
    saved = json.loads(json.dumps(first.state_dict()))
    second = AEPOState(low=0.5, high=1.0)
    second.load_state_dict(saved)
    assert head + [second.update(h) for h in SCRIPT[cut:]] == EXPECTED


def test_drop_negative_samples_and_fraction():
    adv_B = torch.tensor([1.0, -0.5, 0.0, -2.0])
    mask_BT = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    out, frac = drop_negative_samples(adv_B, mask_BT)
    assert out.tolist() == [[True, True, False], [False] * 3, [True, False, False], [False] * 3]
    assert frac == 0.5
    assert out.dtype == torch.bool and mask_BT[1].all()          # the input is not modified


def test_config_batch_mode_validates_the_band():
    cfg = load_config(None, ["algo.entropy_mask_level=batch", "algo.entropy_low=0.5", "algo.entropy_high=1.0"])
    assert cfg.algo.entropy_mask_level == "batch" and cfg.algo.entropy_high == 1.0
    with pytest.raises(ConfigError, match="entropy_low"):
        load_config(None, ["algo.entropy_mask_level=batch", "algo.entropy_low=1.5", "algo.entropy_high=1.0"])
    with pytest.raises(ConfigError, match="entropy_high"):
        load_config(None, ["algo.entropy_mask_level=batch", "algo.entropy_high=1.0",
                           "algo.entropy_mask_threshold=0.7"])
