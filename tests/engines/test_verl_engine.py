"""The verl engine against the real verl 0.9.1 package (marker ``verl``: run by ``make test-verl`` in the
environment ``.ci/venv-verl.sh`` makes; never skipped -- without verl these tests fail).

verl's trainer cannot run on CPU (no CPU platform, no HF rollout), so ``test_phase_orchestration_*`` replaces
the verl launch -- and only it -- by a stand-in that writes what verl writes (checkpoint tracker and
step folders, rollout dumps through verl's own dump code, the merged HF model), and the AEPO checkpoint
test stands in for the FSDP actor worker group. Everything else here is verl's own code: its hydra
config and validation, reward manager, ``compute_advantage``, loss registry and actor ``ppo_loss``, its
trainer's tokenizer / dataloader set-up and TransferQueue (on a local CPU Ray).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import verl
from hydra import compose, initialize_config_dir
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils.config import omega_conf_to_dataclass, validate_config

import longrl.engines.verl.plugins  # noqa: F401  (what external_lib imports in verl's workers)
from longrl.algo import aggregate, clipped_surrogate, compute_advantages
from longrl.config import load_config
from longrl.engines.verl.mapping import PhaseJob, phase_overrides

pytestmark = pytest.mark.verl
ACCEPT = "verl.accept=[rl.dynamic_sampling.max_rounds]"
VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


def compose_verl(overrides: list[str]):
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def phase_job(tmp_path: Path, cfg_file: str, **kw) -> PhaseJob:
    base = dict(name="phase1", model_path=str(tmp_path / "model"), train_file=str(tmp_path / "train.parquet"),
                run_dir=str(tmp_path / "verl"), steps=3, max_input_tokens=512, max_output_tokens=64,
                temperature=1.0, longrl_config=cfg_file)
    return PhaseJob(**(base | kw))


def write_cfg(tmp_path: Path, config: str, overrides: list[str]):
    cfg = load_config(config, overrides)
    f = tmp_path / "longrl.yaml"
    f.write_text(cfg.to_yaml())
    return cfg, str(f)


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("config, extra", [("configs/demo_cpu.yaml", [ACCEPT]), ("configs/qwenlong_l1_32b.yaml", [])])
def test_generated_config_composes_and_validates_with_verl_schema(tmp_path, config, extra):
    cfg, cfg_file = write_cfg(tmp_path, config, extra)
    job = phase_job(tmp_path, cfg_file, max_input_tokens=cfg.curriculum.phases[0].max_input_tokens,
                    max_output_tokens=cfg.curriculum.phases[0].max_output_tokens or cfg.rollout.max_new_tokens)
    vc = compose_verl(phase_overrides(cfg, job))
    validate_config(vc, need_reference_policy(vc), need_critic(vc))
    algo = omega_conf_to_dataclass(vc.algorithm)
    rollout = omega_conf_to_dataclass(vc.actor_rollout_ref.rollout)
    assert (rollout.n, rollout.temperature, rollout.top_p) == (cfg.rollout.group_size, 1.0, cfg.rollout.top_p)
    assert algo.filter_groups.enable == cfg.rl.dynamic_sampling.enabled
    assert need_reference_policy(vc) == (cfg.algo.kl_coef > 0)
    # what verl looks up by name resolves to longrl's pieces
    assert core_algos.get_adv_estimator_fn(vc.algorithm.adv_estimator).__name__ == "longrl_grpo_advantage"
    assert core_algos.get_policy_loss_fn(vc.actor_rollout_ref.actor.policy_loss.loss_mode) is not None
    fn = get_custom_reward_fn(vc)
    out = fn(data_source="synthetic", solution_str="<think>x</think> Therefore, the answer is Port Amber.",
             ground_truth="Port Amber", extra_info={"task": "qa", "answers": ["Port Amber"], "question": "q?"})
    assert out["score"] == 1.0 and out["acc"] == 1.0
    assert vc.data.max_prompt_length == job.max_input_tokens and vc.trainer.rollout_data_dir == job.rollout_dir


# ---------------------------------------------------------------------------- reward
DOCUMENT = ("The capital of Veridia is Port Amber, a harbour city of " + " ".join(f"w{i}" for i in range(60))
            + ". The river Lumen flows through Norwick.")
RESPONSES = [
    ("<think>The text says so.</think> Therefore, the answer is Port Amber.", "Port Amber", "qa"),
    ("<think>hmm</think> Therefore, the answer is Norwick.", "Port Amber", "qa"),
    ("no think tag. Therefore, the answer is Port Amber.", "Port Amber", "qa"),
    ("<think>sum</think> Therefore, the answer is 42.0.", "42", "numeric"),
    ("<think>options</think> Therefore, the answer is (B).", "B", "mcq"),
    ("<think>paste</think> Therefore, the answer is " + " ".join(DOCUMENT.split()[:45]) + ".", "Port Amber", "qa"),
]


def test_reward_inside_verl_reward_manager_equals_longrl(tmp_path, tiny_tokenizer):
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls

    from longrl.algo.shaping import overlong_penalty
    from longrl.rewards.hybrid import HybridReward, RewardItem

    cfg, cfg_file = write_cfg(tmp_path, "configs/demo_cpu.yaml",
                              [ACCEPT, "rollout.max_new_tokens=400", "reward.overlong.buffer_tokens=390"])
    vc = compose_verl(phase_overrides(cfg, phase_job(tmp_path, cfg_file, max_output_tokens=400)))
    manager = get_reward_manager_cls(vc.reward.reward_manager.name)(vc, tiny_tokenizer, get_custom_reward_fn(vc))
    hybrid = HybridReward(cfg.reward, None)
    scores = []
    for text, gold, task in RESPONSES:
        resp = tiny_tokenizer(text, add_special_tokens=False)["input_ids"][:400]
        prompt = tiny_tokenizer("question?", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + resp])
        data = DataProto.from_dict(
            tensors={"prompts": torch.tensor([prompt]), "responses": torch.tensor([resp]), "input_ids": ids,
                     "attention_mask": torch.ones_like(ids)},
            non_tensors={"data_source": np.array(["synthetic"], dtype=object),
                         "reward_model": np.array([{"ground_truth": gold, "style": "rule"}], dtype=object),
                         "extra_info": np.array([{"task": task, "answers": [gold], "question": "question?",
                                                  "document": DOCUMENT}], dtype=object)})
        got = manager.loop.run_until_complete(manager.run_single(data))  # the loop verl bound at init
        decoded = tiny_tokenizer.decode(resp, skip_special_tokens=True)
        (want,) = hybrid.score_batch([RewardItem(task, "question?", decoded, [gold], DOCUMENT)])
        shaped = want.score + float(overlong_penalty([len(resp)], 400, cfg.reward.overlong.buffer_tokens,
                                                     cfg.reward.overlong.penalty_factor)[0])
        assert got["reward_score"] == pytest.approx(shaped), text
        assert got["reward_extra_info"]["acc"] == float(want.acc)
        scores.append(got["reward_score"])
    assert scores[-1] <= 0.0  # the pasted document chunk contains the gold answer and earns nothing
    assert any(0 < x < 1 for x in scores)  # the overlong buffer shaped some score


# ---------------------------------------------------------------------------- advantages and loss
@pytest.mark.parametrize("name, mode", [("longrl_grpo", "grpo"), ("longrl_drgrpo", "drgrpo"),
                                        ("longrl_batch_std", "batch_std")])
def test_registered_estimator_through_verl_compute_advantage(name, mode):
    g = torch.Generator().manual_seed(0)
    uids = np.array(["a"] * 4 + ["b"] * 4 + ["c"], dtype=object)  # "c": a group of one
    scores = torch.rand(9, generator=g).round()
    mask = (torch.arange(6)[None, :] < torch.randint(2, 7, (9, 1), generator=g)).float()
    rewards = torch.zeros(9, 6)
    rewards[torch.arange(9), mask.sum(-1).long() - 1] = scores
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": uids})
    out = compute_advantage(data, adv_estimator=name, config=omega_conf_to_dataclass(compose_verl([]).algorithm))
    want = compute_advantages(scores, list(uids), mode=mode, eps=1e-6)[:, None] * mask
    torch.testing.assert_close(out.batch["advantages"], want)
    assert float(out.batch["advantages"][-1].abs().sum()) == 0.0  # longrl: a lone rollout carries no signal


@pytest.mark.parametrize("mode, agg, dual", [("longrl", "token-mean", 0.0), ("longrl_dual_clip", "token-mean", 3.0),
                                             ("longrl", "seq-mean-token-mean", 0.0)])
def test_registered_loss_through_verl_dispatch(mode, agg, dual):
    g = torch.Generator().manual_seed(1)
    B, T = 6, 8
    old = -torch.rand(B, T, generator=g)
    new = (old + 0.5 * torch.randn(B, T, generator=g)).requires_grad_()
    adv = torch.randn(B, generator=g)[:, None].expand(B, T).contiguous()
    mask = (torch.arange(T)[None, :] < torch.randint(1, T + 1, (B, 1), generator=g))
    actor = omega_conf_to_dataclass(compose_verl([
        "actor_rollout_ref.actor.use_dynamic_bsz=true", "actor_rollout_ref.actor.clip_ratio_low=0.2",
        "actor_rollout_ref.actor.clip_ratio_high=0.28",
        f"actor_rollout_ref.actor.clip_ratio_c={dual or 3.0}"]).actor_rollout_ref.actor)
    actor.global_batch_info.update(dp_size=1, batch_num_tokens=int(mask.sum()) + 5, global_batch_size=B + 2,
                                   loss_scale_factor=None)
    loss, _ = core_algos.get_policy_loss_fn(mode)(old_log_prob=old, log_prob=new, advantages=adv,
                                                  response_mask=mask, loss_agg_mode=agg, config=actor)
    ratio = torch.where(mask, new - old, 0.0).exp()
    want = aggregate(clipped_surrogate(ratio, adv, 0.2, 0.28, dual_clip=dual), mask, agg,
                     num_tokens=int(mask.sum()) + 5, num_seqs=B + 2)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert new.grad is not None and bool(new.grad.abs().sum() > 0)


# ---------------------------------------------------------------------------- task-level std and AEPO
TASK_MIX = ["qa", "numeric", "mcq", "qa", "numeric", "qa"]


def task_samples():
    from longrl.data.records import DocQASample

    return [DocQASample(f"s{i}", "docmath" if task == "numeric" else "synthetic", task, f"Document {i} says {i}.",
                        f"What does document {i} say?", [str(i)]) for i, task in enumerate(TASK_MIX)]


def longrl_trainer(tmp_path, model_dir, overrides: list[str], samples=None):
    """The trainer verl's TaskRunnerV1 would build for the composed phase config (``get_trainer_cls`` by
    ``trainer.v1.trainer_mode``), with verl's own tokenizer and dataloader over longrl's phase parquet;
    its worker groups, vLLM servers and TransferQueue are not built (GPU / Ray)."""
    from verl.trainer.ppo.v1 import get_trainer_cls

    from longrl.data.readers import write_verl_parquet

    samples = samples or task_samples()
    write_verl_parquet(samples, tmp_path / "train.parquet")
    cfg, cfg_file = write_cfg(tmp_path, "configs/demo_cpu.yaml",
                              [ACCEPT, "rl.dynamic_sampling.enabled=false", f"rl.prompts_per_step={len(samples)}",
                               "rl.mini_batches=1", "rollout.group_size=2",
                               "verl.extra_overrides=[data.dataloader_num_workers=0]", *overrides])
    vc = compose_verl(phase_overrides(cfg, phase_job(tmp_path, cfg_file, model_path=str(model_dir))))
    validate_config(vc, need_reference_policy(vc), need_critic(vc))
    trainer = get_trainer_cls(vc.trainer.v1.trainer_mode)(config=vc)
    trainer._init_tokenizer()
    trainer._init_dataloader()
    trainer.global_steps = 1
    return trainer, vc, samples


def rollouts(uids, group: int, seed: int, pad: int = 1):
    """A DataProto as verl's ``_compute_advantage`` builds it: ``group`` rollouts per uid (0/1 scores on
    the last response token) plus ``pad`` synthetic padding rows (verl's ``pad<hex>`` uid, empty mask)."""
    g = torch.Generator().manual_seed(seed)
    index = [u for u in uids for _ in range(group)]
    n, T = len(index), 7
    scores = torch.rand(n, generator=g).round()
    len_N = torch.randint(2, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None, :] < len_N[:, None]).float()
    rewards = torch.zeros(n, T)
    rewards[torch.arange(n), len_N - 1] = scores
    mask = torch.cat([mask, torch.zeros(pad, T)])
    rewards = torch.cat([rewards, torch.zeros(pad, T)])
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": np.array(index + ["pad0"] * pad, dtype=object)})
    return data, scores, index


