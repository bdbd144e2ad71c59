"""Train state, optimizer, sharded initialization, the non-finite guard and the train loop.

Shared by every job that updates parameters (SFT, verifiers, RL).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pavjax import checkpoint as ckpt_lib
from pavjax import metrics
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


def restore_or_init(spec: StateSpec, checkpointer, init_from: str = "",
                    load_params: Callable[[str], Any] | None = None
                    ) -> tuple[TrainState, str]:
  """Resume order: the workdir's latest finalized checkpoint, then `init_from`
  (parameters only, fresh optimizer), then a fresh initialization.

  `load_params(init_from)` reads the parameters (default: an orbax checkpoint
  restored into `spec`'s layout; jobs pass one that also reads Hugging Face
  checkpoints). Returns the state and where it came from.
  """
  from pavjax import checkpoint  # pylint: disable=g-import-not-at-top
  step = checkpointer.latest_step() if checkpointer is not None else None
  if step is not None:
    state = checkpointer.restore(step, spec.abstract)
    # With fallback_on_corrupt an older step may have been used instead.
    return state, f"checkpoint step {checkpointer.restored_step or step}"
  state = spec.init()
  if init_from:
    params = (load_params(init_from) if load_params is not None
              else checkpoint.restore_params(init_from, spec.abstract.params))
    return state.replace(params=params), f"init_from {init_from}"
  return state, "scratch"


def apply_update(state: TrainState, grads, tx, *, loss: jax.Array, nonfinite: str
                 ) -> tuple[TrainState, jax.Array]:
  """One optimizer step; returns the new state and the gradient's global norm.

  Under `nonfinite='skip'`, a step whose loss or gradient norm is NaN/Inf leaves
  params and optimizer state bitwise as they were (only `step` advances, so the
  next batch is new); under 'stop' the update is applied and the host-side guard
  (`training.train_loop`) raises before any checkpoint of it is written.
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


def train_loop(state, step_fn: Callable, batch_fn: Callable[[int, Any], Mapping[str, Any]], *,
               train_cfg, checkpointer: ckpt_lib.Checkpointer, writer: metrics.MetricWriter,
               eval_fn: Callable[[Any, int], Any] | None = None,
               desc: str = "train"):
  """Runs `step_fn(state, batch_fn(step, state))` from the state's step to `train_cfg.num_steps`.

  `batch_fn` gets the 0-based step and the current state (RL samples its batch
  from the current policy; supervised jobs ignore the state).

  Metrics stay on device and are fetched every `log_every` steps (and before
  every checkpoint) in one `device_get`. The non-finite guard runs on each fetch:
  under 'stop' it raises before a checkpoint of bad values can be written; under
  'skip' the step function has already left params untouched, and the run stops
  after `max_skips` consecutive skipped steps.

  Returns (state, last logged means).
  """
  start = int(jax.device_get(state.step))
  total = train_cfg.num_steps
  halt = train_cfg.halt_at_step
  pending: list[Mapping[str, Any]] = []
  consecutive_bad = 0
  last: dict[str, float] = {}
  t_last = time.time()
  bar = metrics.progress(total, initial=start, desc=desc)
  in_flight = None  # metrics of the newest dispatched step the bar has not counted

  def flush(step: int):
    nonlocal consecutive_bad, last, t_last
    if not pending:
      return
    means, bad = metrics.reduce_metrics(pending)
    first = step - len(pending) + 1
    if bad and train_cfg.nonfinite == "stop":
      raise metrics.NonFiniteError(
          f"non-finite loss or gradients at step {first + bad[0]} (train.nonfinite='stop'); "
          "no checkpoint was written after the last good one")
    for i in range(len(pending)):
      consecutive_bad = consecutive_bad + 1 if i in bad else 0
      if consecutive_bad >= train_cfg.max_skips:
        raise metrics.NonFiniteError(
            f"{consecutive_bad} consecutive non-finite steps ending at step {first + i} "
            f"(train.max_skips={train_cfg.max_skips})")
    if bad:  # every step in the window may have been skipped: log no NaN means
      means = {k: v for k, v in means.items() if math.isfinite(v)}
      means["train/skipped_steps"] = float(len(bad))
    now = time.time()
    means["perf/steps_per_sec"] = len(pending) / max(now - t_last, 1e-9)
    t_last = now
    writer.write(step, means)
    last = means
    pending.clear()
    bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in list(means.items())[:3]})

  try:
    for step in range(start + 1, total + 1):
      state, step_metrics = step_fn(state, batch_fn(step - 1, state))
      if in_flight is not None:  # one step runs ahead; the bar counts finished steps
        jax.block_until_ready(in_flight)
        bar.update(1)
      in_flight = step_metrics
      pending.append(step_metrics)
      is_last = step == total or step == halt
      if step % train_cfg.log_every == 0 or is_last or checkpointer.should_save(step):
        flush(step)  # fetches every pending step's metrics: all have finished
        bar.update(1)
        in_flight = None
      if checkpointer.should_save(step) or is_last:
        checkpointer.save(step, state)
      if eval_fn is not None and train_cfg.eval_every and step % train_cfg.eval_every == 0:
        eval_fn(state, step)  # writes its own metrics
      if step == halt:
        logging.warning("halting after step %d (train.halt_at_step)", step)
        break
  finally:
    # Good checkpoints still being written must land even when the loop raises.
    bar.close()
    checkpointer.wait()
  return state, last


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The examples of step `step`: a pure function of (seed, step), so resumes are exact."""
  rng = np.random.default_rng([seed, step])
  return rng.choice(num_examples, batch_size, replace=num_examples < batch_size)
