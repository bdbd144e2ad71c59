"""Models: the decoder-only transformer, the MADE-style MLP, and their caches."""

from pavjax.models.arch import (ARCHS, ModelConfig, PolicyAndValue, arch_of, build_model,
                                model_config_from)
from pavjax.models.kv_cache import KVCache
from pavjax.models.made import Made, MadeConfig
from pavjax.models.token_cache import TokenCache
from pavjax.models.transformer import ModelOutput, Transformer, TransformerConfig

__all__ = ["ARCHS", "KVCache", "Made", "MadeConfig", "ModelConfig", "ModelOutput", "PolicyAndValue",
           "TokenCache", "Transformer", "TransformerConfig", "arch_of", "build_model",
           "model_config_from"]
