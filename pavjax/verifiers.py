"""Verifiers: the transformer trunk plus its scalar head, read at step boundaries.

A causal model scores every prefix of a response in one forward pass: the value
head's output at the last token of a prefix is the logit of that prefix's Q. The
question-only prefix ends on the last prompt token (column 0), step h's prefix on
step h's last token (column h).

Kinds (PAPER.md section 1):
  orm    predicts the outcome Rex from the whole response (read at its end);
  q      predicts Q of every prefix under the policy that made the rollouts
         (PRM-Q when that policy is the base policy; Q^mu for a prover);
  pav    the effective reward Q^pi + alpha * A^mu, composed from a `q` verifier of
         the base policy and a prover: Best-of-K in closed form, another `q`
         verifier, or exact values (`pav_step_scores`).
"""

from __future__ import annotations

import functools
import hashlib
import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards
from pavjax import rollout_data
from pavjax.models import Transformer


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


def prefix_ids(tokens: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """An id per prefix: a hash of its tokens (up to and including its position).

  Equal ids are the same text, whichever seed wrote it. The parent of column
  h >= 1 is column h - 1. Returns [N, P] int64 (-1 where absent).
  """
  n, p = positions.shape
  out = np.full((n, p), -1, np.int64)
  for i in range(n):
    for col in range(p):
      if not mask[i, col]:
        continue
      end = int(positions[i, col]) + 1
      digest = hashlib.blake2b(np.asarray(tokens[i, :end], np.int32).tobytes(), digest_size=8)
      out[i, col] = int.from_bytes(digest.digest(), "little", signed=True)
  return out


def evaluate_predictions(pred: np.ndarray, data: dict, positions: np.ndarray,
                         mask: np.ndarray, num_bins: int = 10,
                         prior: float | None = None) -> dict[str, float]:
  """Held-out metrics of predicted prefix Q against the dataset's Q_hat.

  Calibration, MSE and BCE over every prefix; sign accuracy of predicted
  advantages; rank correlation and pair accuracy among siblings (distinct steps
  from one parent prefix, the choice a beam search makes), ranked by Q with the
  copies of one step that several seeds wrote merged into one candidate. With
  `prior` (e.g. the mean training label), `constant/mse` is the MSE of
  predicting it everywhere: the baseline a verifier must beat.
  """
  target = data["q_hat"]
  valid = mask & np.isfinite(target)
  p = np.clip(pred[valid], 1e-6, 1 - 1e-6)
  t = target[valid]
  cal = rewards.calibration_table(pred[valid], t, num_bins)
  out = {"mse": float(np.mean((pred[valid] - t) ** 2)),
         "bce": float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))),
         "ece": float(cal.ece), "num_prefixes": int(valid.sum())}
  if prior is not None:
    out["constant/mse"] = float(np.mean((prior - t) ** 2))
  step_valid = valid[:, 1:] & valid[:, :-1]
  out["siblings/sign_accuracy"] = rewards.sign_accuracy(
      pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1], step_valid)
  ids = prefix_ids(data["tokens"], positions, mask)
  steps = valid[:, 1:]  # column h >= 1: a step, its parent is column h - 1
  sib = rewards.sibling_metrics(pred[:, 1:][steps], target[:, 1:][steps], ids[:, :-1][steps],
                                step_ids=ids[:, 1:][steps])
  out.update({f"siblings/{k}": float(v) for k, v in sib.items()})
  return out


def prefix_arrays(data: dict, columns: str = "all") -> tuple[np.ndarray, np.ndarray]:
  """Positions and mask of the prefixes a verifier kind trains on.

  `columns='all'` (q verifiers): every prefix; `'last'` (ORM): the terminal one.
  """
  positions, mask = rollout_data.prefix_positions(data)
  if columns == "last":
    last = np.zeros_like(mask)
    last[np.arange(len(mask)), data["num_steps"]] = True
    mask = mask & last
  elif columns != "all":
    raise ValueError(f"columns={columns!r} is not 'all' or 'last'")
  return positions, mask

