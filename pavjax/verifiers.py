"""Verifiers: the transformer trunk plus its scalar head, read at step boundaries.

A causal model scores every prefix of a response in one forward pass: the value
head's output at the last token of a prefix is the logit of that prefix's Q. The
question-only prefix ends on the last prompt token (column 0), step h's prefix on
step h's last token (column h).

Kinds (arXiv 2410.08146, Sec. 3):
  orm    predicts the outcome Rex from the whole response (read at its end);
  q      predicts Q of every prefix under the policy that made the rollouts
         (PRM-Q when that policy is the base policy; Q^mu for a prover);
  pav    the effective reward Q^pi + alpha * A^mu, composed from a `q` verifier of
         the base policy and a prover: Best-of-K in closed form, another `q`
         verifier, or exact values (`pav_step_scores`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards
from pavjax import sharding as shd
from pavjax import stats
from pavjax import trajectories
from pavjax.models import Transformer
from pavjax.tasks import covering_width


def prefix_logits(model: Transformer, params, tokens: jax.Array, positions: jax.Array
                  ) -> jax.Array:
  """Value-head logits at `positions` [B, P] of right-padded `tokens` [B, T] (-1 = none)."""
  values = model.apply({"params": params}, tokens, logits=False, values=True).values  # [B, T]
  gathered = jnp.take_along_axis(values, jnp.maximum(positions, 0), axis=1)
  return jnp.where(positions >= 0, gathered, 0.0)


@functools.partial(jax.jit, static_argnums=(0,))
def score(model: Transformer, params, tokens: jax.Array, positions: jax.Array) -> jax.Array:
  """Predicted Q in [0, 1] of every prefix ending at `positions` (0 where absent).

  Jitted with the model static (modules with equal configs hash equal, so one
  compile per model and shape); search and RL call it between sampling steps.
  Shardings follow the inputs: params as trained, tokens split over the batch.
  """
  return jnp.where(positions >= 0, jax.nn.sigmoid(prefix_logits(model, params, tokens,
                                                                  positions)), 0.0)


def pav_step_scores(q_pi: jax.Array, q_mu: jax.Array, mask: jax.Array, alpha: float
                    ) -> jax.Array:
  """Effective reward of each step from per-prefix values (column 0 = question).

  Args:
    q_pi: [B, P] base-policy Q of each prefix (column h = after step h).
    q_mu: [B, P] prover Q of the same prefixes, e.g. `rewards.bok_q(q_pi, 4)`.
    mask: [B, P] which prefixes exist (a prefix mask: question, then steps).
    alpha: weight of the advantage term.

  Returns:
    [B, P - 1]: step h's `Q^pi(s_h, a_h) + alpha * A^mu(s_h, a_h)`, 0 for absent steps.
  """
  steps_mask = mask[:, 1:]
  adv = rewards.step_advantages(q_mu[:, 1:], q_mu[:, 0], steps_mask)
  return rewards.effective_reward(q_pi[:, 1:], adv, alpha, steps_mask)


def evaluate_predictions(pred: np.ndarray, table: trajectories.Trajectories, num_bins: int = 10,
                         prior: float | None = None) -> dict[str, float]:
  """Held-out metrics of predicted prefix Q [B, H+1] against the table's `q_hat` column.

  Calibration, MSE and BCE over every prefix; sign accuracy of predicted
  advantages; rank correlation and pair accuracy among siblings (distinct steps
  from one parent prefix, the choice a beam search makes), ranked by Q with the
  copies of one step that several seeds wrote merged into one candidate. With
  `prior` (e.g. the mean training label), `constant/mse` is the MSE of
  predicting it everywhere: the baseline a verifier must beat.

  Two claims carry 95% intervals (`pavjax.stats`), each over independent units:
  `constant_gain` (the constant's squared error minus the verifier's, averaged per
  problem: see `constant_gain`; > 0 when the verifier beats the constant) and
  `siblings/parent_pair_accuracy` (each parent's fraction of sibling pairs ordered
  right, averaged over parents; > 0.5 when it ranks better than chance). Each has
  `/low`, `/high` and `/n` keys.
  """
  target = table["q_hat"]
  valid = trajectories.prefix_mask(table) & np.isfinite(target)
  p = np.clip(pred[valid], 1e-6, 1 - 1e-6)
  t = target[valid]
  cal = rewards.calibration_table(pred[valid], t, num_bins)
  out = {"mse": float(np.mean((pred[valid] - t) ** 2)),
         "bce": float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))),
         "ece": float(cal.ece), "num_prefixes": int(valid.sum())}
  if prior is not None:
    out["constant/mse"] = float(np.mean((prior - t) ** 2))
    out.update(constant_gain(table.problem, valid, pred, np.full_like(pred, prior),
                             np.nan_to_num(target)))
  step_valid = valid[:, 1:] & valid[:, :-1]
  out["siblings/sign_accuracy"] = rewards.sign_accuracy(
      pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1], step_valid)
  ids = trajectories.prefix_ids(table)
  steps = valid[:, 1:]  # column h >= 1: a step, its parent is column h - 1
  sib, fractions = rewards.sibling_metrics_with_fractions(
      pred[:, 1:][steps], target[:, 1:][steps], ids[:, :-1][steps], step_ids=ids[:, 1:][steps])
  out.update({f"siblings/{k}": float(v) for k, v in sib.items()})
  if fractions.size:
    out.update(_interval_keys("siblings/parent_pair_accuracy", stats.mean_interval(fractions)))
  return out


def constant_gain(problem: np.ndarray, valid: np.ndarray, pred: np.ndarray,
                  constant: np.ndarray, target: np.ndarray) -> dict[str, float]:
  """How much a verifier beats a constant predictor, with its 95% interval over problems.

  `valid`, `pred`, `constant`, `target`: [B, P] per row (one row per seed response)
  and prefix. Per problem, the mean squared error of `constant` minus that of `pred`
  over the problem's valid prefixes; then the mean over problems and its Student-t
  interval (one problem's prefixes share its question and seeds, so problems are the
  independent units). Returns `constant_gain` with `/low`, `/high`, `/n`: > 0 when the
  verifier is the better predictor. Empty when no prefix is valid.
  """
  rows = valid.sum(axis=1)
  keys = np.asarray(problem)[rows > 0]
  if keys.size == 0:
    return {}
  _, which = np.unique(keys, return_inverse=True)
  counts = np.bincount(which, rows[rows > 0])
  per_problem = lambda err: (np.bincount(which, np.where(valid, err, 0.0).sum(axis=1)[rows > 0])
                             / counts)
  gain = per_problem((constant - target) ** 2) - per_problem((pred - target) ** 2)
  return _interval_keys("constant_gain", stats.t_interval(gain, within=(-1.0, 1.0)))


def _interval_keys(name: str, interval: stats.Interval) -> dict[str, float]:
  return {name: interval.estimate, f"{name}/low": interval.low, f"{name}/high": interval.high,
          f"{name}/n": float(interval.n)}


def training_prefixes(table: trajectories.Trajectories, kind: str) -> np.ndarray:
  """[B, H+1] the prefixes a verifier kind reads: every one (`q`) or the terminal one (`orm`)."""
  if kind == "q":
    return trajectories.prefix_mask(table)
  if kind == "orm":
    return trajectories.prefix_mask(table) & trajectories.last_prefix_mask(table)
  raise ValueError(f"verifier kind {kind!r} is not 'q' or 'orm'")


def predict(model, params, tokens: np.ndarray, positions: np.ndarray, mesh, batch_size: int
            ) -> np.ndarray:
  """Predicted Q at `positions` [N, P] of `tokens` [N, W], in fixed-shape batches (one compile)."""
  batch_size = shd.round_to_data_parallel(batch_size, mesh)
  tokens = tokens[:, :covering_width(int(positions.max(initial=0)), tokens.shape[1])]
  out = []
  for start in range(0, len(tokens), batch_size):
    t = tokens[start:start + batch_size]
    p = positions[start:start + batch_size]
    n = len(t)
    if n < batch_size:  # pad the last batch to the fixed shape
      t = np.concatenate([t, np.zeros((batch_size - n, t.shape[1]), t.dtype)])
      p = np.concatenate([p, -np.ones((batch_size - n, p.shape[1]), p.dtype)])
    batch = shd.shard_batch({"tokens": t, "positions": p}, mesh)
    q = score(model, params, batch["tokens"], batch["positions"])
    out.append(np.asarray(shd.to_host(q))[:n])
  return np.concatenate(out)


def predict_table(model, params, table: trajectories.Trajectories, mesh, batch_size: int
                  ) -> np.ndarray:
  """[B, H+1] predicted Q of every prefix of a table (0 where absent)."""
  return predict(model, params, table.tokens.astype(np.int32), table.prefix_ends, mesh,
                 batch_size)
