"""Sampling methods: small frozen (hashable) objects mapping logits to tokens.

Each takes `logits [B, V]` (float32) and one PRNG key per row `keys [B]`, and
returns `tokens [B]`. Per-row keys make a row's draw independent of the batch it
sits in, so forked and independently prefilled rows agree exactly.

The random methods draw by inverse CDF, from two uniforms per row rather than
Gumbel noise over the whole vocabulary. The vocabulary is cut into blocks of
about sqrt(V) tokens: the first uniform picks a block in proportion to its mass,
the second a token of that block in proportion to its weight. So P(token) =
weight / total weight, up to float32 rounding of the weights and their sums,
and tokens of a low-mass block are resolved relative to that block's mass.
Top-k and top-p find their cut-off logit by bisection instead of a sort.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

# Uniforms carry 24 random bits: every k / 2^24 is exact in float32, and the
# largest is 1 - 2^-24 < 1.
_UNIFORM_BITS = 24


def _uniforms(keys, n):
  """[B, n] independent uniforms in [0, 1); row r depends only on keys[r]."""
  bits = jax.vmap(lambda k: jax.random.bits(k, (n,), jnp.uint32))(keys)
  return (bits >> (32 - _UNIFORM_BITS)).astype(jnp.float32) * (2.0 ** -_UNIFORM_BITS)


def _first_above(weights, cum, target):
  """Per row, the first index i with cum[i] > target and weights[i] > 0: [B] int32.

  This is the inverse CDF at `target` (cum: prefix sums of weights >= 0). Float
  rounding can make `cum` slightly non-monotone, or leave no entry above a
  target at the last cumulative value; the positivity mask keeps zero-weight
  entries out in every case, and the fallback is the row's last positive entry
  (0 if it has none).
  """
  n = weights.shape[-1]
  iota = jax.lax.broadcasted_iota(jnp.int32, weights.shape, weights.ndim - 1)
  pos = weights > 0
  first = jnp.min(jnp.where((cum > target[:, None]) & pos, iota, n), axis=-1)
  last = jnp.max(jnp.where(pos, iota, 0), axis=-1)
  return jnp.where(first < n, first, last)


def _block_size(vocab):
  """A power of two near sqrt(vocab): both search stages stay short."""
  return max(8, 1 << math.ceil(math.log2(math.sqrt(vocab))))


def _sample_weights(weights, keys):
  """Tokens [B] with P(token = i) = weights[r, i] / sum(weights[r]) for row r; weights >= 0."""
  b, v = weights.shape
  u = _uniforms(keys, 2)
  size = _block_size(v)
  nblocks = -(-v // size)
  if nblocks * size != v:  # padding has weight 0, so it is never picked
    weights = jnp.pad(weights, ((0, 0), (0, nblocks * size - v)))
  blocks = weights.reshape(b, nblocks, size)
  mass = jnp.sum(blocks, axis=-1)
  cum_mass = jnp.cumsum(mass, axis=-1)
  block = _first_above(mass, cum_mass, u[:, 0] * cum_mass[:, -1])
  inner = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
  cum_inner = jnp.cumsum(inner, axis=-1)
  offset = _first_above(inner, cum_inner, u[:, 1] * cum_inner[:, -1])
  return (block * size + offset).astype(jnp.int32)


def _softmax_weights(logits, temperature=1.0, keep=None):
  """Unnormalized softmax(logits / temperature): 1 at the top, 0 for -inf and outside `keep`."""
  w = jnp.exp((logits - jnp.max(logits, axis=-1, keepdims=True)) / temperature)
  return w if keep is None else jnp.where(keep, w, 0.0)


def _order_key(x):
  """int32 keys in the order of the float32 values x (-0.0 just below +0.0)."""
  i = jax.lax.bitcast_convert_type(x, jnp.int32)
  return jnp.where(i < 0, i ^ 0x7FFFFFFF, i)


def _key_value(k):
  """Inverse of `_order_key`."""
  return jax.lax.bitcast_convert_type(jnp.where(k < 0, k ^ 0x7FFFFFFF, k), jnp.float32)


def _cutoff(logits, measure, bound):
  """Per row, the smallest logit value c with measure(logits > c) < bound: [B, 1].

  `measure(mask [B, V]) -> [B]` must grow with the mask and be 0 on the empty
  mask; `bound` > 0. A token then has `logit >= c` exactly when the tokens
  strictly above it measure less than `bound`, so tied tokens stay together.
  Found by bisection over the float32 order, one pass over the vocabulary per
  round, instead of a sort, which on CPU costs far more for a large vocabulary.
  """
  lo = _order_key(jnp.min(logits, axis=-1)) - 1  # the predicate fails here (nothing cut)
  hi = _order_key(jnp.max(logits, axis=-1))  # and holds here (nothing above the max)

  def body(_, carry):
    lo, hi = carry
    mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
    live = mid > lo  # hi - lo >= 2; a settled row stays as it is
    ok = measure(logits > _key_value(mid)[:, None]) < bound
    return jnp.where(live & ~ok, mid, lo), jnp.where(live & ok, mid, hi)

  # Keys span less than 2^32, so 32 halvings settle every row.
  _, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return _key_value(hi)[:, None]


def _top_k_keep(logits, k):
  """Mask of the k largest logits and of every logit tied with the k-th; None keeps all."""
  if k >= logits.shape[-1]:
    return None
  count = lambda mask: jnp.sum(mask, axis=-1, dtype=jnp.int32)
  return logits >= _cutoff(logits, count, k)


def _top_p_keep(logits, weights, p):
  """Mask of the tokens whose strictly more likely tokens have mass < p; None keeps all.

  `weights`: unnormalized softmax of `logits`. In descending order this keeps the
  shortest prefix whose mass reaches p, with every token tied to its last one.
  """
  if p >= 1.0:
    return None
  mass = lambda mask: jnp.sum(jnp.where(mask, weights, 0.0), axis=-1)
  return logits >= _cutoff(logits, mass, p * jnp.sum(weights, axis=-1))


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Argmax decoding (ties go to the lowest token id)."""

  def __call__(self, logits, keys):
    del keys
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
  """Ancestral sampling from softmax(logits / temperature)."""

  temperature: float = 1.0

  def __call__(self, logits, keys):
    return _sample_weights(_softmax_weights(logits, self.temperature), keys)


