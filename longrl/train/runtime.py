"""Process-level helpers every trainer shares: the accelerator, and the final model directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from longrl.models import save_pretrained_dir


def save_final(model, tokenizer, path: Path, accelerator) -> Path:
    """Write the model + tokenizer as a Hugging Face directory (main process), all processes wait.

    The directory is written under a temporary name and renamed into place, so ``path`` existing means
    the final model is complete (a re-run of a finished stage relies on it)."""
    if accelerator.is_main_process:
        tmp = path.with_name(f".tmp-{path.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained_dir(accelerator.unwrap_model(model), tokenizer, tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return path


def default_accelerator():
    """The process's ``accelerate.Accelerator`` (CPU unless CUDA is available)."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())
