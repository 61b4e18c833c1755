"""longrl config -> verl hydra overrides for one curriculum phase (pure: no verl import, no I/O).

``phase_overrides(cfg, job)`` returns the ``key=value`` list given to ``python -m verl.trainer.main_ppo``.
Every longrl field is in exactly one of three places, and docs/verl.md has the table:

* mapped to verl keys here (:data:`MAPPED` documents which);
* consumed by longrl before the job (the phase parquet: lengths, mixture, retrospective pool; the
  reward function: judge, combine, think tag; the init / SFT / eval stages) or by the own trainer only
  (:data:`OWN_ONLY`: its rollout backends, kernels, progress bars);
* not expressible in verl 0.9.1: a non-default value raises :class:`~longrl.config.ConfigError` naming
  the field (:func:`check_expressible`). ``verl.accept`` may list the few fields in :data:`ACCEPTABLE`
  whose verl behaviour differs in a documented way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from longrl.config import Config, ConfigError

PLUGIN_MODULE = "longrl.engines.verl.plugins"
"""Imported in every verl worker (``actor_rollout_ref.model.external_lib``): registers the estimators
and policy losses below."""
REWARD_FILE = Path(__file__).with_name("reward.py")
"""verl's ``reward.custom_reward_function.path``: longrl's hybrid reward as ``compute_score``."""

ADVANTAGE_NAMES = {"grpo": "longrl_grpo", "drgrpo": "longrl_drgrpo", "batch_std": "longrl_batch_std",
                   "task_std": "longrl_task_std"}
"""longrl ``algo.advantage`` -> the estimator registered in verl (longrl's function, see plugins)."""
TRAINER_MODE = "longrl"
"""verl ``trainer.v1.trainer_mode`` of longrl's trainer (``longrl.engines.verl.trainer``): verl's sync
trainer plus the task book ``task_std`` reads and AEPO; set only when one of them is on."""
KL_TYPES = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}
"""longrl ``algo.kl_estimator`` -> verl ``kl_loss_type``."""
SCHEDULES = {"constant": "constant", "cosine": "cosine"}
"""longrl ``rl.optim.schedule`` -> verl ``optim.lr_scheduler_type`` (verl has no linear decay)."""
DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
"""longrl ``model.dtype`` -> verl ``fsdp_config.model_dtype`` ('auto' keeps verl's fp32 master weights)."""
FILTER_METRICS = {"acc": "acc", "score": "reward"}
"""longrl ``rl.dynamic_sampling.metric`` -> verl ``filter_groups.metric`` ('acc' is the reward function's
extra-info key; 'reward' is verl's rm score, which is longrl's shaped score)."""

ACCEPTABLE = {
    "rl.dynamic_sampling.max_rounds":
        "verl 0.9.1's V1 trainer ignores filter_groups.max_num_gen_batches and refills until the batch is "
        "full (no cap, so rl.dynamic_sampling.on_cap never applies)",
}

OWN_ONLY = (
    "model.device", "rollout.backend", "rollout.shared_prefill", "rollout.endpoint", "rollout.model",
    "rollout.prompt_format", "rollout.split_n", "rollout.extra_body", "rollout.max_concurrency",
    "rollout.timeout_s", "rollout.max_retries", "rollout.backoff_s", "rollout.max_backoff_s", "rollout.sync_dir", "rollout.sync_every", "rollout.reload_path",
    "rl.logprob_chunk", "rl.shared_prompt_forward", "rl.max_nonfinite_in_row", "logging.log_every",
    "logging.rollout_samples_every", "logging.rollout_samples", "logging.progress", "logging.jsonl",
    "pipeline.threads", "pipeline.eval_batch_size", "pipeline.eval_batch_tokens",
)
"""Fields of the own trainer's machinery; a verl job has its own (vLLM/SGLang rollouts, Ray placement,
its log-prob kernels, its console logger)."""


