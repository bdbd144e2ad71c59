"""Which network a config builds: the transformer or the paper's MADE-style MLP.

`config.model.arch` selects it. Transformer configs leave the field out (absent
means 'transformer'), so configs and config hashes written before the MADE
existed (rollout manifests, search caches, pipeline stages) stay valid.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from pavjax.models.made import Made, MadeConfig
from pavjax.models.transformer import Transformer, TransformerConfig

ARCHS = ("transformer", "made")

ModelConfig = TransformerConfig | MadeConfig


def arch_of(model_cfg: Any) -> str:
  """The architecture a `config.model` section names ('transformer' when unset)."""
  return model_cfg.get("arch", "transformer")


def model_config_from(model_cfg: Any, vocab_size: int) -> ModelConfig:
  """The static hyper-parameters of `config.model` for a task's vocabulary."""
  arch = arch_of(model_cfg)
  if arch == "made":
    return MadeConfig.from_config(model_cfg, vocab_size)
  if arch == "transformer":
    return TransformerConfig.from_config(model_cfg, vocab_size)
  raise ValueError(f"unknown model.arch {arch!r}; known: {ARCHS}")


def build_model(cfg: ModelConfig) -> nn.Module:
  """The flax module for static hyper-parameters from `model_config_from`."""
  return Made(cfg) if isinstance(cfg, MadeConfig) else Transformer(cfg)