def test_task_std_through_verl_dataloader_and_compute_advantage(tmp_path, tiny_model_dir):
    """The task of each prompt reaches ``longrl_task_std`` through longrl's trainer: verl's dataloader
    reads longrl's parquet, ``_fetch_one_gen_batch`` gives uids and records tasks, verl's
    ``compute_advantage`` calls the estimator; the numbers equal ``compute_advantages(mode="task_std")``
    with the samples' own tasks."""
    from verl.utils import tensordict_utils as tu

    from longrl.engines.verl.trainer import LongrlTrainer

    trainer, vc, samples = longrl_trainer(tmp_path, tiny_model_dir, ["algo.advantage=task_std"])
    assert isinstance(trainer, LongrlTrainer) and trainer.trainer_mode == "sync"
    assert vc.algorithm.adv_estimator == "longrl_task_std"
    batch = trainer._fetch_one_gen_batch()
    uids = tu.get(batch, "uid")
    by_uid = dict(zip(uids, samples, strict=True))  # data.shuffle=false: parquet order
    data, scores, index = rollouts(uids, group=2, seed=3)
    out = compute_advantage(data, adv_estimator=vc.algorithm.adv_estimator, config=vc.algorithm)
    real = len(index)
    want = compute_advantages(scores, index, mode="task_std", eps=1e-6, task_ids_N=[by_uid[u].task for u in index])
    torch.testing.assert_close(out.batch["advantages"][:real], want[:, None] * data.batch["response_mask"][:real])
    assert float(out.batch["advantages"][real:].abs().sum()) == 0.0  # verl's padding row: no part, no signal
    grpo_like = compute_advantages(scores, index, mode="batch_std", eps=1e-6)
    assert not torch.allclose(want, grpo_like)  # the per-task stds differ from the batch's


