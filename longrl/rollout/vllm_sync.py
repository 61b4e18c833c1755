"""Moving the trainer's weights into a vLLM engine in place: the policy's tensors, and the worker side.

Trainer side: :func:`policy_weights` yields ``(hf_name, tensor)`` for every parameter and buffer the
engine needs, under the Hugging Face names vLLM's ``load_weights`` expects; a peft LoRA policy is
merged into its base weights for the duration (``merge_adapter`` / ``unmerge_adapter``), so the engine
serves exactly the weights the trainer's forward uses.

Worker side: :class:`WeightSyncExtension` is passed to vLLM as ``worker_extension_cls`` (in-process
``LLM(worker_extension_cls=...)`` or ``--worker-extension-cls`` for the server); its methods become
methods of every vLLM worker and are called through ``collective_rpc``. Each reload feeds every tensor
through the model's own ``load_weights`` and then re-runs vLLM's post-load processing, because on CPU
that processing keeps derived copies of some weights (packed GEMM weights; for a model with tied
embeddings the output layer's copy of the embedding matrix) which a plain ``load_weights`` leaves stale:
the output layer would keep its old weights while the embedding moves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

EXTENSION = "longrl.rollout.vllm_sync.WeightSyncExtension"
"""The ``worker_extension_cls`` value that installs :class:`WeightSyncExtension`."""


@contextlib.contextmanager
def merged_lora(model) -> Iterator[torch.nn.Module]:
    """The plain transformers model behind ``model``, with any peft LoRA merged in until exit."""
    model = getattr(model, "module", model)
    if not hasattr(model, "peft_config"):
        yield model
        return
    model.merge_adapter()
    try:
        yield model.get_base_model()
    finally:
        model.unmerge_adapter()


def _hf_name(name: str) -> str | None:
    """The checkpoint name of a (possibly peft-wrapped) parameter; None for LoRA's own tensors."""
    if "lora_" in name or "modules_to_save" in name:
        return None
    return name.replace(".base_layer.", ".")


def policy_weights(model) -> list[tuple[str, torch.Tensor]]:
    """``(checkpoint name, detached tensor)`` of every parameter of ``model`` (LoRA must already be merged,
    see :func:`merged_lora`); tied parameters appear once, under their first name, as in a saved
    checkpoint."""
    out = []
    for name, p in model.named_parameters():
        hf = _hf_name(name)
        if hf is not None:
            out.append((hf, p.detach()))
    return out


def reload_into(runner, weights) -> int:
    """Load ``weights`` (``(hf_name, tensor)`` pairs) into the model of a vLLM model runner in place and
    refresh what the CPU post-load processing derived from them; returns how many tensors were given.
    Runs on the vLLM worker.

    ``runner.reload_weights`` (vLLM's layerwise in-place reload) re-processes every layer whose weights it
    loads, but an embedding matrix that is also the output layer (tied embeddings) keeps, on CPU, a
    packed GEMM copy built at start-up for the output projection: it is rebuilt here for every
    vocabulary embedding / LM head.
    """
    weights = list(weights)
    runner.reload_weights(weights_iterator=iter(weights))
    refresh_cpu_embedding_gemms(runner.model)
    return len(weights)


def refresh_cpu_embedding_gemms(model) -> int:
    """On CPU, rebuild the packed output-projection GEMM of every ``VocabParallelEmbedding`` (LM heads
    included) from its current weight; returns how many were rebuilt (0 off CPU)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and hasattr(module, "cpu_linear"):
            module.quant_method.process_weights_after_loading(module)
            n += 1
    return n


class WeightSyncExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); methods called by ``collective_rpc``."""

    def longrl_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """Reload every parameter from in-memory tensors (in-process engine: passed by reference)."""
        return reload_into(self.model_runner, weights)

    def longrl_load_weights_from_path(self, path: str) -> int:
        """Reload every parameter from the safetensors files in ``path`` (server: written by the trainer
        to shared memory, /dev/shm, or any directory the server can read)."""
        from pathlib import Path

        from safetensors.torch import load_file

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors under {path}")
        weights = [item for f in files for item in load_file(str(f)).items()]
        return reload_into(self.model_runner, weights)

    def longrl_weight_checksum(self, names: list[str]) -> dict[str, float]:
        """Sum of each named vLLM parameter (tests: the engine holds the trainer's weights)."""
        params = dict(self.model_runner.model.named_parameters())
        return {n: float(params[n].double().sum()) for n in names if n in params}
