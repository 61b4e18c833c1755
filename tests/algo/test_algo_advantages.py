import math
import statistics

import pytest
import torch

from longrl.algo import ADVANTAGE_ESTIMATORS, compute_advantages, register_advantage_estimator


def test_registry_names_match_config():
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "drgrpo", "batch_std", "task_std"}
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("grpo")(lambda *a: None)


def test_grpo_hand_computed():
    # group "a" = [1, 0, 0, 1]: mean 0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.577350
    #   adv = +-0.5 / 0.577350 = +-0.866025 ; group "b" = [1] (a group of one) -> 0
    adv = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0]), ["a", "a", "a", "a", "b"], eps=0.0)
    s = 0.5 / math.sqrt(1 / 3)
    torch.testing.assert_close(adv, torch.tensor([s, -s, -s, s, 0.0]))


def test_drgrpo_hand_computed():
    # no std: r - mean = +-0.5 ; group of one -> 0
    adv = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3]), [0, 0, 0, 0, 1], mode="drgrpo")
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0]))


def test_batch_std_hand_computed():
    # groups [1, 0] and [1, 1]: centred [0.5, -0.5, 0, 0]
    # batch mean 0.75, squared deviations 0.0625 + 0.5625 + 0.0625 + 0.0625 = 0.75, /3 -> var 0.25, std 0.5
    adv = compute_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), [0, 0, 1, 1], mode="batch_std", eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_task_std_hand_computed():
    # qa rewards [1, 0, .5, .5]: mean .5, sq dev .25+.25+0+0 = .5, /3 -> std 0.408248
    #   group g1 [1, 0] -> +-0.5 / 0.408248 = +-1.224745 ; group g2 [.5, .5] -> 0
    # mcq rewards [1, 0]: std sqrt(.5) = 0.707107 -> group g3 +-0.5 / 0.707107 = +-0.707107
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 1.0, 0.0])
    adv = compute_advantages(rewards, ["g1", "g1", "g2", "g2", "g3", "g3"], mode="task_std", eps=0.0,
                             task_ids_N=["qa", "qa", "qa", "qa", "mcq", "mcq"])
    a, b = 0.5 / math.sqrt(0.5 / 3), 0.5 / math.sqrt(0.5)
    torch.testing.assert_close(adv, torch.tensor([a, -a, 0.0, 0.0, b, -b]))


def _loop_reference(rewards, groups, tasks, mode, eps):
    """Plain-Python reference: statistics.stdev is the unbiased std."""
    by_group, by_task = {}, {}
    for r, g, t in zip(rewards, groups, tasks):
        by_group.setdefault(g, []).append(r)
        by_task.setdefault(t, []).append(r)
    out = []
    for r, g, t in zip(rewards, groups, tasks):
        vals = by_group[g]
        if len(vals) == 1:
            out.append(0.0)
            continue
        centred = r - statistics.fmean(vals)
        if mode == "drgrpo":
            out.append(centred)
            continue
        pool = {"grpo": vals, "batch_std": rewards, "task_std": by_task[t]}[mode]
        std = statistics.stdev(pool) if len(pool) > 1 else 0.0
        out.append(centred / (std + eps))
    return out


@pytest.mark.parametrize("mode", ["grpo", "drgrpo", "batch_std", "task_std"])
def test_vectorised_matches_loop(mode):
    gen = torch.Generator().manual_seed(0)
    sizes = [1, 2, 4, 4, 3, 8, 1, 5]
    groups = [f"p{i}" for i, n in enumerate(sizes) for _ in range(n)]
    tasks = [("qa", "numeric", "mcq")[i % 3] for i, n in enumerate(sizes) for _ in range(n)]
    rewards = torch.randint(0, 3, (len(groups),), generator=gen).double() / 2
    adv = compute_advantages(rewards, groups, mode=mode, eps=1e-6, task_ids_N=tasks)
    ref = _loop_reference(rewards.tolist(), groups, tasks, mode, 1e-6)
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_tensor_ids_equal_list_ids():
    rewards = torch.tensor([0.2, 0.9, 0.4, 0.4, 1.0])
    a = compute_advantages(rewards, torch.tensor([7, 7, 3, 3, 3]))
    b = compute_advantages(rewards, ["x", "x", "y", "y", "y"])
    torch.testing.assert_close(a, b)


def test_constant_group_and_zero_eps_give_zero_not_nan():
    adv = compute_advantages(torch.tensor([1.0, 1.0, 0.0]), [0, 0, 1], eps=0.0)
    assert torch.equal(adv, torch.zeros(3))


def test_bool_rewards_are_accepted():
    adv = compute_advantages(torch.tensor([True, False]), [0, 0], mode="drgrpo")
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rewards_rejected(bad):
    with pytest.raises(ValueError, match=r"non-finite.*indices \[2\]"):
        compute_advantages(torch.tensor([1.0, 0.0, bad]), [0, 0, 0])


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown advantage mode"):
        compute_advantages(torch.zeros(2), [0, 0], mode="ppo")
    with pytest.raises(ValueError, match="needs task_ids_N"):
        compute_advantages(torch.zeros(2), [0, 0], mode="task_std")
    with pytest.raises(ValueError, match="group ids"):
        compute_advantages(torch.zeros(3), [0, 0])
