"""Language models for the variants of hubbench.plan.variants, and how each one is built.

- `blocks`: the pre-norm residual block and the MLPs after a mixer (MLP, MoE);
- `lm`: the language model around them (embedding, blocks, tied head), its decode state and
  its analytic FLOP count;
- `builders`: variant + config -> model, one factory per layer layout (`BUILDERS`).
`hubbench.models:build` is the builder the worker calls by default (`--builder` names another);
`build_model` validates raw fields first, for scripts and tests. A plug-in mixer's wrapper is
hubbench.mixers.plugin.
"""

from hubbench.models.blocks import MLP, MOE_AUX_WEIGHT, Block, MoE
from hubbench.models.builders import BUILDERS, build, build_model
from hubbench.models.lm import LanguageModel, ModelState

__all__ = [
    "BUILDERS",
    "MLP",
    "MOE_AUX_WEIGHT",
    "Block",
    "LanguageModel",
    "MoE",
    "ModelState",
    "build",
    "build_model",
]