@dataclass
class PhaseJob:
    """One curriculum phase as a verl job."""

    name: str
    model_path: str
    """The phase's initial model (HF directory): the previous stage's output."""
    train_file: str
    """The phase parquet longrl wrote (verl RL format)."""
    run_dir: str
    """``<output_dir>/stages/<phase>/verl``: checkpoints, rollout dumps, the merged model."""
    steps: int
    max_input_tokens: int
    max_output_tokens: int
    temperature: float
    longrl_config: str
    """The resolved longrl config (YAML) the reward function reads in the workers."""
    tokenizer_path: str = ""

    @property
    def checkpoint_dir(self) -> str:
        return str(Path(self.run_dir) / "checkpoints")

    @property
    def rollout_dir(self) -> str:
        return str(Path(self.run_dir) / "rollouts")


def check_expressible(cfg: Config) -> None:
    """Raise ConfigError naming the first field whose value verl 0.9.1 cannot honour."""
    a, r, accepted = cfg.algo, cfg.rl, set(cfg.verl.accept)
    unknown = accepted - set(ACCEPTABLE)
    if unknown:
        raise ConfigError("verl.accept", f"{sorted(unknown)} cannot be accepted; acceptable: {sorted(ACCEPTABLE)}")
    problems = [
        ((a.advantage == "task_std" or aepo_on(cfg))
         and any(o.lstrip("+").startswith("trainer.v1.trainer_mode=") for o in cfg.verl.extra_overrides),
         "verl.extra_overrides", "task_std and AEPO run in longrl's trainer (trainer.v1.trainer_mode=longrl); "
         "another trainer mode would drop them"),
        (aepo_on(cfg) and a.loss_agg != "token-mean", "algo.loss_agg",
         f"AEPO empties the dropped samples' masks, and verl divides {a.loss_agg} losses by the mini-batch's "
         "sequence count including those empty samples (longrl by the non-empty ones); use token-mean "
         "(QwenLong-L1.5's) or the own engine"),
        (a.ratio_cap > 0, "algo.ratio_cap", "verl's actor config has no importance-ratio cap"),
        (a.eps != 1e-6, "algo.eps", "verl's estimator hook has no epsilon; only its 1e-6 is available"),
        (r.optim.schedule not in SCHEDULES, "rl.optim.schedule",
         f"verl schedules are {sorted(SCHEDULES)}, got {r.optim.schedule!r}"),
        (r.optim.grad_clip <= 0, "rl.optim.grad_clip", "verl always clips; set a positive max norm"),
        (cfg.model.lora.enabled and cfg.model.lora.dropout > 0, "model.lora.dropout",
         "verl's FSDP LoRA has no dropout"),
        (r.dynamic_sampling.enabled and "rl.dynamic_sampling.max_rounds" not in accepted,
         "rl.dynamic_sampling.max_rounds",
         ACCEPTABLE["rl.dynamic_sampling.max_rounds"] + "; add it to verl.accept to run uncapped, or disable "
         "rl.dynamic_sampling"),
    ]
    for bad, key, why in problems:
        if bad:
            raise ConfigError(key, f"not expressible on the verl engine: {why}")


def aepo_on(cfg: Config) -> bool:
    """AEPO is on: the batch rule (``entropy_mask_level: batch``, which requires ``entropy_high > 0``) or
    a token / sequence threshold."""
    return cfg.algo.entropy_mask_level == "batch" or cfg.algo.entropy_mask_threshold > 0


def longrl_trainer_overrides(cfg: Config) -> dict[str, object]:
    """``trainer.v1.trainer_mode=longrl`` and its ``longrl.aepo`` section when task_std or AEPO is on."""
    a = cfg.algo
    if a.advantage != "task_std" and not aepo_on(cfg):
        return {}
    o: dict[str, object] = {"trainer.v1.trainer_mode": TRAINER_MODE}
    if aepo_on(cfg):
        o |= {"+longrl.aepo.level": a.entropy_mask_level, "+longrl.aepo.threshold": a.entropy_mask_threshold,
              "+longrl.aepo.low": a.entropy_low, "+longrl.aepo.high": a.entropy_high}
    return o