@dataclasses.dataclass(frozen=True)
class TopK:
  """Sampling among the k most likely tokens (tokens tied with the k-th included)."""

  k: int
  temperature: float = 1.0

  def __call__(self, logits, keys):
    keep = _top_k_keep(logits, self.k)
    return _sample_weights(_softmax_weights(logits, self.temperature, keep), keys)


@dataclasses.dataclass(frozen=True)
class TopP:
  """Nucleus sampling: the smallest set of tokens whose probability reaches p.

  A token is kept if the tokens strictly more likely than it have probability
  < p: the top token always stays, and tied tokens are kept or dropped together.
  """

  p: float
  temperature: float = 1.0

  def __call__(self, logits, keys):
    logits = logits / self.temperature
    weights = _softmax_weights(logits)
    keep = _top_p_keep(logits, weights, self.p)
    return _sample_weights(weights if keep is None else jnp.where(keep, weights, 0.0), keys)


METHODS = ("greedy", "temperature", "top_k", "top_p")


def from_config(sample_cfg) -> Greedy | Temperature | TopK | TopP:
  """Builds the method named by `sample_cfg.method` from its fields."""
  name = sample_cfg.method
  if name == "greedy":
    return Greedy()
  if name == "temperature":
    return Temperature(sample_cfg.temperature)
  if name == "top_k":
    return TopK(sample_cfg.top_k, sample_cfg.temperature)
  if name == "top_p":
    return TopP(sample_cfg.top_p, sample_cfg.temperature)
  raise ValueError(f"sample.method={name!r} is not one of {METHODS}")
