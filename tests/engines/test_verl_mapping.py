"""The longrl -> verl mapping as pure code (core environment, no verl needed)."""

from __future__ import annotations

import pytest

from longrl.config import ConfigError, load_config
from longrl.engines.verl.mapping import PhaseJob, phase_overrides

ACCEPT = "verl.accept=[rl.dynamic_sampling.max_rounds]"


def job(**kw) -> PhaseJob:
    base = dict(name="phase1", model_path="/m", train_file="/d/train.parquet", run_dir="/r", steps=7,
                max_input_tokens=20000, max_output_tokens=10000, temperature=0.7, longrl_config="/r/longrl.yaml")
    return PhaseJob(**(base | kw))


def as_dict(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


def test_32b_recipe_carries_the_official_script_numbers():
    o = as_dict(phase_overrides(load_config("configs/qwenlong_l1_32b.yaml"), job()))
    expected = {  # Tongyi-Zhiwen/Qwen-Doc QwenLong-L1/scripts/rl_4nodes_dapo.sh
        "data.train_batch_size": "128", "data.gen_batch_size": "384", "actor_rollout_ref.rollout.n": "8",
        "actor_rollout_ref.actor.ppo_mini_batch_size": "32", "actor_rollout_ref.actor.optim.lr": "2e-06",
        "actor_rollout_ref.actor.clip_ratio_low": "0.2", "actor_rollout_ref.actor.clip_ratio_high": "0.2",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": "10000",
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size": "8",
        "actor_rollout_ref.rollout.tensor_model_parallel_size": "4",
        "actor_rollout_ref.rollout.gpu_memory_utilization": "0.5", "actor_rollout_ref.rollout.temperature": "0.7",
        "actor_rollout_ref.rollout.top_p": "0.95", "actor_rollout_ref.actor.fsdp_config.param_offload": "true",
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": "true", "trainer.nnodes": "4",
        "trainer.n_gpus_per_node": "8", "trainer.save_freq": "5", "trainer.test_freq": "5",
        "algorithm.filter_groups.enable": "true", "algorithm.filter_groups.metric": "acc",
        "algorithm.filter_groups.max_num_gen_batches": "10", "reward.reward_manager.name": "dapo",
        "+reward.reward_kwargs.overlong_buffer_cfg.len": "1000", "data.max_response_length": "10000",
        "actor_rollout_ref.actor.loss_agg_mode": "token-mean", "data.max_prompt_length": "20000",
    }
    assert {k: o.get(k) for k in expected} == expected


@pytest.mark.parametrize("override, key", [
    ("algo.ratio_cap=3.0", "algo.ratio_cap"),
    ("rl.optim.schedule=linear", "rl.optim.schedule"),
    ("algo.eps=1e-4", "algo.eps"),
])
def test_inexpressible_field_is_an_error_naming_it(override, key):
    cfg = load_config("configs/demo_cpu.yaml", [ACCEPT, override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        phase_overrides(cfg, job())


AEPO_BATCH = ["algo.entropy_mask_level=batch", "algo.entropy_low=0.3", "algo.entropy_high=0.9"]


@pytest.mark.parametrize("aepo", [AEPO_BATCH, ["algo.entropy_mask_threshold=0.5"]])
def test_aepo_with_a_sequence_mean_loss_is_an_error_naming_loss_agg(aepo):
    cfg = load_config("configs/demo_cpu.yaml", [ACCEPT, "algo.loss_agg=seq-mean-token-mean", *aepo])
    with pytest.raises(ConfigError, match=r"algo\.loss_agg.*AEPO"):
        phase_overrides(cfg, job())
    phase_overrides(load_config("configs/demo_cpu.yaml", [ACCEPT, "algo.loss_agg=seq-mean-token-mean"]), job())


def test_inexpressible_config_stops_the_verl_pipeline_before_any_stage(tmp_path, capsys):
    from longrl.cli import main

    rc = main(["pipeline", "configs/demo_cpu.yaml", ACCEPT, "algo.entropy_mask_threshold=0.5",
               "algo.loss_agg=seq-mean-token-mean", f"output_dir={tmp_path}", "--engine", "verl", "--dry-run"])
    captured = capsys.readouterr()
    assert rc == 2 and "algo.loss_agg" in captured.err
    assert "# stage" not in captured.out  # nothing planned (or, without --dry-run, run) before the error


def test_task_std_and_aepo_select_longrl_trainer_and_carry_the_band():
    plain = as_dict(phase_overrides(load_config("configs/demo_cpu.yaml", [ACCEPT]), job()))
    assert "trainer.v1.trainer_mode" not in plain and not any(k.startswith("+longrl.") for k in plain)
    task = as_dict(phase_overrides(load_config("configs/demo_cpu.yaml", [ACCEPT, "algo.advantage=task_std"]), job()))
    assert task["algorithm.adv_estimator"] == "longrl_task_std" and task["trainer.v1.trainer_mode"] == "longrl"
    assert not any(k.startswith("+longrl.aepo") for k in task)
    band = as_dict(phase_overrides(load_config("configs/demo_cpu.yaml", [ACCEPT, *AEPO_BATCH]), job()))
    assert band["trainer.v1.trainer_mode"] == "longrl" and band["algorithm.adv_estimator"] == "longrl_grpo"
    assert {k: band[k] for k in band if k.startswith("+longrl.aepo.")} == {
        "+longrl.aepo.level": "batch", "+longrl.aepo.threshold": "0.0", "+longrl.aepo.low": "0.3",
        "+longrl.aepo.high": "0.9"}
    with pytest.raises(ConfigError, match=r"verl\.extra_overrides"):
        phase_overrides(load_config("configs/demo_cpu.yaml", [ACCEPT, "algo.advantage=task_std",
                                                              "verl.extra_overrides=[trainer.v1.trainer_mode=sync]"]), job())
    tok = as_dict(phase_overrides(load_config("configs/demo_cpu.yaml", [ACCEPT, "algo.entropy_mask_threshold=0.5",
                                                                       "algo.entropy_mask_level=sequence"]), job()))
    assert (tok["+longrl.aepo.level"], tok["+longrl.aepo.threshold"]) == ("sequence", "0.5")


def test_uncapped_dynamic_sampling_needs_explicit_acceptance():
    with pytest.raises(ConfigError, match=r"rl\.dynamic_sampling\.max_rounds"):
        phase_overrides(load_config("configs/demo_cpu.yaml"), job())
    with pytest.raises(ConfigError, match=r"verl\.accept"):
        phase_overrides(load_config("configs/demo_cpu.yaml", ["verl.accept=[algo.ratio_cap]"]), job())
    o = as_dict(phase_overrides(load_config("configs/demo_cpu.yaml", ["rl.dynamic_sampling.enabled=false"]), job()))
    assert o["algorithm.filter_groups.enable"] == "false"


def test_demo_mapping_follows_the_config():
    cfg = load_config("configs/demo_cpu.yaml", [ACCEPT, "algo.dual_clip=3.0", "algo.kl_coef=0.01",
                                                "reward.overlong.enabled=false", "save_every=0"])
    o = as_dict(phase_overrides(cfg, job(steps=120, temperature=1.0)))
    assert o["actor_rollout_ref.actor.policy_loss.loss_mode"] == "longrl_dual_clip"
    assert o["actor_rollout_ref.actor.clip_ratio_c"] == "3.0"
    assert (o["actor_rollout_ref.actor.use_kl_loss"], o["actor_rollout_ref.actor.kl_loss_type"]) == ("true", "low_var_kl")
    assert o["reward.reward_manager.name"] == "naive" and "+reward.reward_kwargs.max_resp_len" not in o
    assert o["trainer.save_freq"] == "120" and o["trainer.total_training_steps"] == "120"
    assert o["actor_rollout_ref.actor.clip_ratio_high"] == "0.28" and o["algorithm.adv_estimator"] == "longrl_grpo"
    assert o["actor_rollout_ref.actor.fsdp_config.model_dtype"] == "fp32"


def test_dry_run_cli_prints_every_phase_command_and_file(tmp_path, capsys):
    from longrl.cli import main

    rc = main(["pipeline", "configs/qwenlong_l1_32b.yaml", f"output_dir={tmp_path}", "--engine", "verl", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    trains = [line for line in out.splitlines() if "verl.trainer.main_ppo" in line]
    merges = [line for line in out.splitlines() if "verl.model_merger merge" in line]
    assert len(trains) == len(merges) == 2
    assert f"actor_rollout_ref.model.path={tmp_path}/stages/phase1/final" in trains[1]  # hand-over
    assert "data.max_prompt_length=60000" in trains[1] and "data.max_prompt_length=20000" in trains[0]
    assert f"{tmp_path}/stages/phase2/verl/train.parquet" in out and "longrl.yaml" in out
    assert not (tmp_path / "stages").exists()  # nothing run, nothing written


def test_dry_run_needs_the_verl_engine(tmp_path, capsys):
    from longrl.cli import main

    assert main(["pipeline", "configs/demo_cpu.yaml", f"output_dir={tmp_path}", "--dry-run"]) == 2
    assert "--engine verl" in capsys.readouterr().err
