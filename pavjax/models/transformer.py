"""Decoder-only transformer: RMSNorm, RoPE, gated MLP, grouped-query attention.

One trunk feeds two heads: the LM head (policy) and a scalar value head (verifiers
score Q at step boundaries, RL uses it as a baseline). Every parameter carries
logical axis names; `pavjax.sharding` maps them onto the mesh from config.

The released families pavjax loads (`pavjax.models.hf`) are variants of this one
module, chosen by `TransformerConfig` fields whose defaults give pavjax's own
scratch model:
  Llama 2/3, Mistral  no embedding scale; Llama 3 `rope_scaling`
  Qwen2/2.5           + q/k/v biases (`qkv_bias`)
  Qwen3               + per-head RMSNorm of queries and keys (`qk_norm`)
  Gemma               embeddings x sqrt(D), `(1 + w)` norm scales (`norm_offset=1`),
                      GeGLU with tanh GELU (`mlp_activation='gelu_tanh'`)
  Gemma 2             + norms after attention and MLP (`post_norms`), tanh soft-caps
                      of attention and final logits, its own query scale, and
                      alternating sliding-window / global layers (`layer_windows`)

Dimension letters in einsums and shape comments:
  B batch, T query length, S key length (cache slots), D embed, F mlp,
  N query heads, K kv heads, G query heads per kv head, H head dim, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
import functools
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
  dtype: str = "float32"  # compute dtype
  norm_eps: float = 1e-6
  remat: bool = False
  # Family variants (defaults: pavjax's own model).
  embed_scale: bool = True  # multiply looked-up embeddings by sqrt(D)
  norm_offset: float = 0.0  # RMSNorm multiplies by (norm_offset + scale); Gemma: 1
  qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
  qk_norm: bool = False  # RMSNorm over head_dim of queries and keys before RoPE (Qwen3)
  mlp_activation: str = "silu"  # gate activation: silu (SwiGLU) | gelu_tanh (GeGLU)
  post_norms: bool = False  # RMSNorm after attention and after the MLP too (Gemma 2)
  attn_softcap: float = 0.0  # c * tanh(logits / c) on attention logits (0 = off)
  final_softcap: float = 0.0  # the same on the LM head's logits (0 = off)
  query_scale: float = 0.0  # attention logit scale (0 = head_dim ** -0.5)
  layer_windows: tuple[int, ...] = ()  # per layer: sliding window in tokens, 0 = global
  rope_scaling: tuple = ()  # () or ("llama3", factor, low_freq, high_freq, original_max_len)
  param_dtype: str = "float32"  # storage dtype of parameters (bfloat16 halves memory)
  # With a KV cache, attention reads only the slots written so far, rounded up to a
  # multiple of this many slots (one compiled branch per multiple, picked at run
  # time); 0 reads every slot. Results equal full attention: unread slots are masked.
  attn_block: int = 128
  # Attention over more than this many queries (a prefill, a training or scoring
  # forward) runs in chunks of this many, each reading keys only up to its own last
  # one (the mask is causal): about half the [T, T] scores, one chunk's at a time.
  # 0: one chunk.
  query_chunk: int = 256

  @classmethod
  def from_config(cls, model_cfg: Any, vocab_size: int) -> "TransformerConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in model_cfg.items() if k in fields}
    kwargs["vocab_size"] = vocab_size
    return cls(**kwargs)

  def __post_init__(self):
    if self.mlp_activation not in ACTIVATIONS:
      raise ValueError(f"mlp_activation {self.mlp_activation!r} is not one of "
                       f"{sorted(ACTIVATIONS)}")
    if self.layer_windows and len(self.layer_windows) != self.num_layers:
      raise ValueError(f"layer_windows has {len(self.layer_windows)} entries for "
                       f"{self.num_layers} layers")
    if self.attn_block < 0:
      raise ValueError(f"attn_block {self.attn_block} must be >= 0")
    if self.query_chunk < 0:
      raise ValueError(f"query_chunk {self.query_chunk} must be >= 0")
    if self.rope_scaling and self.rope_scaling[0] != "llama3":
      raise ValueError(f"rope_scaling type {self.rope_scaling[0]!r} is not implemented")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self, include_embedding: bool = True) -> int:
    """Exact parameter count (value head included), used for FLOP accounting."""
    d, h = self.embed_dim, self.head_dim
    attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.qkv_bias:
      attn += h * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attn += 2 * h
    mlp = 3 * d * self.mlp_dim
    per_layer = attn + mlp + (4 if self.post_norms else 2) * d
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    total = self.num_layers * per_layer + d + (d + 1)
    return total + (emb if include_embedding else 0)


ACTIVATIONS = {"silu": jax.nn.silu,
               "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}


def _param(module: nn.Module, name: str, shape, axes, init, dtype=jnp.float32):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def softcap(x: Array, cap: float) -> Array:
  """cap * tanh(x / cap): bounds logits smoothly (Gemma 2); identity when cap is 0."""
  return x if not cap else cap * jnp.tanh(x / cap)


class RMSNorm(nn.Module):
  """RMSNorm over the last axis, scaled by `offset + scale` (Gemma stores scale - 1)."""

  eps: float
  dtype: Any
  offset: float = 0.0
  param_dtype: Any = jnp.float32
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = _param(self, "scale", (x.shape[-1],), (self.axis_name,), init, self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * (self.offset + scale.astype(jnp.float32))).astype(self.dtype)


def rope_frequencies(head_dim: int, base: float, scaling: tuple = ()) -> Array:
  """[H/2] inverse wavelengths of RoPE, with Llama 3's frequency-dependent scaling."""
  half = head_dim // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if not scaling:
    return freq
  _, factor, low_freq_factor, high_freq_factor, original_len = scaling
  # Llama 3: long wavelengths are slowed by `factor`, short ones kept, and the band
  # between them interpolated, so the model reaches past its pre-training length.
  wavelen = 2 * jnp.pi / freq
  low_wavelen = original_len / low_freq_factor
  high_wavelen = original_len / high_freq_factor
  slowed = jnp.where(wavelen > low_wavelen, freq / factor, freq)
  smooth = (original_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
  blended = (1 - smooth) * slowed / factor + smooth * slowed
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, blended, slowed)


