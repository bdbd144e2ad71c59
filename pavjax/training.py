"""Train state, optimizer, sharded initialization and the non-finite guard.

Shared by every job that updates parameters (SFT, verifiers, RL).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from pavjax import sharding as shd


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs to continue bitwise."""

  step: jax.Array  # [] int32
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32[2] raw key; per-step keys are fold_in(rng, step)


def _adamw(schedule, optim_cfg) -> optax.GradientTransformation:
  return optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                     weight_decay=optim_cfg.weight_decay)


def _sgd(schedule, optim_cfg) -> optax.GradientTransformation:
  # Plain gradient steps: unlike Adam's, the step scales with the gradient, so a
  # small reward term gives a small step (the control experiments/didactic
  # tried for Theorem 3.1). Decoupled weight decay, as in AdamW.
  parts = [optax.sgd(schedule)]
  if optim_cfg.weight_decay:
    parts.insert(0, optax.add_decayed_weights(optim_cfg.weight_decay))
  return optax.chain(*parts)


OPTIMIZERS = {"adamw": _adamw, "sgd": _sgd}


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
  """`optim_cfg.name` (AdamW or plain SGD) with linear warm-up then cosine decay,
  after global-norm clipping."""
  warmup = min(optim_cfg.warmup_steps, max(num_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else optim_cfg.lr, peak_value=optim_cfg.lr,
      warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1),
      end_value=optim_cfg.lr * optim_cfg.end_lr_frac)
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(OPTIMIZERS[optim_cfg.get("name", "adamw")](schedule, optim_cfg))
  return optax.chain(*parts)


@dataclasses.dataclass
class StateSpec:
  """A train state's layout before any memory is touched.

  `abstract` holds ShapeDtypeStructs that carry shardings (the orbax restore
  target); `init()` materializes a fresh state directly in that layout.
  """

  abstract: TrainState
  shardings: TrainState
  init: Callable[[], TrainState]


def train_state_spec(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                     example_tokens: jax.Array, mesh, rules) -> StateSpec:
  """Derives shardings with `jax.eval_shape` of init and the logical rules.

  `jax.jit(init, out_shardings=...)` then creates each shard where it lives, so
  full weights never sit on one device.
  """

  def boxed_init(rng):
    params = model.init(jax.random.fold_in(rng, 1), example_tokens)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=rng)

  rng = jax.random.PRNGKey(seed)
  boxed = jax.eval_shape(boxed_init, rng)
  shardings = shd.logical_shardings(boxed, mesh, rules)
  abstract_unboxed = nn.unbox(boxed)
  shd.check_divisible(abstract_unboxed, shardings)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_unboxed, shardings)

  def init():
    with shd.activate(mesh, rules):
      return jax.jit(lambda r: nn.unbox(boxed_init(r)), out_shardings=shardings)(rng)

  return StateSpec(abstract, shardings, init)


def params_spec(model: nn.Module, example_tokens: jax.Array, mesh, rules) -> Any:
  """Abstract parameters (ShapeDtypeStructs carrying shardings): a restore target."""
  boxed = jax.eval_shape(lambda r: model.init(r, example_tokens)["params"],
                         jax.random.PRNGKey(0))
  shardings = shd.logical_shardings(boxed, mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.unbox(boxed), shardings)


def restore_or_init(spec: StateSpec, checkpointer, init_from: str = "") -> tuple[TrainState, str]:
  """Resume order: the workdir's latest finalized checkpoint, then `init_from`
  (parameters only, fresh optimizer), then a fresh initialization.

  Returns the state and where it came from.
  """
  from pavjax import checkpoint  # pylint: disable=g-import-not-at-top
  step = checkpointer.latest_step() if checkpointer is not None else None
  if step is not None:
    state = checkpointer.restore(step, spec.abstract)
    # With fallback_on_corrupt an older step may have been used instead.
    return state, f"checkpoint step {checkpointer.restored_step or step}"
  state = spec.init()
  if init_from:
    params = checkpoint.restore_params(init_from, spec.abstract.params)
    return state.replace(params=params), f"init_from {init_from}"
  return state, "scratch"


def apply_update(state: TrainState, grads, tx, *, loss: jax.Array, nonfinite: str
                 ) -> tuple[TrainState, jax.Array]:
  """One optimizer step; returns the new state and the gradient's global norm.

  Under `nonfinite='skip'`, a step whose loss or gradient norm is NaN/Inf leaves
  params and optimizer state bitwise as they were (only `step` advances, so the
  next batch is new); under 'stop' the update is applied and the host-side guard
  (`jobs.common.train_loop`) raises before any checkpoint of it is written.
  """
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  if nonfinite == "skip":
    keep = lambda n, o: jnp.where(finite, n, o)
    new = new.replace(params=jax.tree.map(keep, new.params, state.params),
                      opt_state=jax.tree.map(keep, new.opt_state, state.opt_state))
  return new, grad_norm


def token_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array):
  """Mean next-token NLL over masked positions; a zero mask gives a finite 0."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, T]
  denom = jnp.maximum(mask.sum(), 1.0)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return (nll * mask).sum() / denom, (correct * mask).sum() / denom
