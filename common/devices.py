"""What a process can run on: a clear error where a config asks for CUDA and the process has none."""
from __future__ import annotations

import os
import socket

import torch


def require_cuda(key: str) -> None:
    """Raise RuntimeError, saying why, where `key` (e.g. `learner.device`) is cuda and this process sees no CUDA
    device. Without it DeepSpeed silently picks its CPU accelerator and the run dies later in NCCL with an unrelated
    error."""
    if torch.cuda.is_available():
        return
    raise RuntimeError(
        f"{key}=cuda, but CUDA is not available to this process on {socket.gethostname()} (torch "
        f"{torch.__version__}, built for CUDA {torch.version.cuda}; CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). Check the NVIDIA driver (the gpu extra's CUDA 13 "
        f"wheels need driver 580 or newer) and that Ray gave this actor a GPU.")
