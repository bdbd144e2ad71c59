"""Sampling methods: small frozen (hashable) objects mapping logits to tokens.

Each takes `logits [B, V]` (float32) and one PRNG key per row `keys [B]`, and
returns `tokens [B]`. Per-row keys make a row's draw independent of the batch it
sits in, so forked and independently prefilled rows agree exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _categorical(logits, keys):
  return jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, logits).astype(jnp.int32)


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
    return _categorical(logits / self.temperature, keys)


@dataclasses.dataclass(frozen=True)
class TopK:
  """Sampling among the k most likely tokens."""

  k: int
  temperature: float = 1.0

  def __call__(self, logits, keys):
    kth = jax.lax.top_k(logits, self.k)[0][:, -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
    return _categorical(logits / self.temperature, keys)


@dataclasses.dataclass(frozen=True)
class TopP:
  """Nucleus sampling: the smallest set of tokens whose probability reaches p."""

  p: float
  temperature: float = 1.0

  def __call__(self, logits, keys):
    logits = logits / self.temperature
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep a token if the mass strictly before it is < p (the top token always stays).
    keep_sorted = (cum - jax.nn.softmax(sorted_logits, axis=-1)) < self.p
    cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return _categorical(logits, keys)


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
