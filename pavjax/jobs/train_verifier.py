"""Verifier training on a rollout dataset: ORM or Q (PRM-Q / prover Q^mu).

Loss (arXiv 2410.08146, Sec. 4.2, App. D): soft-label binary cross-entropy of the value-head logit
at every prefix end against Q_hat (or MSE), one causal forward per sequence.
Balancing: within each batch, prefixes with Q_hat < 0.5 and those with Q_hat >= 0.5
each carry half of the loss weight (the paper balances its batches between the
two; reweighting does the same without dropping prefixes that share a sequence).

Constant labels: when every training label (Q_hat of each training prefix for kind=q,
the outcome for kind=orm) is 0, or every one is 1, the verifier can only learn a
constant. The job still trains, but logs a warning and writes the value as
`constant_labels` in summary.json (None otherwise); the pipeline report flags it.

Writes checkpoints/, metrics.jsonl, eval.jsonl, calibration.png, summary.json.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pavjax import artifacts
from pavjax import config_lib
from pavjax import metrics
from pavjax import rewards
from pavjax import sharding as shd
from pavjax import tasks
from pavjax import training
from pavjax import verifiers
from pavjax import runtime
from pavjax import trajectories

def balanced_weights(targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-prefix weights giving the Q_hat < 0.5 and >= 0.5 groups equal total weight.

  Each non-empty group sums to 1/(number of non-empty groups); an all-masked
  batch gives all-zero weights (and the loss a finite 0).
  """
  mask = mask.astype(jnp.float32)
  high = (targets >= 0.5).astype(jnp.float32) * mask
  low = mask - high
  n_high, n_low = high.sum(), low.sum()
  groups = (n_high > 0).astype(jnp.float32) + (n_low > 0).astype(jnp.float32)
  w = high / jnp.maximum(n_high, 1.0) + low / jnp.maximum(n_low, 1.0)
  return w / jnp.maximum(groups, 1.0)


def verifier_train_step(state: training.TrainState, batch, *, model, tx, loss: str,
                        balance: bool, nonfinite: str):
  """One step on [B, T] sequences with targets at [B, P] prefix positions."""

  def loss_fn(params):
    logits = verifiers.prefix_logits(model, params, batch["tokens"], batch["positions"])
    targets = jnp.nan_to_num(batch["targets"])
    mask = batch["mask"]
    weights = balanced_weights(targets, mask) if balance else mask.astype(jnp.float32)
    value = rewards.Q_LOSSES[loss](logits, targets, mask, weights)
    mse = rewards.sigmoid_mse_loss(logits, targets, mask)
    return value, mse

  (value, mse), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state, grad_norm = training.apply_update(state, grads, tx, loss=value, nonfinite=nonfinite)
  return new_state, {"train/loss": value, "train/mse": mse, "train/grad_norm": grad_norm}