def _q(value) -> str:
    """A hydra override value: JSON for lists/dicts/strings with special characters."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    text = str(value)
    return json.dumps(text) if any(c in text for c in " ,[]{}=:'\"") else text


def gen_batch_size(cfg: Config) -> int:
    return cfg.verl.gen_batch_size or cfg.rl.prompts_per_step


def max_num_gen_batches(cfg: Config) -> int:
    """The own trainer's round budget (max_rounds x prompts_per_step prompts) in verl gen batches."""
    return math.ceil(cfg.rl.dynamic_sampling.max_rounds * cfg.rl.prompts_per_step / gen_batch_size(cfg))


def phase_overrides(cfg: Config, job: PhaseJob) -> list[str]:
    """The hydra overrides of ``verl.trainer.main_ppo`` for one phase (see docs/verl.md)."""
    check_expressible(cfg)
    m, a, r, ro, v = cfg.model, cfg.algo, cfg.rl, cfg.rollout, cfg.verl
    overlong = cfg.reward.overlong
    mini = r.prompts_per_step // r.mini_batches
    loggers = ["console"] + (["tensorboard"] if cfg.logging.tensorboard else []) + \
        (["wandb"] if cfg.logging.wandb_project else [])
    o: dict[str, object] = {
        # data: the phase parquet, in longrl's order (the curriculum sampler's batches)
        "data.train_files": job.train_file,
        "data.val_files": job.train_file,
        "data.prompt_key": "prompt",
        "data.max_prompt_length": job.max_input_tokens,
        "data.max_response_length": job.max_output_tokens,
        "data.train_batch_size": r.prompts_per_step,
        "data.gen_batch_size": gen_batch_size(cfg),
        "data.shuffle": False,
        "data.filter_overlong_prompts": False,
        "data.truncation": "error",
        "data.seed": cfg.seed,
        # model
        "actor_rollout_ref.model.path": job.model_path,
        "actor_rollout_ref.model.external_lib": PLUGIN_MODULE,
        "actor_rollout_ref.model.enable_gradient_checkpointing": m.gradient_checkpointing,
        "actor_rollout_ref.model.use_remove_padding": True,
        # actor: optimiser, batches, clipping, loss
        "actor_rollout_ref.actor.optim.lr": r.optim.lr,
        "actor_rollout_ref.actor.optim.weight_decay": r.optim.weight_decay,
        "actor_rollout_ref.actor.optim.betas": list(r.optim.betas),
        "actor_rollout_ref.actor.optim.lr_warmup_steps": r.optim.warmup_steps if r.optim.warmup_steps else -1,
        "actor_rollout_ref.actor.optim.lr_scheduler_type": SCHEDULES[r.optim.schedule],
        "actor_rollout_ref.actor.grad_clip": r.optim.grad_clip,
        "actor_rollout_ref.actor.ppo_mini_batch_size": mini,
        "actor_rollout_ref.actor.ppo_epochs": r.epochs,
        "actor_rollout_ref.actor.use_dynamic_bsz": True,
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": r.micro_token_budget,
        "actor_rollout_ref.actor.data_loader_seed": cfg.seed,
        "actor_rollout_ref.actor.clip_ratio": a.clip_low,
        "actor_rollout_ref.actor.clip_ratio_low": a.clip_low,
        "actor_rollout_ref.actor.clip_ratio_high": a.clip_high,
        "actor_rollout_ref.actor.policy_loss.loss_mode": "longrl_dual_clip" if a.dual_clip else "longrl",
        "actor_rollout_ref.actor.loss_agg_mode": a.loss_agg,
        "actor_rollout_ref.actor.use_kl_loss": a.kl_coef > 0,
        "actor_rollout_ref.actor.kl_loss_coef": a.kl_coef,
        "actor_rollout_ref.actor.kl_loss_type": KL_TYPES[a.kl_estimator],
        "actor_rollout_ref.actor.entropy_coeff": a.entropy_coef,
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size": v.sequence_parallel,
        "actor_rollout_ref.actor.fsdp_config.param_offload": v.param_offload,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": v.optimizer_offload,
        "actor_rollout_ref.ref.ulysses_sequence_parallel_size": v.sequence_parallel,
        "actor_rollout_ref.ref.fsdp_config.param_offload": v.param_offload,
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz": True,
        "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu": r.micro_token_budget,
        # rollout
        "actor_rollout_ref.rollout.name": v.rollout_engine,
        "actor_rollout_ref.rollout.n": ro.group_size,
        "actor_rollout_ref.rollout.temperature": job.temperature,
        "actor_rollout_ref.rollout.top_p": ro.top_p,
        "actor_rollout_ref.rollout.top_k": -1,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": v.rollout_tensor_parallel,
        "actor_rollout_ref.rollout.gpu_memory_utilization": v.gpu_memory_utilization,
        "actor_rollout_ref.rollout.max_num_batched_tokens": v.max_num_batched_tokens,
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz": True,
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": r.micro_token_budget,
        "actor_rollout_ref.rollout.seed": cfg.seed,
        "actor_rollout_ref.rollout.val_kwargs.temperature": cfg.eval.temperature,
        "actor_rollout_ref.rollout.val_kwargs.top_p": cfg.eval.top_p,
        "actor_rollout_ref.rollout.val_kwargs.n": cfg.eval.k,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": cfg.eval.temperature > 0,
        # algorithm
        "algorithm.adv_estimator": ADVANTAGE_NAMES[a.advantage],
        "algorithm.use_kl_in_reward": False,
        "algorithm.kl_ctrl.kl_coef": 0.0,
        "algorithm.filter_groups.enable": r.dynamic_sampling.enabled,
        "algorithm.filter_groups.metric": FILTER_METRICS[r.dynamic_sampling.metric],
        "algorithm.filter_groups.max_num_gen_batches": max_num_gen_batches(cfg),
        # reward: longrl's hybrid reward; DAPO overlong shaping by verl's dapo reward manager
        "reward.custom_reward_function.path": str(REWARD_FILE),
        "reward.custom_reward_function.name": "compute_score",
        "+reward.custom_reward_function.reward_kwargs.longrl_config": job.longrl_config,
        "reward.reward_manager.name": "dapo" if overlong.enabled else "naive",
        # trainer: placement, steps, checkpoints, dumps
        "trainer.nnodes": v.nnodes,
        "trainer.n_gpus_per_node": v.gpus_per_node,
        "trainer.total_epochs": 1000,
        "trainer.total_training_steps": job.steps,
        "trainer.save_freq": cfg.save_every or job.steps,
        "trainer.max_actor_ckpt_to_keep": cfg.keep_checkpoints,
        "trainer.test_freq": v.test_freq,
        "trainer.val_before_train": False,
        "trainer.resume_mode": "auto",
        "trainer.default_local_dir": job.checkpoint_dir,
        "trainer.rollout_data_dir": job.rollout_dir,
        "trainer.project_name": cfg.logging.wandb_project or "longrl",
        "trainer.experiment_name": job.name,
        "trainer.logger": loggers,
    }
    if overlong.enabled:
        o["+reward.reward_kwargs.max_resp_len"] = job.max_output_tokens
        o["+reward.reward_kwargs.overlong_buffer_cfg.enable"] = True
        o["+reward.reward_kwargs.overlong_buffer_cfg.len"] = overlong.buffer_tokens
        o["+reward.reward_kwargs.overlong_buffer_cfg.penalty_factor"] = overlong.penalty_factor
        o["+reward.reward_kwargs.overlong_buffer_cfg.log"] = False
    if a.dual_clip:
        o["actor_rollout_ref.actor.clip_ratio_c"] = a.dual_clip
    if m.dtype != "auto":
        o["actor_rollout_ref.actor.fsdp_config.model_dtype"] = DTYPES[m.dtype]
    if job.tokenizer_path:
        o["actor_rollout_ref.model.tokenizer_path"] = job.tokenizer_path
    if m.attn_implementation != "flash_attention_2":
        o["+actor_rollout_ref.model.override_config.attn_implementation"] = m.attn_implementation
    if m.rope.yarn_factor:
        o["+actor_rollout_ref.model.override_config.rope_scaling"] = {
            "rope_type": "yarn", "factor": m.rope.yarn_factor,
            "original_max_position_embeddings": m.rope.original_max_position_embeddings}
    if m.lora.enabled:
        o["actor_rollout_ref.model.lora_rank"] = m.lora.r
        o["actor_rollout_ref.model.lora_alpha"] = m.lora.alpha
        o["actor_rollout_ref.model.target_modules"] = list(m.lora.target_modules)
    if v.ray_address:
        o["+ray_kwargs.ray_init.address"] = v.ray_address
    o |= longrl_trainer_overrides(cfg)
    return [f"{k}={_q(val)}" for k, val in o.items()] + list(v.extra_overrides)


