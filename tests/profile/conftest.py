"""A tiny model with the real models' stage labels, and one trace of it for the profile tests."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from hubbench.measure.step import build_step
from hubbench.profile import trace_step


class TinyLM(nn.Module):
    """Stand-in with the model's labels, nested like HubRouter's stages inside its block."""

    variant = "tiny"

    def __init__(self, vocab: int = 32, d: int = 16) -> None:
        super().__init__()
        self.config = type("Config", (), {"vocab": vocab, "dtype": "fp32"})()
        self.embed = nn.Embedding(vocab, d)
        self.encode, self.council = nn.Linear(d, d), nn.Linear(d, d)
        self.mlp = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        with record_function("embed"):
            h = self.embed(idx)  # (B, n, d)
        with record_function("hubrouter"):
            g = torch.sigmoid(h)  # glue outside the hub.* stages
            with record_function("hub.encode"), record_function("unlabelled.inner"):
                e = self.encode(h)
            with record_function("hub.council"):
                h = h + g * self.council(e)
        with record_function("mlp"):
            h = h + F.gelu(self.mlp(h))
        with record_function("lm_head"):
            return self.head(h)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        with record_function("loss"):
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@pytest.fixture(scope="session")
def traced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real trace of two train steps of TinyLM: (the output directory, the trace file)."""
    out = tmp_path_factory.mktemp("hubbench-profile-")
    step = build_step(TinyLM(), "train", batch=2, seq=16)
    files = trace_step(step, out, "tiny_train", active=2)
    assert files.memory is None and not files.notes
    return out, files.trace
