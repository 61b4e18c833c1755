"""How a run picks FSDP, and the configurations it refuses (no process group needed: the checks come first)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType
from transformers import AutoModelForCausalLM

from longrl.train.runtime import fsdp_plugin, is_sharded, shard_policy


def _two_cpu_processes():
    """Stand-in for the Accelerator of one of two gloo processes: only the fields the FSDP choice reads
    (a real one needs a second process and a process group)."""
    return SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2, process_index=0,
                           is_main_process=True, state=SimpleNamespace(fsdp_plugin=None))


def test_no_fsdp_without_the_launch_config(monkeypatch, tiny_model_dir):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert fsdp_plugin(_two_cpu_processes()) is None
    assert shard_policy(model, _two_cpu_processes()) is model and not is_sharded(model)


def test_the_launch_environment_picks_fsdp2_on_cpu(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    plugin = fsdp_plugin(_two_cpu_processes())
    assert plugin is not None and plugin.fsdp_version == 2
    one = _two_cpu_processes()
    one.num_processes = 1
    assert fsdp_plugin(one) is None  # one process: nothing to shard over


def test_fsdp1_is_refused_naming_the_key(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="fsdp_version 1"):
        shard_policy(model, _two_cpu_processes())
    assert not is_sharded(model)


def test_lora_policy_is_refused(monkeypatch, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="LoRA"):
        shard_policy(model, _two_cpu_processes())