def test_task_std_without_longrl_trainer_is_an_error_naming_the_trainer_mode():
    data, _, _ = rollouts(["never-drawn-a", "never-drawn-b"], group=2, seed=4)
    with pytest.raises(LookupError, match=r"trainer\.v1\.trainer_mode=longrl"):
        compute_advantage(data, adv_estimator="longrl_task_std", config=omega_conf_to_dataclass(compose_verl([]).algorithm))


AEPO_BAND = ["algo.entropy_mask_level=batch", "algo.entropy_low=0.3", "algo.entropy_high=0.9"]


@pytest.fixture(scope="module")
def transfer_queue():
    """verl's TransferQueue (controller + one storage unit) on a local CPU Ray, as TaskRunnerV1 starts it."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()
    ray.shutdown()


def nested(rows_BT, len_B):
    return torch.nested.as_nested_tensor([r[:n] for r, n in zip(rows_BT, len_B, strict=True)], layout=torch.jagged)


def test_aepo_in_longrl_trainer_step_on_verl_transfer_queue(tmp_path, tiny_model_dir, transfer_queue):
    """verl's ``_compute_advantage`` (through longrl's trainer) on the TransferQueue fields verl's rollout and
    old-log-prob steps leave there: the advantages are longrl's, the ``response_mask`` / ``loss_mask`` the
    actor reads carry the own trainer's AEPO rule, step after step across the hysteresis band, and verl's
    actor loss on them equals longrl's token-mean loss with the AEPO mask (dropped tokens out of the
    denominator). The rollout and old-log-prob steps themselves need GPUs: their outputs are put directly."""
    from tensordict import NonTensorData, NonTensorStack, TensorDict
    from transfer_queue import KVBatchMeta
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    from longrl.algo.aepo import AEPOState, drop_negative_samples

    tq = transfer_queue
    trainer, vc, _ = longrl_trainer(tmp_path, tiny_model_dir, AEPO_BAND)
    actor_cfg = omega_conf_to_dataclass(vc.actor_rollout_ref.actor)
    assert trainer.aepo is not None and (trainer.aepo.state.low, trainer.aepo.state.high) == (0.3, 0.9)
    uids = tu.get(trainer._fetch_one_gen_batch(), "uid")
    own = AEPOState(0.3, 0.9)
    seen = []
    for step, level in enumerate([1.2, 0.6, 0.1, 0.6, 1.0]):  # above high, band, below low, band, above
        data, scores, index = rollouts(uids, group=2, seed=10 + step, pad=0)
        mask_BT = data.batch["response_mask"]
        len_B = mask_BT.sum(-1).long().tolist()
        g = torch.Generator().manual_seed(step)
        ent_BT = level + 0.05 * torch.randn(mask_BT.shape, generator=g)
        keys = [f"{u}_{k % 2}_0" for k, u in enumerate(index)]
        old_BT = -torch.rand(mask_BT.shape, generator=g)
        fields = TensorDict({
            "uid": NonTensorStack.from_list([NonTensorData(u) for u in index]),
            "prompts": nested(torch.full((len(keys), 3), 5), [3] * len(keys)),
            "responses": nested(torch.full(mask_BT.shape, 7), len_B),
            "response_mask": nested(mask_BT.long(), len_B), "loss_mask": nested(mask_BT.long(), len_B),
            "rm_scores": nested(data.batch["token_level_rewards"], len_B),
            "old_log_probs": nested(old_BT, len_B), "entropy": nested(ent_BT, len_B)}, batch_size=len(keys))
        tq.kv_batch_put(keys=keys, partition_id="train", fields=fields, tags=[{} for _ in keys])
        metrics: dict = {}
        trainer._compute_advantage(KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train"), metrics)
        back = tq.kv_batch_get(keys=keys, partition_id="train",
                               select_fields=["advantages", "response_mask", "loss_mask"]).to_padded_tensor()
        adv_N = compute_advantages(scores, index, mode="grpo", eps=1e-6)
        torch.testing.assert_close(back["advantages"], adv_N[:, None] * mask_BT)
        active = mask_BT.bool()
        on = own.update(float(ent_BT[active].sum()) / int(active.sum()))  # the own trainer's batch rule
        want_BT = drop_negative_samples(adv_N, mask_BT)[0] if on else mask_BT
        assert torch.equal(back["response_mask"].float(), want_BT) and torch.equal(back["loss_mask"].float(), want_BT)
        assert metrics["aepo/active"] == float(on)
        assert metrics["aepo/dropped_frac"] == (pytest.approx(float((adv_N < 0).float().mean())) if on else 0.0)
        # the actor's loss on what it reads back: verl's ppo_loss with the global token count verl's FSDP
        # engine takes from loss_mask (one rank, the whole step as one mini-batch) = longrl's loss with the mask
        micro = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=[
            "prompts", "responses", "response_mask", "loss_mask", "old_log_probs", "advantages"])
        tu.assign_non_tensor(micro, dp_size=1, batch_num_tokens=int(micro["loss_mask"].values().sum()),
                             global_batch_size=len(keys))
        new_BT = old_BT + 0.3 * torch.randn(mask_BT.shape, generator=g)
        seq_lp = [torch.cat([torch.zeros(2), new_BT[b, :n], torch.zeros(1)]) for b, n in enumerate(len_B)]
        loss, _ = ppo_loss(actor_cfg, {"log_probs": torch.nested.as_nested_tensor(seq_lp, layout=torch.jagged)},
                           micro)
        ratio_BT = torch.where(want_BT.bool(), new_BT - old_BT, 0.0).exp()
        want_loss = aggregate(clipped_surrogate(ratio_BT, adv_N[:, None], 0.2, 0.28), want_BT, "token-mean")
        torch.testing.assert_close(loss, want_loss)
        seen.append(on)
        tq.kv_clear(keys=keys, partition_id="train")
    assert seen == [True, True, False, False, True]


class ActorWorkerGroupStandIn:
    """Stands in for verl's FSDP actor worker group (Ray workers on GPUs): records the checkpoint calls and
    makes the folder verl's checkpoint manager would."""

    def __init__(self):
        self.calls = []

    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        self.calls.append(("save", local_path, global_step))

    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        self.calls.append(("load", local_path))


