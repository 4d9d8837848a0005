"""A device name as a torch device: checked, and a missing GPU said as such."""

from __future__ import annotations

import pytest
import torch

from hubbench.errors import ConfigError, UnavailableError
from hubbench.measure.device import torch_device


def test_devices() -> None:
    assert torch_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        torch_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UnavailableError, match="CUDA is not available"):
            torch_device("cuda")
    else:
        with pytest.raises(UnavailableError, match="GPU"):
            torch_device(f"cuda:{torch.cuda.device_count()}")
