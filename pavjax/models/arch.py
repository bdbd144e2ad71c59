"""Which network a config builds: the transformer or the paper's MADE-style MLP.

`config.model.arch` selects it. Transformer configs leave the field out (absent
means 'transformer'), so configs and config hashes written before the MADE
existed (rollout manifests, search caches, pipeline stages) stay valid.
"""

from __future__ import annotations

import dataclasses
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
  """The static hyper-parameters of `config.model` for a task's vocabulary.

  A pretrained checkpoint (`model.source='hf'`) brings its own sizes and vocabulary;
  the task's token ids must fit in that vocabulary.
  """
  if model_cfg.get("source", "") == "hf":
    from pavjax.models import hf  # pylint: disable=g-import-not-at-top
    cfg = hf.config_from_hf(model_cfg.path, max_len=model_cfg.max_len, dtype=model_cfg.dtype,
                            param_dtype=model_cfg.get("param_dtype", "float32"))
    if vocab_size > cfg.vocab_size:
      raise ValueError(f"model.path={model_cfg.path}: the task's tokenizer has {vocab_size} ids, "
                       f"the checkpoint's embedding {cfg.vocab_size} rows; run the task with "
                       "the checkpoint's own tokenizer")
    return dataclasses.replace(cfg, remat=bool(model_cfg.get("remat", False)))
  arch = arch_of(model_cfg)
  if arch == "made":
    return MadeConfig.from_config(model_cfg, vocab_size)
  if arch == "transformer":
    return TransformerConfig.from_config(model_cfg, vocab_size)
  raise ValueError(f"unknown model.arch {arch!r}; known: {ARCHS}")


def build_model(cfg: ModelConfig) -> nn.Module:
  """The flax module for static hyper-parameters from `model_config_from`."""
  return Made(cfg) if isinstance(cfg, MadeConfig) else Transformer(cfg)