def test_aepo_state_survives_verl_checkpoint_and_resume(tmp_path, tiny_model_dir):
    trainer, vc, _ = longrl_trainer(tmp_path, tiny_model_dir, AEPO_BAND)
    trainer.actor_rollout_wg = ActorWorkerGroupStandIn()
    trainer.aepo.state.update(1.5)  # above high: dropping
    trainer.global_steps = 2
    trainer._save_checkpoint()
    ckpt = Path(vc.trainer.default_local_dir)
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert json.loads((ckpt / "global_step_2" / "longrl_aepo.json").read_text()) == {"active": True}
    resumed, _, _ = longrl_trainer(tmp_path, tiny_model_dir, AEPO_BAND)
    resumed.actor_rollout_wg = ActorWorkerGroupStandIn()
    assert resumed.aepo.state.active is False
    resumed._load_checkpoint()
    assert resumed.global_steps == 2 and resumed.aepo.state.active is True
    assert resumed.actor_rollout_wg.calls == [("load", str(ckpt / "global_step_2" / "actor"))]


# ---------------------------------------------------------------------------- rollout dumps
def synth_samples(tokenizer, n: int, tokens: int, split: str):
    from longrl.data.synth import generate
    from longrl.data.tokens import count_prompt_tokens, token_counter

    samples = generate(n, tokens, 0, ["lookup"], split, token_counter(tokenizer))
    count_prompt_tokens(samples, tokenizer, workers=1)
    return samples