MAPPED = {
    "seed": "data.seed, actor.data_loader_seed, rollout.seed",
    "save_every": "trainer.save_freq (0 = the phase's last step)",
    "keep_checkpoints": "trainer.max_actor_ckpt_to_keep",
    "model.path": "actor_rollout_ref.model.path (phase 1; later phases: the previous phase's merged model)",
    "model.tokenizer": "actor_rollout_ref.model.tokenizer_path",
    "model.dtype": "actor.fsdp_config.model_dtype",
    "model.gradient_checkpointing": "actor_rollout_ref.model.enable_gradient_checkpointing",
    "model.attn_implementation": "+actor_rollout_ref.model.override_config.attn_implementation",
    "model.lora.*": "actor_rollout_ref.model.lora_rank / lora_alpha / target_modules",
    "model.rope.*": "+actor_rollout_ref.model.override_config.rope_scaling (yarn)",
    "curriculum.phases[k].max_input_tokens": "data.max_prompt_length",
    "curriculum.phases[k].max_output_tokens / rollout.max_new_tokens": "data.max_response_length",
    "curriculum.phases[k].steps / rl.steps": "trainer.total_training_steps",
    "curriculum.phases[k].temperature / rollout.temperature": "actor_rollout_ref.rollout.temperature",
    "rollout.group_size": "actor_rollout_ref.rollout.n",
    "rollout.top_p": "actor_rollout_ref.rollout.top_p",
    "rl.prompts_per_step": "data.train_batch_size",
    "rl.mini_batches": "actor.ppo_mini_batch_size = prompts_per_step / mini_batches",
    "rl.epochs": "actor.ppo_epochs",
    "rl.micro_token_budget": "actor.ppo_max_token_len_per_gpu (+ use_dynamic_bsz, log-prob budgets)",
    "rl.optim.*": "actor.optim.lr / weight_decay / betas / lr_warmup_steps / lr_scheduler_type, actor.grad_clip",
    "rl.dynamic_sampling.enabled / metric": "algorithm.filter_groups.enable / metric",
    "rl.dynamic_sampling.max_rounds": "algorithm.filter_groups.max_num_gen_batches (ignored by verl's V1 trainer)",
    "algo.advantage": "algorithm.adv_estimator = longrl_<name> (registered by longrl); task_std also "
                      "trainer.v1.trainer_mode=longrl (longrl's trainer records each prompt's task)",
    "algo.entropy_mask_level / entropy_mask_threshold / entropy_low / entropy_high":
        "trainer.v1.trainer_mode=longrl + longrl.aepo.level / threshold / low / high (AEPO in longrl's trainer)",
    "algo.clip_low / clip_high": "actor.clip_ratio_low / clip_ratio_high",
    "algo.dual_clip": "actor.clip_ratio_c with loss_mode longrl_dual_clip",
    "algo.loss_agg": "actor.loss_agg_mode",
    "algo.kl_coef / kl_estimator": "actor.use_kl_loss, kl_loss_coef, kl_loss_type",
    "algo.entropy_coef": "actor.entropy_coeff",
    "reward.*": "reward.custom_reward_function (longrl's hybrid reward reads the config)",
    "reward.overlong.*": "reward.reward_manager.name=dapo + reward.reward_kwargs.overlong_buffer_cfg",
    "eval.temperature / top_p / k": "actor_rollout_ref.rollout.val_kwargs",
    "logging.tensorboard / wandb_project": "trainer.logger, trainer.project_name",
    "verl.*": "trainer.nnodes / n_gpus_per_node, rollout name / TP / memory, Ulysses SP, FSDP offload, Ray address",
}