def apply_rope(x: Array, positions: Array, base: float, scaling: tuple = ()) -> Array:
  """Rotary embedding on the last axis of x [B, T, N, H] at positions [B, T]."""
  freq = rope_frequencies(x.shape[-1], base, scaling)
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
    """`cache_kv` is None or the (k, v) caches of all layers [L, B, K, S, H].

    This layer's T new keys and values are written into row `layer` at slot
    `write_index` of the stacked buffers, which are returned (the rest untouched).
    """
    cfg = self.cfg
    dt = cfg.compute_dtype
    pdt = jnp.dtype(cfg.param_dtype)
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    init = nn.initializers.normal(stddev=d**-0.5)
    wq = _param(self, "wq", (d, n, h), ("embed", "heads", "kv"), init, pdt)
    wk = _param(self, "wk", (d, k, h), ("embed", "kv_heads", "kv"), init, pdt)
    wv = _param(self, "wv", (d, k, h), ("embed", "kv_heads", "kv"), init, pdt)
    wo = _param(self, "wo", (n, h, d), ("heads", "kv", "embed"),
                nn.initializers.normal(stddev=(n * h) ** -0.5), pdt)

    q = jnp.einsum("BTD,DNH->BTNH", x, wq.astype(dt))
    kk = jnp.einsum("BTD,DKH->BTKH", x, wk.astype(dt))
    vv = jnp.einsum("BTD,DKH->BTKH", x, wv.astype(dt))
    if cfg.qkv_bias:
      zeros = nn.initializers.zeros
      q = q + _param(self, "bq", (n, h), ("heads", "kv"), zeros, pdt).astype(dt)
      kk = kk + _param(self, "bk", (k, h), ("kv_heads", "kv"), zeros, pdt).astype(dt)
      vv = vv + _param(self, "bv", (k, h), ("kv_heads", "kv"), zeros, pdt).astype(dt)
    if cfg.qk_norm:
      q = RMSNorm(cfg.norm_eps, dt, cfg.norm_offset, pdt, "kv", name="q_norm")(q)
      kk = RMSNorm(cfg.norm_eps, dt, cfg.norm_offset, pdt, "kv", name="k_norm")(kk)
    q = apply_rope(q, positions, cfg.rope_base, cfg.rope_scaling)
    kk = apply_rope(kk, positions, cfg.rope_base, cfg.rope_scaling)

    b, t = q.shape[:2]
    q = q.reshape(b, t, k, n // k, h)  # [B, T, K, G, H]
    if cache_kv is None:
      # The mask is causal: a chunk of queries [lo, hi) needs keys [0, hi) only.
      outs = [_attend(cfg, q[:, lo:hi], kk[:, :hi], vv[:, :hi], mask[:, lo:hi, :hi])
              for lo, hi in query_chunks(cfg, t)]
      out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    else:
      # Only the T new slots of this layer are written. The stacked buffers are
      # loop-carried (layer scan, decode loop) and donated by the caller, so XLA
      # updates them in place; this layer's keys are then read back out of them.
      all_k, all_v = cache_kv
      all_k, all_v = write_cache(all_k, all_v, kk, vv, layer, write_index)
      all_k = nn.with_logical_constraint(all_k, KV_AXES)
      all_v = nn.with_logical_constraint(all_v, KV_AXES)
      cache_kv = (all_k, all_v)
      out = chunked_cached_attention(cfg, q, all_k, all_v, mask, layer, write_index)
    out = out.reshape(b, t, n, h)
    y = jnp.einsum("BTNH,NHD->BTD", out, wo.astype(dt))
    return y, cache_kv


def _probs(cfg: TransformerConfig, logits: Array, mask: Array) -> Array:
  """Attention weights from float32 scores [B, K, G, T, S] and the allowed keys [B, T, S]."""
  logits = softcap(logits * (cfg.query_scale or cfg.head_dim**-0.5), cfg.attn_softcap)
  logits = jnp.where(mask[:, None, None, :, :], logits, _MASK_VALUE)
  return jax.nn.softmax(logits, axis=-1).astype(cfg.compute_dtype)


def _attend(cfg: TransformerConfig, q: Array, kk: Array, vv: Array, mask: Array) -> Array:
  """Grouped-query attention of q [B, T, K, G, H] over its own keys/values [B, S, K, H]
  (no cache: training and scoring, where the projections' layout is kept)."""
  dt = cfg.compute_dtype
  kk = nn.with_logical_constraint(kk, ("batch", "length", "kv_heads", "kv"))
  vv = nn.with_logical_constraint(vv, ("batch", "length", "kv_heads", "kv"))
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, kk.astype(dt)).astype(jnp.float32)
  return jnp.einsum("BKGTS,BSKH->BTKGH", _probs(cfg, logits, mask), vv.astype(dt))