def answer(sample, right: bool) -> str:
    return f"<think>look</think> Therefore, the answer is {sample.answer if right else 'zzz qqq'}."


def write_dump_like_verl(dump_dir: Path, step: int, tokenizer, batch, correct: dict[str, bool], group: int):
    """verl's own dump code (PPOTrainer._write_generations) on decoded prompts and responses."""
    from longrl.data.prompt import chat_prompt_ids

    rows = [(s, k) for s in batch for k in range(group)]
    inputs = [tokenizer.decode(chat_prompt_ids(tokenizer, s), skip_special_tokens=True) for s, _ in rows]
    outputs = [answer(s, correct[s.id] and k % 2 == 0) for s, k in rows]
    scores = [1.0 if correct[s.id] and k % 2 == 0 else 0.0 for s, k in rows]
    PPOTrainer._write_generations(inputs, outputs, [s.answer for s, _ in rows], scores, {"uid": [s.id for s, _ in rows]},
                                  str(dump_dir), step)


def test_retrospective_selection_reads_verl_dump(tmp_path, tiny_tokenizer):
    from longrl.config import CurriculumConfig, PhaseConfig, RetrospectiveConfig
    from longrl.curriculum.samplers import CurriculumSampler
    from longrl.engines.verl.run import read_dumps, record_dumps

    samples = synth_samples(tiny_tokenizer, 16, 48, "train")
    lim = sorted(s.n_tokens for s in samples)[7]
    short, longer = [s for s in samples if s.n_tokens <= lim], [s for s in samples if s.n_tokens > lim]
    cur = CurriculumConfig(phases=[PhaseConfig(max_input_tokens=lim), PhaseConfig(max_input_tokens=10 ** 6)],
                           retrospective=RetrospectiveConfig(hard_threshold=0.6, fraction=0.5, cap=10))
    sampler = CurriculumSampler.from_config(short + longer, cur, 4, 0)
    batch = sampler.next_batch()
    correct = {s.id: i % 2 == 0 for i, s in enumerate(batch)}  # half the prompts: 1 of 2 rollouts right
    write_dump_like_verl(tmp_path / "rollouts", 1, tiny_tokenizer, batch, correct, group=2)
    cfg = load_config("configs/demo_cpu.yaml", [ACCEPT])
    counts = record_dumps(sampler, short + longer, read_dumps(tmp_path / "rollouts"), tiny_tokenizer, cfg, 64)
    assert counts == {"rows": 8, "matched": 8, "unmatched": 0, "ambiguous": 0}
    summary = sampler.advance()
    pool = {k.split("/", 1)[1] for k in sampler.pool.members}
    assert pool == {s.id for s in batch if not correct[s.id]}  # difficulty 1 kept, 0.5 < 0.6 dropped
    assert summary["retro/dropped_easy"] == 2


