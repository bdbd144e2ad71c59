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


def model_config_from(model_cfg: Any, vocab_size: int,
                      action_ids: tuple[int, ...] | None = None) -> ModelConfig:
  """The static hyper-parameters of `config.model` for a task's vocabulary.

  `action_ids` (the task's `Task.action_ids`) restrict the MADE's softmax to the
  ids a response may hold; the transformer ignores them (its behaviour is kept).
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
    return hf.with_run_choices(cfg, model_cfg)
  arch = arch_of(model_cfg)
  if arch == "made":
    return MadeConfig.from_config(model_cfg, vocab_size, action_ids)
  if arch == "transformer":
    return TransformerConfig.from_config(model_cfg, vocab_size)
  raise ValueError(f"unknown model.arch {arch!r}; known: {ARCHS}")


def build_model(cfg: ModelConfig) -> nn.Module:
  """The flax module for static hyper-parameters from `model_config_from`."""
  return Made(cfg) if isinstance(cfg, MadeConfig) else Transformer(cfg)


class PolicyAndValue(nn.Module):
  """A policy and a separate value network of the same architecture, as one module.

  RL's learned baseline (arXiv 2410.08146, Sec. 5: REINFORCE with a token-level
  value baseline) is either the policy's own value head on its detached trunk
  (`rl.value_model='head'`) or this: a second network, initialised from the same
  checkpoint as the policy, whose whole trunk fits the returns
  (`rl.value_model='separate'`). Its parameters are `{'policy': ..., 'value': ...}`,
  each a full parameter tree of `net`, so one train state, optimizer and
  checkpoint hold both, and `params['policy']` is what samplers and later jobs
  read.
  """

  net: ModelConfig

  def setup(self):
    self.policy = build_model(self.net)
    self.value = build_model(self.net)

  def __call__(self, tokens, **kwargs):
    return self.policy(tokens, **kwargs), self.value(tokens, logits=False, values=True)
