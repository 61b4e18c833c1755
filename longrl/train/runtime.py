"""Process-level helpers every trainer shares: the accelerator, and the final model directory."""

from __future__ import annotations

from pathlib import Path

import torch

from longrl.models import save_pretrained_dir


def save_final(model, tokenizer, path: Path, accelerator) -> Path:
    """Write the model + tokenizer as a Hugging Face directory (main process), all processes wait."""
    if accelerator.is_main_process:
        save_pretrained_dir(accelerator.unwrap_model(model), tokenizer, path)
    accelerator.wait_for_everyone()
    return path


def default_accelerator():
    """The process's ``accelerate.Accelerator`` (CPU unless CUDA is available)."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())