KINDS = ("q", "orm")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every field this job reads, checked before any compute; errors name the field."""
  config_lib.validate(config, num_devices)
  v = config.verifier
  config_lib.check_choice(v.kind, KINDS, "verifier.kind")
  config_lib.check_choice(v.loss, tuple(sorted(rewards.Q_LOSSES)), "verifier.loss")
  config_lib.check_set(v.train_data, "verifier.train_data", "needs a rollouts table dir")
  config_lib.check(v.eval_batch_size > 0, "verifier.eval_batch_size", "must be > 0")


def examples(table: trajectories.Trajectories, kind: str) -> dict[str, np.ndarray]:
  """Training arrays of a verifier kind: tokens, prefix positions, mask, soft targets."""
  mask = verifiers.training_prefixes(table, kind)
  positions = table.prefix_ends
  label = table.outcome[:, None] if kind == "orm" else table["q_hat"]
  targets = np.where(mask, label, 0.0).astype(np.float32)
  tokens = table.tokens.astype(np.int32)
  # Causal: the columns after the last prefix read change no value.
  tokens = tokens[:, :tasks.covering_width(int(positions.max(initial=0)), tokens.shape[1])]
  return {"tokens": tokens, "positions": positions.astype(np.int32), "mask": mask,
          "targets": targets}


def constant_labels(train: dict[str, np.ndarray]) -> float | None:
  """0.0 or 1.0 when every training label (target at a masked-in prefix) is that value, else
  None (also when there is no training prefix at all)."""
  labels = train["targets"][train["mask"]]
  for value in (0.0, 1.0):
    if labels.size and np.all(labels == value):
      return value
  return None


def constant_labels_message(kind: str, value: float) -> str:
  """The warning logged for a verifier whose training labels are all `value`."""
  what = "prefix's Q_hat" if kind == "q" else "sequence's outcome"
  why = "the policy never succeeded" if value == 0.0 else "the policy always succeeded"
  return (f"all training labels are {value:g}: the verifier can only learn a constant; {why} "
          f"(verifier.kind={kind}: every training {what} is {value:g})")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the verifier named by `config.verifier.kind` on `config.verifier.train_data`."""
  env = runtime.setup(config, workdir)
  vcfg = config.verifier
  train = examples(trajectories.load(vcfg.train_data), vcfg.kind)
  width = train["tokens"].shape[1]
  if width > config.model.max_len:
    raise config_lib.ConfigError("model.max_len", f"{config.model.max_len} < rollout width {width}")
  logging.info("verifier %s: %d sequences, %d prefixes", vcfg.kind, len(train["tokens"]),
               int(train["mask"].sum()))
  constant = constant_labels(train)
  if constant is not None:
    logging.warning("%s", constant_labels_message(vcfg.kind, constant))

  mesh, rules, model = env.mesh, env.rules, env.model
  trainer = runtime.make_trainer(env, functools.partial(
      verifier_train_step, loss=vcfg.loss, balance=vcfg.balance))
  state, checkpointer = trainer.state, trainer.checkpointer

  def batch_fn(step, _):
    idx = training.batch_indices(config.seed, step, len(train["tokens"]), config.train.batch_size)
    return shd.shard_batch({k: v[idx] for k, v in train.items()}, mesh)

  eval_data = trajectories.load(vcfg.eval_data) if vcfg.eval_data else None
  # The baseline a verifier must beat: predict the mean training label everywhere.
  prior = float(train["targets"][train["mask"]].mean())
  eval_writer = metrics.MetricWriter(env.workdir, "eval")

  def eval_fn(st, step):
    if eval_data is None:
      return {}
    pred = verifiers.predict_table(model, st.params, eval_data, mesh, vcfg.eval_batch_size)
    if vcfg.kind == "orm":
      target = eval_data.outcome
      last = pred[np.arange(len(pred)), trajectories.num_steps(eval_data)]
      result = {"mse": float(np.mean((last - target) ** 2)),
                "accuracy": float(np.mean((last >= 0.5) == (target >= 0.5))),
                "constant/mse": float(np.mean((prior - target) ** 2)),
                "constant/accuracy": float(np.mean((prior >= 0.5) == (target >= 0.5)))}
      rows = np.ones((len(last), 1), bool)
      result.update(verifiers.constant_gain(eval_data.problem, rows, last[:, None],
                                            np.full((len(last), 1), prior), target[:, None]))
    else:
      result = verifiers.evaluate_predictions(pred, eval_data, prior=prior)
    eval_writer.write(step, {f"eval/{k}": v for k, v in result.items()})
    return result

  writer = metrics.MetricWriter(env.workdir, "metrics")
  with shd.activate(mesh, rules):
    state, last = training.train_loop(state, trainer.step_fn, batch_fn, train_cfg=config.train,
                                    checkpointer=checkpointer, writer=writer, eval_fn=eval_fn,
                                    desc=f"verifier/{vcfg.kind}")
    step = int(jax.device_get(state.step))
    result = eval_fn(state, step)
  checkpointer.close()
  writer.close()
  eval_writer.close()
  if metrics.is_lead_process():
    metrics.plot_curves(metrics.read_jsonl(writer.path), ["train/loss", "train/mse"],
                        os.path.join(env.workdir, "loss.png"), title=f"verifier ({vcfg.kind})")
  out = {"job": "train_verifier", "kind": vcfg.kind, "step": step, "origin": trainer.run_origin,
         "train_data": vcfg.train_data, "eval_data": vcfg.eval_data,
         "budget": (trajectories.read_manifest(vcfg.train_data) or {}).get("budget", {}),
         "final_train": last, "eval": result, "constant_labels": constant,
         "params": env.model_cfg.num_params(),
         "seconds": env.record.seconds()}
  artifacts.write_json(os.path.join(env.workdir, artifacts.SUMMARY), out)
  return out
