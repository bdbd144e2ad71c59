"""Train state, optimizer, sharded initialization, the non-finite guard and the train loop.

Shared by every job that updates parameters (SFT, verifiers, RL).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Callable, Mapping, NamedTuple

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


class TokenStats(NamedTuple):
  """What the losses read of the LM head at each position, for its target token."""

  logp: jax.Array  # [B, T] float32 log pi(target | prefix)
  entropy: jax.Array | None = None  # [B, T] float32 entropy of pi(. | prefix), if asked
  correct: jax.Array | None = None  # [B, T] float32 1 where the argmax is the target, if asked


def logits_stats(logits: jax.Array, targets: jax.Array, *, entropy: bool = False,
                 correct: bool = False) -> TokenStats:
  """`TokenStats` of logits [B, T, V] for targets [B, T].

  The log-softmax is `jax.nn.log_softmax`'s, op for op, but only its value at the
  target is formed: logits - max, minus log-sum-exp, picked before the
  subtraction, so no second [B, T, V] array (the normalized log-probs) is needed.
  """
  x = logits.astype(jnp.float32)
  shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))  # [B, T, 1]
  logp = jnp.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0] - lse[..., 0]
  ent = None
  if entropy:
    logp_all = shifted - lse
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, -1)
  hit = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) if correct else None
  return TokenStats(logp, ent, hit)


def chunked_stats(head: Callable[[jax.Array], jax.Array], hidden: jax.Array,
                  targets: jax.Array, *, chunk: int, entropy: bool = False,
                  correct: bool = False) -> TokenStats:
  """`logits_stats(head(hidden), targets)`, `chunk` positions at a time.

  `head` maps hidden states [B, C, D] to logits [B, C, V]; `targets` [B, T'] are
  those of the first T' positions of `hidden` [B, T, D]. The positions are cut
  into chunks of `chunk` (the last one padded) and a `lax.map` runs the head and
  the log-softmax on one chunk at a time. Each chunk is rematerialized
  (`jax.checkpoint`): the backward pass recomputes a chunk's logits instead of
  keeping every chunk's, so at most [B, chunk, V] logits are live at once.
  """
  b, t = targets.shape
  n = -(-t // chunk)
  pad = n * chunk - t
  x = jnp.pad(hidden[:, :t], ((0, 0), (0, pad), (0, 0)))
  y = jnp.pad(targets, ((0, 0), (0, pad)))
  x = x.reshape(b, n, chunk, x.shape[-1]).swapaxes(0, 1)  # [n, B, C, D]
  y = y.reshape(b, n, chunk).swapaxes(0, 1)  # [n, B, C]

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def one(xy):
    return logits_stats(head(xy[0]), xy[1], entropy=entropy, correct=correct)

  stats = jax.lax.map(one, (x, y))
  unchunk = lambda a: None if a is None else a.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
  return TokenStats(*(unchunk(a) for a in stats))


def token_stats(model: nn.Module, params, tokens: jax.Array, targets: jax.Array, *,
                chunk: int = 0, entropy: bool = False, correct: bool = False,
                values: bool = False, detach_values: bool = False
                ) -> tuple[TokenStats, jax.Array | None]:
  """Per-token log-probs (and entropy, accuracy) of `targets` after each prefix of `tokens`.

  Args:
    model: a `Transformer` or `Made`.
    params: its parameters.
    tokens: [B, T] the model's input.
    targets: [B, T'], T' <= T: the token scored after position t = 0 .. T'-1.
    chunk: positions per chunk of the LM head (`train.logits_chunk`); 0, or
      T' <= chunk, computes the [B, T', V] logits in one piece as before.
    entropy, correct: also return those per-token scalars.
    values, detach_values: also return the value head's [B, T] output (as in
      `Transformer.__call__`), from the same forward pass.

  A model with an `lm_head` method (the transformer) is chunked: its trunk runs
  once (`hidden=True`, no logits) and `chunked_stats` applies the head to chunks
  of positions, so no [B, T, V] float32 tensor is built at a large vocabulary.
  The MADE has no such method: its one-hot input is [B, L, V] already, and it
  takes the full logits. Both paths give the same numbers up to float32
  round-off (`tests/test_memory.py`).

  Returns:
    (TokenStats, values [B, T] or None).
  """
  t = targets.shape[1]
  if not chunk or t <= chunk or not hasattr(model, "lm_head"):
    out = model.apply({"params": params}, tokens, values=values, detach_values=detach_values)
    stats = logits_stats(out.logits[:, :t], targets, entropy=entropy, correct=correct)
    return stats, out.values
  out = model.apply({"params": params}, tokens, logits=False, hidden=True, values=values,
                    detach_values=detach_values)
  head = lambda h: model.apply({"params": params}, h, method="lm_head")
  stats = chunked_stats(head, out.hidden, targets, chunk=chunk, entropy=entropy,
                        correct=correct)
  return stats, out.values


def masked_cross_entropy(stats: TokenStats, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean NLL, token accuracy) over masked positions; a zero mask gives a finite 0."""
  denom = jnp.maximum(mask.sum(), 1.0)
  return (-stats.logp * mask).sum() / denom, (stats.correct * mask).sum() / denom