# ---------------------------------------------------------------------------- orchestration
class VerlStandIn:
    """Stands in for the two verl commands (GPU only): ``main_ppo`` writes what verl writes for the phase
    (per step: a rollout dump via verl's own code, a checkpoint folder and the tracker), optionally dying
    after ``die_after`` steps; ``model_merger`` writes the merged HF model (a copy of the phase's input)."""

    def __init__(self, tokenizer, die_after: int = 0):
        self.tokenizer, self.die_after, self.calls = tokenizer, die_after, []

    def __call__(self, cmd: list[str]) -> None:
        import pyarrow.parquet as pq

        from longrl.data.readers import _parse_verl

        self.calls.append(cmd)
        if cmd[2] == "verl.model_merger":
            src = Path(cmd[cmd.index("--local_dir") + 1]) / "hf_input"
            shutil.copytree(src.read_text(), cmd[cmd.index("--target_dir") + 1], dirs_exist_ok=True)
            return
        o = dict(a.lstrip("+").split("=", 1) for a in cmd[3:])
        rows = [_parse_verl(r, i, "", "train") for i, r in enumerate(pq.read_table(o["data.train_files"]).to_pylist())]
        bs, steps, n = int(o["data.gen_batch_size"]), int(o["trainer.total_training_steps"]), int(o["actor_rollout_ref.rollout.n"])
        ckpt = Path(o["trainer.default_local_dir"])
        start = int((ckpt / "latest_checkpointed_iteration.txt").read_text()) if (ckpt / "latest_checkpointed_iteration.txt").exists() else 0
        for step in range(start + 1, steps + 1):
            batch = rows[(step - 1) * bs: step * bs]
            correct = {s.id: zlib.crc32(s.id.encode()) % 3 == 0 for s in batch}
            write_dump_like_verl(Path(o["trainer.rollout_data_dir"]), step, self.tokenizer, batch, correct, n)
            actor = ckpt / f"global_step_{step}" / "actor"
            actor.mkdir(parents=True, exist_ok=True)
            (actor / "hf_input").write_text(o["actor_rollout_ref.model.path"])
            (ckpt / "latest_checkpointed_iteration.txt").write_text(str(step))
            if self.die_after and step == self.die_after:
                self.die_after = 0
                raise RuntimeError("stand-in: verl killed")


