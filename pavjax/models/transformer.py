"""Decoder-only transformer: RMSNorm, RoPE, SwiGLU, grouped-query attention.

One trunk feeds two heads: the LM head (policy) and a scalar value head (verifiers
score Q at step boundaries, RL uses it as a baseline). Every parameter carries
logical axis names; `pavjax.sharding` maps them onto the mesh from config.

Dimension letters in einsums and shape comments:
  B batch, T query length, S key length (cache slots), D embed, F mlp,
  N query heads, K kv heads, G query heads per kv head, H head dim, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pavjax.models.kv_cache import KV_AXES, KVCache

Array = jax.Array

# Finite mask value: a query with every key masked (a left-pad slot) then gets a
# uniform softmax instead of NaN; its output is never read.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static model hyper-parameters (hashable, so it can key jit caches)."""

  vocab_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_len: int
  rope_base: float = 10_000.0
  tie_embeddings: bool = True
  dtype: str = "float32"  # compute dtype; parameters stay float32
  norm_eps: float = 1e-6
  remat: bool = False

  @classmethod
  def from_config(cls, model_cfg: Any, vocab_size: int) -> "TransformerConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in model_cfg.items() if k in fields}
    kwargs["vocab_size"] = vocab_size
    return cls(**kwargs)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self, include_embedding: bool = True) -> int:
    """Exact parameter count (value head included), used for FLOP accounting."""
    d, h = self.embed_dim, self.head_dim
    attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    mlp = 3 * d * self.mlp_dim
    per_layer = attn + mlp + 2 * d
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    total = self.num_layers * per_layer + d + (d + 1)
    return total + (emb if include_embedding else 0)


def _param(module: nn.Module, name: str, shape, axes, init, dtype=jnp.float32):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = _param(self, "scale", (x.shape[-1],), ("embed",), nn.initializers.ones)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


def apply_rope(x: Array, positions: Array, base: float) -> Array:
  """Rotary embedding on the last axis of x [B, T, N, H] at positions [B, T]."""
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None] * freq  # [B, T, H/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query attention that reads and writes an optional stacked KV cache."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache_kv, layer, write_index):
    """`cache_kv` is None or the (k, v) caches of all layers [L, B, S, K, H].

    This layer's T new keys and values are written into row `layer` at slot
    `write_index` of the stacked buffers, which are returned (the rest untouched).
    """
    cfg = self.cfg
    dt = cfg.compute_dtype
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    init = nn.initializers.normal(stddev=d**-0.5)
    wq = _param(self, "wq", (d, n, h), ("embed", "heads", "kv"), init)
    wk = _param(self, "wk", (d, k, h), ("embed", "kv_heads", "kv"), init)
    wv = _param(self, "wv", (d, k, h), ("embed", "kv_heads", "kv"), init)
    wo = _param(self, "wo", (n, h, d), ("heads", "kv", "embed"),
                nn.initializers.normal(stddev=(n * h) ** -0.5))

    q = jnp.einsum("BTD,DNH->BTNH", x, wq.astype(dt))
    kk = jnp.einsum("BTD,DKH->BTKH", x, wk.astype(dt))
    vv = jnp.einsum("BTD,DKH->BTKH", x, wv.astype(dt))
    q = apply_rope(q, positions, cfg.rope_base)
    kk = apply_rope(kk, positions, cfg.rope_base)

    if cache_kv is not None:
      # Only the T new slots of this layer are written. The stacked buffers are
      # loop-carried (layer scan, decode loop) and donated by the caller, so XLA
      # updates them in place; this layer's keys are then read back out of them.
      all_k, all_v = cache_kv
      at = (layer, 0, write_index, 0, 0)
      all_k = jax.lax.dynamic_update_slice(all_k, kk[None].astype(all_k.dtype), at)
      all_v = jax.lax.dynamic_update_slice(all_v, vv[None].astype(all_v.dtype), at)
      all_k = nn.with_logical_constraint(all_k, KV_AXES)
      all_v = nn.with_logical_constraint(all_v, KV_AXES)
      kk = jax.lax.dynamic_index_in_dim(all_k, layer, axis=0, keepdims=False)
      vv = jax.lax.dynamic_index_in_dim(all_v, layer, axis=0, keepdims=False)
      cache_kv = (all_k, all_v)
    kk = nn.with_logical_constraint(kk, ("batch", "length", "kv_heads", "kv"))
    vv = nn.with_logical_constraint(vv, ("batch", "length", "kv_heads", "kv"))

    b, t = q.shape[:2]
    q = q.reshape(b, t, k, n // k, h)  # [B, T, K, G, H]
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, kk.astype(dt)).astype(jnp.float32)
    logits = logits * (h**-0.5)
    logits = jnp.where(mask[:, None, None, :, :], logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, vv.astype(dt)).reshape(b, t, n, h)
    y = jnp.einsum("BTNH,NHD->BTD", out, wo.astype(dt))
    return y, cache_kv