def _attend_cached(cfg: TransformerConfig, q: Array, kk: Array, vv: Array, mask: Array
                   ) -> Array:
  """Grouped-query attention of q [B, T, K, G, H] over cached keys/values [B, K, S, H].

  Each (row, KV head) is one [G*T, H] x [H, S] matmul over contiguous keys: the
  group's queries and the time steps form one axis, and the cache's layout
  (`KV_AXES`) needs no transpose. Written as `_attend` over a [B, S, K, H] cache,
  XLA:CPU copied each layer's keys into place at every decode step, about half of
  the step (`python -m pavjax.bench.decode`).
  """
  dt = cfg.compute_dtype
  b, t, k, g, h = q.shape
  s = kk.shape[2]
  kk = nn.with_logical_constraint(kk, ("batch", "kv_heads", "length", "kv"))
  vv = nn.with_logical_constraint(vv, ("batch", "kv_heads", "length", "kv"))
  q = jnp.transpose(q, (0, 2, 3, 1, 4)).reshape(b, k, g * t, h)
  logits = jnp.einsum("BKQH,BKSH->BKQS", q, kk.astype(dt)).astype(jnp.float32)
  probs = _probs(cfg, logits.reshape(b, k, g, t, s), mask).reshape(b, k, g * t, s)
  out = jnp.einsum("BKQS,BKSH->BKQH", probs, vv.astype(dt)).reshape(b, k, g, t, h)
  return jnp.transpose(out, (0, 3, 1, 2, 4))  # [B, T, K, G, H]


