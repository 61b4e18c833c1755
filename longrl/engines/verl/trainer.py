"""longrl's verl trainer: verl 0.9.1's synchronous V1 trainer plus task-level std and AEPO (imports verl).

Registered with verl's own ``register_trainer`` as ``trainer.v1.trainer_mode=longrl`` (verl's
``TaskRunnerV1`` picks the trainer class by that name); the longrl pipeline sets it when
``algo.advantage: task_std`` or AEPO is on. It is verl's ``PPOTrainerSync`` with three hooks, all in
verl's driver process, where verl keeps what its plug-in signatures leave out (see
:mod:`longrl.engines.verl.driver`):

* ``_fetch_one_gen_batch``: after verl draws a batch of prompts and gives each its uid, record
  ``uid -> task`` (``extra_info.task`` / ``data_source``) in :data:`~longrl.engines.verl.driver.TASKS`,
  which the ``longrl_task_std`` estimator reads when verl's ``compute_advantage`` calls it.
* ``_compute_advantage``: after verl's advantage step, apply AEPO (``longrl.aepo`` in the verl config):
  read the advantages, the old-policy per-token ``entropy`` that verl's ``_compute_old_log_prob``
  stored and the response mask from verl's TransferQueue, let :class:`AEPOControl` decide, and write
  the new mask back as ``response_mask`` and ``loss_mask`` (the actor's losses and its global token
  count read those two).
* ``_save_checkpoint`` / ``_load_checkpoint``: the AEPO hysteresis state in
  ``global_step_<N>/longrl_aepo.json``, written before verl's tracker file so a resumed phase has it.

Nothing of verl is patched: the class subclasses verl's and only adds work before or after verl's own
methods. It runs verl's ``sync`` mode (the mode name is set back to ``sync`` before verl's constructor, so
every ``trainer_mode == "sync"`` branch of verl behaves as in verl's own sync trainer).
"""

from __future__ import annotations

import json
import logging
import os

import transfer_queue as tq
from omegaconf import DictConfig, open_dict
from tensordict import TensorDict
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_to_nested

from longrl.engines.verl.driver import TASKS, AEPOControl

TRAINER_MODE = "longrl"
AEPO_STATE_FILE = "longrl_aepo.json"
logger = logging.getLogger(__name__)


@register_trainer(TRAINER_MODE)
class LongrlTrainer(PPOTrainerSync):
    """verl's sync trainer + longrl's task book and AEPO (see the module docstring)."""

    def __init__(self, config: DictConfig):
        with open_dict(config):
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config)
        self.aepo = AEPOControl.from_settings(config.get("longrl", {}).get("aepo"))
        corr = config.algorithm.get("rollout_correction", None)
        if self.aepo is not None and corr is not None and corr.get("bypass_mode", False):
            raise ValueError("longrl AEPO needs verl's old-policy entropies, which bypass mode "
                             "(algorithm.rollout_correction.bypass_mode) does not compute")

    def _fetch_one_gen_batch(self) -> TensorDict:
        batch = super()._fetch_one_gen_batch()
        n = len(batch)
        TASKS.record(tu.get(batch, "uid"), tu.get(batch, "data_source", [None] * n),
                     tu.get(batch, "extra_info", [None] * n), step=getattr(self, "global_steps", 0))
        return batch

    def _compute_advantage(self, batch, metrics: dict):
        batch = super()._compute_advantage(batch, metrics=metrics)
        if self.aepo is not None:
            metrics.update(self._apply_aepo(batch))
        return batch

    def _apply_aepo(self, batch) -> dict[str, float]:
        """AEPO on the step's batch in verl's TransferQueue (see the module docstring)."""
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["advantages", "entropy", "response_mask"])
        nested_mask = data["response_mask"]
        padded = data.to_padded_tensor()
        mask_BT, aepo_metrics = self.aepo.apply(padded["advantages"], padded["entropy"], padded["response_mask"])
        new_mask = response_to_nested(mask_BT.to(nested_mask.dtype), nested_mask)
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                        fields=TensorDict({"response_mask": new_mask, "loss_mask": new_mask.clone()},
                                          batch_size=len(batch)))
        return aepo_metrics

    def _save_checkpoint(self):
        if self.aepo is not None and self.aepo.state is not None:
            folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, AEPO_STATE_FILE), "w") as f:
                json.dump(self.aepo.state_dict(), f)
        super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.aepo is None or self.aepo.state is None or self.global_steps == 0:
            return
        folder = (self.config.trainer.resume_from_path if self.config.trainer.resume_mode == "resume_path"
                  else os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}"))
        path = os.path.join(folder, AEPO_STATE_FILE)
        if not os.path.exists(path):
            logger.warning("no AEPO state in %s: resuming with AEPO inactive", folder)
            return
        with open(path) as f:
            self.aepo.load_state_dict(json.load(f))