class SwiGLU(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dt = cfg.compute_dtype
    d, f = cfg.embed_dim, cfg.mlp_dim
    w_gate = _param(self, "w_gate", (d, f), ("embed", "mlp"), nn.initializers.normal(d**-0.5))
    w_up = _param(self, "w_up", (d, f), ("embed", "mlp"), nn.initializers.normal(d**-0.5))
    w_down = _param(self, "w_down", (f, d), ("mlp", "embed"), nn.initializers.normal(f**-0.5))
    gate = jnp.einsum("BTD,DF->BTF", x, w_gate.astype(dt))
    up = jnp.einsum("BTD,DF->BTF", x, w_up.astype(dt))
    hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
    return jnp.einsum("BTF,FD->BTD", hidden, w_down.astype(dt))


class Block(nn.Module):
  """Pre-norm residual block, scanned over layers.

  The carry is (residual stream, stacked KV cache or None); the scanned input is
  the layer's index, which says where in the stacked cache this layer lives.
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, carry, layer, positions, mask, write_index):
    cfg = self.cfg
    x, cache_kv = carry
    h = RMSNorm(cfg.norm_eps, cfg.compute_dtype, name="attn_norm")(x)
    a, cache_kv = Attention(cfg, name="attn")(h, positions, mask, cache_kv, layer, write_index)
    x = x + a
    h = RMSNorm(cfg.norm_eps, cfg.compute_dtype, name="mlp_norm")(x)
    x = x + SwiGLU(cfg, name="mlp")(h)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return (x, cache_kv), None


class ModelOutput(NamedTuple):
  logits: Array | None  # [B, T, V] float32
  values: Array | None  # [B, T] float32, the value head's raw output (a logit for Q)
  cache: KVCache | None


class Transformer(nn.Module):
  """The policy / verifier network.

  Call modes:
    * no cache: full causal forward over right-padded tokens [B, T] (training, scoring);
    * with cache: the T new tokens are written at `cache.index`; positions and the
      attention mask come from the cache (left-padded rows start at `cache.start`).
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens: Array, *, cache: KVCache | None = None,
               logits: bool = True, values: bool = False,
               detach_values: bool = False, logits_at: Array | None = None) -> ModelOutput:
    """Runs the trunk and the requested heads.

    `detach_values=True` stops the value head's gradient at the trunk, so a value
    baseline trained beside the policy (RL) fits the policy's features without
    changing them.

    `logits_at` [B, R] int32 (optional) restricts the LM head to those query
    positions of each row: the logits are then [B, R, V], row b's r-th entry at
    position `logits_at[b, r]`. A prefill that needs only the last prompt token's
    logits skips the [B, T, V] head this way. Values are unaffected.
    """
    cfg = self.cfg
    dt = cfg.compute_dtype
    b, t = tokens.shape
    if cache is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
      write_index = 0
      cache_kv = None
    else:
      slots = cache.index + jnp.arange(t, dtype=jnp.int32)  # [T] slots being written
      positions = jnp.maximum(slots[None, :] - cache.start[:, None], 0)  # [B, T]
      keys = jnp.arange(cache.size, dtype=jnp.int32)
      mask = (keys[None, None, :] >= cache.start[:, None, None]) & (
          keys[None, None, :] <= slots[None, :, None])  # [B, T, S]
      write_index = cache.index
      cache_kv = (cache.k, cache.v)

    # Embeddings start at std D^-1/2 so tied output logits start near unit scale;
    # the input lookup is scaled back up by sqrt(D) to a unit-scale residual stream.
    embedding = _param(self, "embedding", (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"),
                       nn.initializers.normal(stddev=cfg.embed_dim**-0.5))
    x = jnp.take(embedding, tokens, axis=0).astype(dt) * jnp.asarray(cfg.embed_dim**0.5, dt)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    # The stacked cache rides in the scan carry (not as a scanned input / stacked
    # output): each layer writes only its T new slots, so a decode step neither
    # copies nor rebuilds the [L, B, S, K, H] buffers. The scanned input is the
    # layer index, used to address them.
    block = nn.remat(Block) if cfg.remat else Block
    layers = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name="layers")
    layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
    (x, cache_kv), _ = layers((x, cache_kv), layer_ids, positions, mask, write_index)
    x = RMSNorm(cfg.norm_eps, dt, name="final_norm")(x)

    out_logits = out_values = None
    if logits or self.is_initializing():
      xl = x
      if logits_at is not None:
        xl = jnp.take_along_axis(x, logits_at.astype(jnp.int32)[:, :, None], axis=1)
      if cfg.tie_embeddings:
        out_logits = jnp.einsum("BTD,VD->BTV", xl, embedding.astype(dt))
      else:
        head = _param(self, "lm_head", (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"),
                      nn.initializers.normal(cfg.embed_dim**-0.5))
        out_logits = jnp.einsum("BTD,DV->BTV", xl, head.astype(dt))
      out_logits = nn.with_logical_constraint(out_logits.astype(jnp.float32),
                                              ("batch", "length", "vocab"))
    if values or self.is_initializing():
      w = _param(self, "value_w", (cfg.embed_dim,), ("embed",), nn.initializers.zeros)
      bias = _param(self, "value_b", (), (), nn.initializers.zeros)
      xv = jax.lax.stop_gradient(x) if detach_values else x
      out_values = (jnp.einsum("BTD,D->BT", xv, w.astype(dt)).astype(jnp.float32) + bias)

    new_cache = None
    if cache is not None:
      new_cache = cache.replace(k=cache_kv[0], v=cache_kv[1], index=cache.index + t)
    return ModelOutput(out_logits, out_values, new_cache)
