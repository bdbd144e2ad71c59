"""Pieces every job shares: environment set-up and the guarded train loop.

Each job owns its step function and data; this module owns the mechanics that
must behave the same everywhere (mesh, metric fetching, the non-finite guard,
checkpoint cadence, preemption-style halts).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from pavjax import checkpoint as ckpt_lib
from pavjax import config_lib
from pavjax import metrics
from pavjax import models
from pavjax import sharding as shd
from pavjax import tasks
from pavjax import training


@dataclasses.dataclass
class JobEnv:
  config: ml_collections.ConfigDict
  workdir: str
  task: tasks.Task
  mesh: jax.sharding.Mesh
  rules: tuple
  model_cfg: models.ModelConfig  # TransformerConfig or MadeConfig (config.model.arch)
  model: nn.Module  # Transformer or Made: same call signature and ModelOutput


def setup(config: ml_collections.ConfigDict, workdir: str) -> JobEnv:
  """Validates the config against the task and devices, builds mesh and model."""
  workdir = config_lib.check_workdir(workdir)
  task = tasks.make_task(config.task, workdir)
  config_lib.validate(config, jax.device_count(), prompt_len=task.max_prompt_len)
  mesh = shd.make_mesh(dict(config.mesh))
  rules = shd.rules_from_config(config.rules)
  model_cfg = models.model_config_from(config.model, task.vocab_size)
  logging.info("job %s: task %s, %s with %d params, mesh %s", config.job, task.name,
               models.arch_of(config.model), model_cfg.num_params(), dict(mesh.shape))
  return JobEnv(config, workdir, task, mesh, rules, model_cfg, models.build_model(model_cfg))


@dataclasses.dataclass
class Trainer:
  """What a training job needs once its data is ready: state, step, checkpoints."""

  spec: Any  # training.StateSpec
  checkpointer: ckpt_lib.Checkpointer
  state: Any  # training.TrainState, restored or fresh
  origin: str  # where the state came from (checkpoint step, init_from, scratch)
  step_fn: Callable  # jitted (state, batch) -> (state, metrics), state donated


def make_trainer(env: JobEnv, step: Callable) -> Trainer:
  """Optimizer, sharded state (resumed if the workdir has a checkpoint), jitted step.

  Args:
    env: from `setup`.
    step: `step(state, batch, *, model, tx, nonfinite)` (extra keywords bound by
      the caller with functools.partial).
  """
  config = env.config
  tx = training.make_optimizer(config.optim, config.train.num_steps)
  dp = shd.data_parallel_size(env.mesh)
  spec = training.train_state_spec(env.model, tx, config.seed, jnp.zeros((dp, 8), jnp.int32),
                                   env.mesh, env.rules)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(env.workdir, "checkpoints"),
                                       every=config.checkpoint.every, keep=config.checkpoint.keep,
                                       async_save=config.checkpoint.async_save,
                                       fallback_on_corrupt=config.checkpoint.fallback_on_corrupt)
  state, origin = training.restore_or_init(spec, checkpointer, config.init_from)
  logging.info("%s state from %s", config.job, origin)
  step_fn = jax.jit(
      functools.partial(step, model=env.model, tx=tx, nonfinite=config.train.nonfinite),
      in_shardings=(spec.shardings, shd.batch_sharding(env.mesh, 2)),
      out_shardings=(spec.shardings, None), donate_argnums=(0,))
  return Trainer(spec, checkpointer, state, origin, step_fn)


def load_params(env: JobEnv, path: str, field: str):
  """Parameters of a checkpoint of the config's model, placed with the config's shardings.

  `field` names the config field that gave `path`, for the error when it is empty.
  """
  if not path:
    raise config_lib.ConfigError(field, "needs a checkpoint directory")
  dp = shd.data_parallel_size(env.mesh)
  abstract = training.params_spec(env.model, jnp.zeros((dp, 8), jnp.int32), env.mesh, env.rules)
  return ckpt_lib.restore_params(path, abstract)


def write_json(path: str, obj: Any) -> None:
  """Atomically writes JSON (process 0 only): a reader never sees half a file."""
  if not metrics.is_lead_process():
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=float)
    f.write("\n")
  os.replace(tmp, path)


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