def write_cache(all_k: Array, all_v: Array, kk: Array, vv: Array, layer, write_index):
  """Writes one layer's T new keys/values [B, T, K, H] into the stacked caches.

  `write_index` is a scalar (every row writes at the same slot: one
  dynamic_update_slice) or [B] (each row at its own slot: a scatter, for
  continuous batching where rows start at different times).
  """
  if jnp.ndim(write_index) == 0:
    at = (layer, 0, 0, write_index, 0)
    new = lambda x, buf: jnp.swapaxes(x, 1, 2)[None].astype(buf.dtype)  # [1, B, K, T, H]
    return (jax.lax.dynamic_update_slice(all_k, new(kk, all_k), at),
            jax.lax.dynamic_update_slice(all_v, new(vv, all_v), at))
  b, t = kk.shape[:2]
  rows = jnp.arange(b, dtype=jnp.int32)[:, None]  # [B, 1]
  slots = write_index[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]  # [B, T]
  # The indexed axes (layer, row, slot) are apart, so the update is laid out [B, T, K, H].
  return (all_k.at[layer, rows, :, slots].set(kk.astype(all_k.dtype), mode="drop"),
          all_v.at[layer, rows, :, slots].set(vv.astype(all_v.dtype), mode="drop"))


def attention_sizes(size: int, block: int, most: int = 32) -> tuple[int, ...]:
  """The static key lengths a cached attention may read: multiples of a block, then `size`.

  The block is `block` slots, widened so that there are at most `most` sizes (each
  is one compiled branch); `block` 0 gives the single size `size`.
  """
  if block <= 0 or block >= size:
    return (size,)
  block = max(block, -(-size // most))
  return tuple(range(block, size, block)) + (size,)


def cached_attention(cfg: TransformerConfig, q: Array, all_k: Array, all_v: Array, mask: Array,
                     layer, filled, least: int = 0) -> Array:
  """Attention of q [B, T, K, G, H] over the first slots of layer `layer`'s cache.

  Slots at or past `filled` (a traced scalar: the highest written slot + 1 over
  the batch) are masked for every query, so reading only the first
  `attention_sizes` entry that covers `filled` gives the same result as reading
  all of them, at the cost of the filled part: a row with 100 of 2,048 slots
  filled reads one block, not the whole cache. `lax.switch` picks the length at
  run time among compiled branches, so a growing cache never recompiles. `least`
  (static) is a bound `filled` never falls below: shorter lengths are not compiled.
  """
  _, b, kv, s, h = all_k.shape
  sizes = attention_sizes(s, cfg.attn_block)
  sizes = sizes[sum(size < least for size in sizes[:-1]):]

  def branch(size):
    def run(q, all_k, all_v, mask):
      start = (layer, 0, 0, 0, 0)
      kk = jax.lax.dynamic_slice(all_k, start, (1, b, kv, size, h))[0]
      vv = jax.lax.dynamic_slice(all_v, start, (1, b, kv, size, h))[0]
      return _attend_cached(cfg, q, kk, vv, mask[:, :, :size])
    return run

  if len(sizes) == 1:
    return branch(sizes[0])(q, all_k, all_v, mask)
  # The first size that holds every filled slot.
  which = jnp.sum(jnp.asarray(sizes[:-1], jnp.int32) < filled).astype(jnp.int32)
  return jax.lax.switch(which, [branch(size) for size in sizes], q, all_k, all_v, mask)


def query_chunks(cfg: TransformerConfig, t: int) -> list[tuple[int, int]]:
  """[lo, hi) of each chunk of `cfg.query_chunk` queries among t (one chunk if 0)."""
  c = cfg.query_chunk if cfg.query_chunk > 0 else t
  return [(lo, min(lo + c, t)) for lo in range(0, t, c)]


def chunked_cached_attention(cfg: TransformerConfig, q: Array, all_k: Array, all_v: Array,
                             mask: Array, layer, write_index) -> Array:
  """`cached_attention` of T new queries written from `write_index`, `cfg.query_chunk`
  queries at a time.

  A query never sees a slot past its own (the mask is causal), so the chunk of queries
  [lo, hi) reads the cache only up to slot max(write_index) + hi. A prefill of T
  tokens then computes about half of the [T, T] scores, and holds one chunk's at a
  time. Decode (T = 1) is one chunk.
  """
  first = jnp.max(write_index)
  outs = [cached_attention(cfg, q[:, lo:hi], all_k, all_v, mask[:, lo:hi], layer, first + hi,
                           least=hi) for lo, hi in query_chunks(cfg, q.shape[1])]
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


class GatedMLP(nn.Module):
  """act(x W_gate) * (x W_up), then W_down: SwiGLU (silu) or GeGLU (tanh GELU)."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dt = cfg.compute_dtype
    pdt = jnp.dtype(cfg.param_dtype)
    d, f = cfg.embed_dim, cfg.mlp_dim
    w_gate = _param(self, "w_gate", (d, f), ("embed", "mlp"), nn.initializers.normal(d**-0.5),
                    pdt)
    w_up = _param(self, "w_up", (d, f), ("embed", "mlp"), nn.initializers.normal(d**-0.5), pdt)
    w_down = _param(self, "w_down", (f, d), ("mlp", "embed"), nn.initializers.normal(f**-0.5),
                    pdt)
    gate = jnp.einsum("BTD,DF->BTF", x, w_gate.astype(dt))
    up = jnp.einsum("BTD,DF->BTF", x, w_up.astype(dt))
    hidden = ACTIVATIONS[cfg.mlp_activation](gate) * up
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
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

    def norm(name):
      return RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.norm_offset,
                     jnp.dtype(cfg.param_dtype), name=name)

    if cfg.layer_windows:  # this layer's sliding window: keys less than w positions back
      window = jnp.asarray(cfg.layer_windows, jnp.int32)[layer]
      qpos, kpos = mask.key_positions  # [B, T, 1], [B, 1, S]
      mask = mask.allowed & ((window == 0) | (qpos - kpos < window))
    else:
      mask = mask.allowed
    h = norm("attn_norm")(x)
    a, cache_kv = Attention(cfg, name="attn")(h, positions, mask, cache_kv, layer, write_index)
    x = x + (norm("post_attn_norm")(a) if cfg.post_norms else a)
    h = norm("mlp_norm")(x)
    m = GatedMLP(cfg, name="mlp")(h)
    x = x + (norm("post_mlp_norm")(m) if cfg.post_norms else m)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return (x, cache_kv), None


class AttentionMask(NamedTuple):
  """Which keys each query may read, and positions for sliding windows."""

  allowed: Array  # [B, T, S] bool: causal and inside the row's live slots
  key_positions: tuple[Array, Array]  # query positions [B, T, 1], key positions [B, 1, S]


class ModelOutput(NamedTuple):
  logits: Array | None  # [B, T, V] float32
  values: Array | None  # [B, T] float32, the value head's raw output (a logit for Q)
  cache: KVCache | None
  hidden: Array | None = None  # [B, T, D] final-normed trunk output, with `hidden=True`


def lm_head_logits(cfg: TransformerConfig, x: Array, weight: Array) -> Array:
  """Float32 logits [B, T, V] of hidden states x [B, T, D]: the one LM head.

  `weight` is the tied embedding [V, D] or the untied head [D, V]. The final-logit
  soft-cap (Gemma 2) is applied here, so the full head of `Transformer.__call__`
  and the chunked head of the losses (`Transformer.lm_head`) compute the same thing.
  """
  dt = cfg.compute_dtype
  if cfg.tie_embeddings:
    logits = jnp.einsum("BTD,VD->BTV", x, weight.astype(dt))
  else:
    logits = jnp.einsum("BTD,DV->BTV", x, weight.astype(dt))
  logits = softcap(logits.astype(jnp.float32), cfg.final_softcap)
  return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """The policy / verifier network.

  Call modes:
    * no cache: full causal forward over right-padded tokens [B, T] (training, scoring);
    * with cache: the T new tokens are written at `cache.index` (one slot for all
      rows, or one per row); positions and the attention mask come from the cache
      (left-padded rows start at `cache.start`).
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens: Array, *, cache: KVCache | None = None,
               logits: bool = True, values: bool = False,
               detach_values: bool = False, logits_at: Array | None = None,
               hidden: bool = False) -> ModelOutput:
    """Runs the trunk and the requested heads.

    `detach_values=True` stops the value head's gradient at the trunk, so a value
    baseline trained beside the policy (RL) fits the policy's features without
    changing them.

    `logits_at` [B, R] int32 (optional) restricts the LM head to those query
    positions of each row: the logits are then [B, R, V], row b's r-th entry at
    position `logits_at[b, r]`. A prefill that needs only the last prompt token's
    logits skips the [B, T, V] head this way. Values are unaffected.

    `hidden=True` also returns the final-normed trunk output [B, T, D]. With
    `logits=False` a loss can then apply `lm_head` to chunks of it, so that no
    [B, T, V] tensor exists at a large vocabulary (`training.token_stats`).
    """
    cfg = self.cfg
    dt = cfg.compute_dtype
    b, t = tokens.shape
    if cache is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      allowed = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
      key_positions = positions[:, None, :]
      write_index = 0
      cache_kv = None
    else:
      # Slots being written: [1, T] with one index for all rows, [B, T] with one per row.
      slots = jnp.reshape(cache.index, (-1, 1)) + jnp.arange(t, dtype=jnp.int32)[None, :]
      positions = jnp.broadcast_to(jnp.maximum(slots - cache.start[:, None], 0), (b, t))
      keys = jnp.arange(cache.size, dtype=jnp.int32)
      allowed = (keys[None, None, :] >= cache.start[:, None, None]) & (
          keys[None, None, :] <= slots[:, :, None])  # [B, T, S]
      key_positions = keys[None, None, :] - cache.start[:, None, None]  # [B, 1, S]
      write_index = cache.index
      cache_kv = (cache.k, cache.v)
    mask = AttentionMask(allowed, (positions[:, :, None], key_positions))

    # Embeddings start at std D^-1/2 so tied output logits start near unit scale;
    # the input lookup is scaled back up by sqrt(D) to a unit-scale residual stream.
    pdt = jnp.dtype(cfg.param_dtype)
    embedding = _param(self, "embedding", (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"),
                       nn.initializers.normal(stddev=cfg.embed_dim**-0.5), pdt)
    x = jnp.take(embedding, tokens, axis=0).astype(dt)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.embed_dim**0.5, dt)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    # The stacked cache rides in the scan carry (not as a scanned input / stacked
    # output): each layer writes only its T new slots, so a decode step neither
    # copies nor rebuilds the [L, B, K, S, H] buffers. The scanned input is the
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
    x = RMSNorm(cfg.norm_eps, dt, cfg.norm_offset, pdt, name="final_norm")(x)

    out_logits = out_values = None
    if logits or self.is_initializing():
      xl = x
      if logits_at is not None:
        xl = jnp.take_along_axis(x, logits_at.astype(jnp.int32)[:, :, None], axis=1)
      weight = embedding
      if not cfg.tie_embeddings:
        weight = _param(self, "lm_head", (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"),
                        nn.initializers.normal(cfg.embed_dim**-0.5), pdt)
      out_logits = lm_head_logits(cfg, xl, weight)
    if values or self.is_initializing():
      w = _param(self, "value_w", (cfg.embed_dim,), ("embed",), nn.initializers.zeros, pdt)
      bias = _param(self, "value_b", (), (), nn.initializers.zeros, pdt)
      xv = jax.lax.stop_gradient(x) if detach_values else x
      out_values = (jnp.einsum("BTD,D->BT", xv, w.astype(dt)).astype(jnp.float32)
                    + bias.astype(jnp.float32))

    new_cache = None
    if cache is not None:
      new_cache = cache.replace(k=cache_kv[0], v=cache_kv[1], index=cache.index + t)
    return ModelOutput(out_logits, out_values, new_cache, x if hidden else None)

  def lm_head(self, hidden: Array) -> Array:
    """The LM head alone: float32 logits [B, T, V] of final hidden states [B, T, D].

    `hidden` comes from `__call__(..., hidden=True)` (any slice of its T axis).
    Call it as `model.apply({"params": params}, hidden, method="lm_head")`; it reads
    the parameters `__call__` created and applies them exactly as `__call__` does.
    """
    name = "embedding" if self.cfg.tie_embeddings else "lm_head"
    weight = self.get_variable("params", name)
    if weight is None:
      raise ValueError(f"lm_head needs the model's parameters (no params/{name} bound)")
    return lm_head_logits(self.cfg, hidden, nn.unbox(weight))
