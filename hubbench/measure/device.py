"""The one way a device name becomes a torch device (names are checked in hubbench.plan.fields,
torch-free, where suites and options are read)."""

from __future__ import annotations

import torch

from hubbench.errors import UnavailableError
from hubbench.plan.fields import resolve_device


def torch_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' (or 'auto') as a torch device; one that is already a torch device
    as it is. A device name that is not one is a ConfigError; a missing GPU an UnavailableError."""
    if isinstance(device, torch.device):
        return device
    name = resolve_device(device)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnavailableError(f"device {name!r} requested but CUDA is not available here")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UnavailableError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return torch.device(name)