def token_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array):
  """Mean next-token NLL over masked positions; a zero mask gives a finite 0."""
  return masked_cross_entropy(logits_stats(logits, targets, correct=True), mask)


def sequence_cross_entropy(model: nn.Module, params, inputs: jax.Array, targets: jax.Array,
                           mask: jax.Array, *, chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """`token_cross_entropy` of the model on `inputs`, its LM head run in chunks of
  `chunk` positions (`token_stats`): (mean NLL, token accuracy)."""
  stats, _ = token_stats(model, params, inputs, targets, chunk=chunk, correct=True)
  return masked_cross_entropy(stats, mask)


DIVERGENCE_ACTIONS = ("stop", "warn", "off")


class DivergenceError(FloatingPointError):
  """Raised by `DivergenceMonitor` under train.divergence='stop', naming the step."""


class DivergenceMonitor:
  """Divergence the non-finite guard cannot see, because every number stays finite.

  Two signals, judged step by step on the host copies of the metrics the train
  loop fetches anyway (a skipped non-finite step is not judged):

  * a sustained spike: a loss above `median + factor * max(|median|, MAD)` of the
    previous `window` losses (MAD: median absolute deviation) for `patience`
    steps in a row. Judged once the history holds min(window, 20) losses, and
    only while it has a scale (> 0). For a positive loss (cross-entropy, MSE) the
    margin is at least `factor` times the median; for a loss centred near 0 (the
    RL surrogate) it is `factor` MADs. One bad batch is not divergence: a small
    verifier batch can read 13x its median once and train on;
  * a dead update: a gradient norm of exactly 0 for `zero_grad_steps` steps in a
    row (AdamW at lr=1e3 saturates the network: finite loss, zero gradients).

  Under 'stop' the first event raises `DivergenceError`; the train loop writes no
  periodic checkpoint while a spike streak is open (`holding`), so the newest
  checkpoint predates the streak. Under 'warn' an event is logged (a spike at
  most once per window, a dead streak once) and kept in `events`. The history
  starts empty on a resume, so the spike rule waits for its minimum history again.
  """

  def __init__(self, action: str, factor: float, window: int, zero_grad_steps: int,
               patience: int = 1):
    self.action, self.factor, self.zero_grad_steps = action, factor, zero_grad_steps
    self.window, self.patience = window, patience
    self.spike_streak = 0  # consecutive steps above the threshold
    self.min_history = min(window, 20)
    self.losses: list[float] = []
    self.zero_streak = 0
    self.events: list[tuple[int, str]] = []
    self._last_spike_warning = -window

  @classmethod
  def from_config(cls, train_cfg) -> "DivergenceMonitor":
    action = train_cfg.get("divergence", "off")
    if action == "off":
      return cls("off", 1.0, 2, 1)
    return cls(action, float(train_cfg.divergence_factor), int(train_cfg.divergence_window),
               int(train_cfg.zero_grad_steps), int(train_cfg.get("divergence_patience", 1)))

  @property
  def holding(self) -> bool:
    """True while a spike streak is open under 'stop': checkpoints wait for its verdict."""
    return self.action == "stop" and self.spike_streak > 0

  def _spike(self, loss: float) -> str | None:
    if len(self.losses) < self.min_history:
      return None
    history = np.asarray(self.losses[-self.window:])
    median = float(np.median(history))
    scale = max(abs(median), float(np.median(np.abs(history - median))))
    if scale <= 0 or loss <= median + self.factor * scale:
      return None
    return (f"loss {loss:.6g} is far above its running median {median:.6g} over the last "
            f"{len(history)} steps (threshold median + {self.factor:g} x {scale:.4g})")

  def update(self, step: int, loss: float, grad_norm: float) -> str | None:
    """Judges one step; returns the event's message (None when the step looks sane)."""
    if self.action == "off":
      return None
    message = self._spike(loss)
    self.spike_streak = self.spike_streak + 1 if message else 0
    if message and self.spike_streak < self.patience:
      message = None
    elif message and self.patience > 1:
      message += f", {self.spike_streak} steps in a row since step {step - self.spike_streak + 1}"
    self.losses.append(loss)
    del self.losses[:-self.window]
    self.zero_streak = self.zero_streak + 1 if grad_norm == 0.0 else 0
    if message is None and self.zero_streak == self.zero_grad_steps:
      message = (f"gradient norm exactly 0 for {self.zero_streak} steps in a row: the update "
                 "does nothing (a learning rate far too high saturates the network; so does "
                 "a reward that is 0 for every sample)")
    if message is None:
      return None
    message = f"training diverged at step {step}: {message}"
    self.events.append((step, message))
    if self.action == "stop":
      raise DivergenceError(message + " (train.divergence='stop'; no checkpoint of this step "
                            "was written; 'warn' logs and goes on)")
    if "median" not in message or step - self._last_spike_warning >= self.window:
      logging.warning("%s (train.divergence='warn')", message)
      if "median" in message:
        self._last_spike_warning = step
    return message


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

  Finite divergence is watched by `DivergenceMonitor` (`train.divergence`).

  Returns (state, last logged means). When no step is left to run (a job rerun
  after its final checkpoint), the means are the record the writer holds for the
  state's step, so a rerun reports what the run that trained it logged.
  """
  start = int(jax.device_get(state.step))
  total = train_cfg.num_steps
  halt = train_cfg.halt_at_step
  pending: list[Mapping[str, Any]] = []
  consecutive_bad = 0
  last: dict[str, float] = {}
  divergence = DivergenceMonitor.from_config(train_cfg)
  t_last = time.time()
  bar = metrics.progress(total, initial=start, desc=desc)
  in_flight = None  # metrics of the newest dispatched step the bar has not counted

  def flush(step: int):
    nonlocal consecutive_bad, last, t_last
    if not pending:
      return
    host = jax.device_get(list(pending))
    means, bad = metrics.reduce_metrics(host)
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
    for i, m in enumerate(host):
      if i not in bad and "train/loss" in m and "train/grad_norm" in m:
        divergence.update(first + i, float(m["train/loss"]), float(m["train/grad_norm"]))
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
      if (checkpointer.should_save(step) and not divergence.holding) or is_last:
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
  if not last:  # nothing ran (a rerun after the last step): the stored record of the end
    last = writer.record(start)
  return state, last


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The examples of step `step`: a pure function of (seed, step), so resumes are exact."""
  rng = np.random.default_rng([seed, step])
  return rng.choice(num_examples, batch_size, replace=num_examples < batch_size)