def orchestration_cfg(tmp_path, tiny_model_dir):
    return load_config("configs/demo_cpu.yaml", [
        ACCEPT, f"output_dir={tmp_path / 'run'}", f"model.path={tiny_model_dir}", "sft.enabled=false",
        "pipeline.stage_eval=false", "pipeline.synthetic.families=[lookup]",
        "pipeline.synthetic.train=[{target_tokens: 48, n: 12}, {target_tokens: 160, n: 12}]",
        "pipeline.synthetic.heldout=[]", "pipeline.synthetic.sft=[]", "rl.prompts_per_step=4", "rollout.group_size=2",
        "curriculum.phases=[{name: short, max_input_tokens: 300, steps: 2}, {name: long, max_input_tokens: 100000, steps: 3}]",
        "curriculum.retrospective={enabled: true, hard_threshold: 0.5, fraction: 0.5, cap: 10}"])


def test_phase_orchestration_end_to_end_with_verl_standin(tmp_path, tiny_model_dir, tiny_tokenizer):
    import pyarrow.parquet as pq

    from longrl.engines.verl.run import VerlPipeline

    cfg = orchestration_cfg(tmp_path, tiny_model_dir)
    stand_in = VerlStandIn(tiny_tokenizer)
    VerlPipeline(cfg, run_command=stand_in, out=lambda s: None, progress=False).run()
    run = Path(cfg.output_dir) / "stages"
    short = json.loads((run / "short" / "manifest.json").read_text())
    assert short["status"] == "complete" and short["output_model"] == str(run / "short" / "final")
    assert (run / "short" / "final" / "config.json").is_file()  # merged model handed over
    long_rows = pq.read_table(run / "long" / "verl" / "train.parquet").to_pylist()
    assert any(r["extra_info"]["n_tokens"] <= 300 for r in long_rows)  # retrospective samples from phase "short"
    assert short["curriculum"]["end"]["curriculum/phase"] == 0
    long_m = json.loads((run / "long" / "manifest.json").read_text())
    assert long_m["status"] == "complete" and long_m["input_model"] == short["output_model"]
    assert long_m["curriculum"]["transition"]["retro/pool_size"] > 0
    assert long_m["metrics"]["verl/dump_unmatched"] == 0
    # resume: everything complete -> no verl command runs again
    calls = len(stand_in.calls)
    VerlPipeline(cfg, run_command=stand_in, out=lambda s: None, progress=False).run()
    assert len(stand_in.calls) == calls


