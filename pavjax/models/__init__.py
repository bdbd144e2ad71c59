"""Models: the decoder-only transformer and its KV cache."""

from pavjax.models.kv_cache import KVCache
from pavjax.models.transformer import ModelOutput, Transformer, TransformerConfig

__all__ = ["KVCache", "ModelOutput", "Transformer", "TransformerConfig"]
