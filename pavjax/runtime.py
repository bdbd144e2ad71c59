"""What every job sets up the same way: task, mesh, model, trainer, checkpoint params.

Each job owns its step function and data; this module builds the environment they
run in (`setup`), the train state with its jitted step (`make_trainer`) and frozen
parameters of another run (`load_params`). The train loop is `training.train_loop`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from pavjax import checkpoint as ckpt_lib
from pavjax import config_lib
from pavjax import models
from pavjax import run_record
from pavjax import sharding as shd
from pavjax import tasks
from pavjax import training
from pavjax.tasks import hf_tokenizer


@dataclasses.dataclass
class JobEnv:
  config: ml_collections.ConfigDict
  workdir: str
  task: tasks.Task
  mesh: jax.sharding.Mesh
  rules: tuple
  model_cfg: models.ModelConfig  # TransformerConfig or MadeConfig (config.model.arch)
  model: nn.Module  # Transformer or Made: same call signature and ModelOutput
  # Seconds over attempts and values computed once per workdir (`<workdir>/run.json`).
  record: run_record.RunRecord | None = None


def setup(config: ml_collections.ConfigDict, workdir: str) -> JobEnv:
  """Validates the config against the task and devices, builds mesh and model."""
  workdir = config_lib.check_workdir(workdir)
  task = tasks.make_task(config.task, workdir)
  config_lib.resolve_task_lengths(config, task, workdir)  # lengths at 0: from the task
  config_lib.validate(config, jax.device_count(), prompt_len=task.max_prompt_len)
  mesh = shd.make_mesh(dict(config.mesh))
  rules = shd.rules_from_config(config.rules)
  try:
    model_cfg = models.model_config_from(config.model, task.vocab_size, task.action_ids)
  except (ValueError, OSError) as e:
    if config.model.get("source", "") != "hf":
      raise
    raise config_lib.ConfigError("model.path", str(e)) from None
  logging.info("job %s: task %s, %s with %d params, mesh %s", config.job, task.name,
               models.arch_of(config.model), model_cfg.num_params(), dict(mesh.shape))
  return JobEnv(config, workdir, task, mesh, rules, model_cfg, models.build_model(model_cfg),
                run_record.RunRecord(workdir))


@dataclasses.dataclass
class Trainer:
  """What a training job needs once its data is ready: state, step, checkpoints."""

  spec: Any  # training.StateSpec
  checkpointer: ckpt_lib.Checkpointer
  state: Any  # training.TrainState, restored or fresh
  origin: str  # where this attempt's state came from (checkpoint step, init_from, scratch)
  step_fn: Callable  # (state, batch) -> (state, metrics), jitted with the state donated
  # Where the run's first attempt started from: what its summary reports, resumed or not.
  run_origin: str = ""


def make_trainer(env: JobEnv, step: Callable, *, state_model: nn.Module | None = None,
                 wrap_init: Callable[[Any], Any] | None = None,
                 wrap_tx: Callable[[optax.GradientTransformation], Any] | None = None
                 ) -> Trainer:
  """Optimizer, sharded state (resumed if the workdir has a checkpoint), jitted step.

  Args:
    env: from `setup`.
    step: `step(state, batch, *, model, tx, nonfinite)` (extra keywords bound by
      the caller with functools.partial); `model` is `env.model`.
    state_model: the module whose parameters the state holds, when it is not
      `env.model` (RL's `models.PolicyAndValue`).
    wrap_init: maps the parameters `init_from` gives (a tree of `env.model`) to
      the state's.
    wrap_tx: maps the config's optimizer to the one the state uses.
  """
  config = env.config
  tx = training.make_optimizer(config.optim, config.train.num_steps)
  if wrap_tx is not None:
    tx = wrap_tx(tx)
  dp = shd.data_parallel_size(env.mesh)
  spec = training.train_state_spec(state_model or env.model, tx, config.seed,
                                   jnp.zeros((dp, 8), jnp.int32), env.mesh, env.rules)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(env.workdir, "checkpoints"),
                                       every=config.checkpoint.every, keep=config.checkpoint.keep,
                                       async_save=config.checkpoint.async_save,
                                       fallback_on_corrupt=config.checkpoint.fallback_on_corrupt)
  load = functools.partial(load_params, env, field="init_from")
  state, origin = training.restore_or_init(
      spec, checkpointer, config.init_from,
      load_params=load if wrap_init is None else lambda path: wrap_init(load(path)))
  logging.info("%s state from %s", config.job, origin)
  bound = functools.partial(step, model=env.model, tx=tx, nonfinite=config.train.nonfinite)
  jitted = None

  def step_fn(state, batch):
    # Jitted at the first batch: each leaf is split over the data-parallel axes by
    # its leading dimension, whatever its rank ([B], [B, T], [B, T, K], ...).
    nonlocal jitted
    if jitted is None:
      leaf_shardings = jax.tree.map(lambda x: shd.batch_sharding(env.mesh, x.ndim), batch)
      jitted = jax.jit(bound, in_shardings=(spec.shardings, leaf_shardings),
                       out_shardings=(spec.shardings, None), donate_argnums=(0,))
    return jitted(state, batch)

  run_origin = origin
  if env.record is not None:
    run_origin = env.record.once("origin", lambda: origin)
    env.record.note_origin(origin)
  return Trainer(spec, checkpointer, state, origin, step_fn, run_origin)


is_hf_checkpoint = config_lib.is_hf_checkpoint


@dataclasses.dataclass
class LoadedModel:
  """A frozen model another run trained: its own architecture and its parameters."""

  model: nn.Module
  model_cfg: models.ModelConfig
  params: Any
  path: str

  @property
  def num_params(self) -> int:
    return self.model_cfg.num_params()


def load_model(env: JobEnv, path: str, field: str) -> LoadedModel:
  """A checkpoint's model (its own family and size) with its parameters.

  Policy, prover and verifiers may differ in size: a 9B policy scored by a verifier
  on a 2B backbone, completed by a 2B prover (arXiv 2410.08146, Sec. 5). The model
  that `path` holds is read from the checkpoint (`checkpoint_model_section`); it
  must embed the task's token ids. When it is the job's own model, `env.model` is
  reused (one compiled program for both).
  """
  if not path:
    raise config_lib.ConfigError(field, "needs a checkpoint directory")
  section = config_lib.checkpoint_model_section(path, env.config.model)
  try:
    model_cfg = models.model_config_from(section, env.task.vocab_size, env.task.action_ids)
  except (ValueError, OSError) as e:
    raise config_lib.ConfigError(field, f"{path}: {e}") from None
  if model_cfg == env.model_cfg:
    return LoadedModel(env.model, env.model_cfg, load_params(env, path, field), path)
  other = dataclasses.replace(env, model_cfg=model_cfg, model=models.build_model(model_cfg))
  logging.info("%s: %s, %d params (the job's own model has %d)", field, path,
               model_cfg.num_params(), env.model_cfg.num_params())
  return LoadedModel(other.model, model_cfg, load_params(other, path, field), path)


def _check_same_tokenizer(env: JobEnv, path: str, field: str) -> None:
  """A Hugging Face checkpoint with its own tokenizer must share the task's token ids.

  Models of one family and tokenizer (Qwen2.5 0.5B and 7B, Gemma 2 2B and 9B) can
  score and continue each other's text; a checkpoint whose ids mean other text
  would run without error and be silently wrong.
  """
  task_tok = getattr(env.task, "tokenizer", None)
  if not isinstance(task_tok, hf_tokenizer.PretrainedTokenizer) or not is_hf_checkpoint(path):
    return
  try:
    theirs = hf_tokenizer.load_tokenizer(path)
  except FileNotFoundError:
    return  # weights only: the task's tokenizer is the only one there is
  if theirs.vocab_size != task_tok.vocab_size:
    raise config_lib.ConfigError(field, f"{path}: its tokenizer has {theirs.vocab_size} ids, "
                                 f"the task's {task_tok.vocab_size}; policy, prover and "
                                 "verifiers must share one tokenizer")
  for i in range(task_tok.vocab_size):
    a, b = task_tok.id_to_token(i), theirs.id_to_token(i)
    if a != b:
      raise config_lib.ConfigError(
          field, f"{path}: its tokenizer differs from the task's at id {i} ({b!r} vs "
          f"{a!r}); policy, prover and verifiers must share one tokenizer")


def load_params(env: JobEnv, path: str, field: str):
  """Parameters of a checkpoint of the config's model, placed with the config's shardings.

  `path` is an orbax checkpoints directory (a pavjax workdir's `checkpoints/`) or a
  Hugging Face checkpoint directory (safetensors, read straight into the shardings).
  `field` names the config field that gave `path`, for the error when it is empty.
  """
  if not path:
    raise config_lib.ConfigError(field, "needs a checkpoint directory")
  if is_hf_checkpoint(path):
    _check_same_tokenizer(env, path, field)
    from pavjax.models import hf  # pylint: disable=g-import-not-at-top
    if not isinstance(env.model_cfg, models.TransformerConfig):
      raise config_lib.ConfigError(field, f"{path} is a Hugging Face checkpoint; the config's "
                                   "model is not a transformer")
    try:
      return hf.load_params(path, env.model_cfg, env.mesh, env.rules)
    except hf.HFCheckpointError as e:
      raise config_lib.ConfigError(field, str(e)) from None
  dp = shd.data_parallel_size(env.mesh)
  abstract = training.params_spec(env.model, jnp.zeros((dp, 8), jnp.int32), env.mesh, env.rules)
  return ckpt_lib.restore_params(path, abstract)