def test_killed_phase_restarts_from_verl_checkpoint(tmp_path, tiny_model_dir, tiny_tokenizer):
    from longrl.engines.verl.run import VerlPipeline

    cfg = orchestration_cfg(tmp_path, tiny_model_dir)
    stand_in = VerlStandIn(tiny_tokenizer, die_after=1)
    with pytest.raises(RuntimeError, match="killed"):
        VerlPipeline(cfg, run_command=stand_in, out=lambda s: None, progress=False).run()
    ckpt = Path(cfg.output_dir) / "stages" / "short" / "verl" / "checkpoints"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "1"
    VerlPipeline(cfg, run_command=stand_in, out=lambda s: None, progress=False).run()
    dumps = sorted(p.name for p in (ckpt.parent / "rollouts").glob("*.jsonl"))
    assert dumps == ["1.jsonl", "2.jsonl"]  # step 1 not redone: verl resumed after its checkpoint
    assert json.loads((ckpt.parent.parent / "manifest.json").read_text())["status"] == "complete"
    trains = [c for c in stand_in.calls if c[2] == "verl.trainer.main_ppo"]
    assert len(trains) == 3  # short (killed), short (resumed), long


def test_plugins_load_in_any_verl_process_through_the_entry_point():
    """A fresh process that imports only verl (as verl's Ray driver, its TaskRunner and workers do) has
    longrl's estimators, losses and trainer mode registered: verl loads the "verl.plugins" entry point
    longrl's pyproject declares."""
    import subprocess
    import sys

    code = ("import sys, verl; from verl.trainer.ppo import core_algos as c; "
            "assert 'longrl' not in sys.argv[0]; "
            "from verl.trainer.ppo.v1 import get_trainer_cls; "
            "print(sorted(k for k in c.ADV_ESTIMATOR_REGISTRY if k.startswith('longrl')), "
            "sorted(k for k in c.POLICY_LOSS_REGISTRY if k.startswith('longrl')), get_trainer_cls('longrl').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "auto"}, check=True).stdout
    assert ("['longrl_batch_std', 'longrl_drgrpo', 'longrl_grpo', 'longrl_task_std'] ['longrl', 'longrl_dual_clip'] "
            "LongrlTrainer") in out
