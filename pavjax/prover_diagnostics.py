"""Choose a prover before spending RL compute: Theorem 3.1's terms for candidate provers.

Theorem 3.1 (arXiv 2410.08146, Sec. 3.2) bounds one natural-policy-gradient step on
`Q^pi + alpha * A^mu` from below by `lr * (distinguishability + alignment)`; the
terms themselves are `pavjax.rewards.theory`. This module scores provers with them:

* `planted_sweep`: exact, on the didactic planted task (Sec. 3.3), for every
  procedural prover mu_gamma and every Best-of-K prover BoK(pi), with the tabular
  NPG step run exactly for the true one-step `improvement` of V^pi(root).
* `rollout_sweep`: from a rollout trajectory table (`pavjax.trajectories`), for
  BoK(pi) provers, with Monte-Carlo Q_hat of pi standing in for Q^pi.
* `prover_sweep`: the same terms for provers that are other policies
  (checkpoints), from tables of the same seeds rolled out with
  prover.kind=checkpoint, paired row by row with the base table (`check_paired`).

The command line and the findings on the planted task are in
experiments/didactic/ (prover_terms.py, README.md).

Exact model of the planted task. A policy that sees a prefix only through the
KMP state k and the tokens left r is Markov on the finite (k, r) MDP of
`ProceduralProver.markov_values` (success and EOS are absorbing, so prefixes after
success carry A = 0 for every prover and are left out). mu_gamma is Markov there,
and so is every policy the tabular NPG step makes from it: Q^pi of a Markov pi
depends on a prefix only through (k, r), so the prefix-tree NPG update gives
equal rows to prefixes with equal (k, r), and the step on the small MDP *is* the
prefix-tree step.

Stand-in for the base policy: pi = mu_{base_gamma} (default 5), the policy whose
samples the paper's SFT model imitates (App. B: SFT on 3,200 samples of mu_5).
The real SFT policy is a network, neither exactly mu_5 nor Markov in (k, r), and
the paper's RL results (Fig. 3b) run many steps, not one: this is the theorem's
prediction for an idealized SFT policy.

Weighting of states: E_s is the occupancy of pi summed over an episode, d(s) =
sum_h Pr_pi(s_h = s) over live decision states (the performance-difference
weighting, `theory.occupancy_terms`), so `lr * (...)` is on the scale of V(root)
gains; `mass` = sum_s d(s) is the expected number of live decisions.

"First order": the exact NPG gain's derivative at lr = 0 is E_s E_pi[(A^pi)^2] +
alpha * alignment (`theory.npg_first_order_gain`), which the exact `improvement`
approaches for small lr. Distinguishability is the theorem's term, reported as
`predicted = lr * (distinguishability + alignment)` (unit weight on each term, as
in Theorem 3.1) next to the exact numbers.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

from pavjax import trajectories
from pavjax.rewards import targets
from pavjax.rewards import theory
from pavjax.tasks import planted as planted_lib

DEFAULT_GAMMAS = tuple(range(1, 18))
DEFAULT_BOK_KS = (1, 2, 4, 8, 16, 32)
# A prover is flagged "flat" (A^mu ~ 0) when its distinguishability is below this
# fraction of the mu = pi reference E_s E_pi[(A^pi)^2]: it then barely moves the
# NPG step away from outcome-only RL.
FLAT_FRACTION = 0.1


def _x64():
  """float64 for the shared jnp maths: the O(lr^2) checks need more than float32."""
  return jax.enable_x64(True)


def _np(x) -> np.ndarray:
  return np.asarray(jax.device_get(x), np.float64)


# ----------------------------------------------------------------------------------------------
# Exact sweep on the planted task.


def planted_sweep(task: planted_lib.PlantedTask | None = None, base_gamma: float = 5.0,
                  gammas: Sequence[float] = DEFAULT_GAMMAS,
                  bok_ks: Sequence[int] = DEFAULT_BOK_KS, lr: float = 1.0, alpha: float = 1.0,
                  flat_fraction: float = FLAT_FRACTION) -> list[dict[str, Any]]:
  """Exact Theorem 3.1 terms and one-step NPG improvement for every prover.

  The base policy is pi = mu_{base_gamma} on the (k, r) MDP (see the module
  docstring for why, and for the occupancy weighting). For a procedural prover
  mu_gamma, Q^mu and V^mu are its exact DP values; for BoK(pi),
  Q^mu = bok_q(Q^pi, K) and V^mu(s) = bok_q(V^pi(s), K) (the prover's value of
  the prefix, as the paper differences consecutive prefixes). The choice of V^mu
  changes neither term nor the NPG step (`pavjax.rewards.theory`).

  Args:
    task: the planted task (y*, alphabet, horizon); default: the paper's.
    base_gamma: gamma of the stand-in base policy.
    gammas: procedural provers to score.
    bok_ks: Best-of-K provers of pi to score.
    lr: NPG step size g.
    alpha: weight of the prover term in the effective reward.
    flat_fraction: see `FLAT_FRACTION`.

  Returns:
    One dict per prover, first the outcome-only baseline (kind 'outcome',
    A^mu = 0, i.e. alpha = 0), then kind 'gamma' per gamma, then kind 'bok' per K:
      kind, param: which prover.
      v_mu_root: the prover's own success probability from the root.
      distinguishability, alignment: the theorem's terms (occupancy sums).
      bound: distinguishability + alignment.
      predicted: lr * bound, the theorem's first-order gain.
      first_order: lr * (E_s E_pi[(A^pi)^2] + alpha * alignment), the exact
        derivative of the NPG gain at lr = 0 times lr.
      improvement: exact V^{pi_{t+1}}(root) - V^pi(root) after the NPG step
        pi_{t+1} = npg_update(pi, Q^pi, A^mu, lr, alpha).
      gain_vs_outcome: improvement minus the outcome-only row's improvement.
      flat: bool, A^mu ~ 0 (distinguishability < flat_fraction * E[(A^pi)^2]).
      mass, adv_pi_sq, v_pi_root, lr, alpha: shared context.
  """
  task = task or planted_lib.PlantedTask(num_train=1, num_eval=1)
  base = task.prover(base_gamma)
  grid = base.markov_policy().shape  # [m, L, A]; state s = k * L + (r - 1)
  num_states = grid[0] * grid[1]

  def values(policy_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q [S, A] and V [S] of a (k, r) policy on the base's automaton."""
    q, win = base.markov_values(policy_grid)
    return q.reshape(num_states, -1), win[:, 1:].reshape(num_states)

  root = grid[1] - 1  # (k, r) = (0, L)
  pi_grid = base.markov_policy()
  pi = pi_grid.reshape(num_states, -1)
  q_pi, v_pi = values(pi_grid)
  occ = base.markov_occupancy(pi_grid).reshape(num_states)
  mass = float(occ.sum())
  v_root = float(v_pi[root])
  with _x64():
    adv_pi_sq = float(theory.occupancy_terms(pi, q_pi, q_pi, occ, mu=pi)[1])

  provers = [("outcome", 0, np.zeros_like(q_pi), np.zeros_like(v_pi), 0.0)]
  for gamma in gammas:
    q_mu, v_mu = values(task.prover(float(gamma)).markov_policy())
    provers.append(("gamma", gamma, q_mu, v_mu, float(v_mu[root])))
  for k in bok_ks:
    with _x64():
      q_mu, v_mu = _np(targets.bok_q(q_pi, k)), _np(targets.bok_q(v_pi, k))
    provers.append(("bok", int(k), q_mu, v_mu, float(v_mu[root])))

  rows = []
  for kind, param, q_mu, v_mu, v_mu_root in provers:
    with _x64():
      dist, align = (float(x) for x in theory.occupancy_terms(pi, q_mu, q_pi, occ, v_mu=v_mu))
      adv_mu = theory.tabular_advantages(q_mu, v=v_mu)
      new_pi = _np(theory.npg_update(pi, q_pi, adv_mu, lr, alpha))
      first_order = float(theory.npg_first_order_gain(pi, q_pi, adv_mu, lr, alpha, occ))
    improvement = float(values(new_pi.reshape(grid))[1][root]) - v_root
    rows.append({
        "kind": kind, "param": param, "v_mu_root": v_mu_root, "distinguishability": dist,
        "alignment": align, "bound": dist + align, "improvement": improvement,
        "predicted": lr * (dist + align), "first_order": first_order,
        "flat": bool(dist < flat_fraction * adv_pi_sq), "mass": mass, "adv_pi_sq": adv_pi_sq,
        "v_pi_root": v_root, "lr": lr, "alpha": alpha})
  baseline = rows[0]["improvement"]
  for row in rows:
    row["gain_vs_outcome"] = row["improvement"] - baseline
  return rows


# ----------------------------------------------------------------------------------------------
# Sweeps from rollout trajectory tables.


def _sibling_children(data: trajectories.Trajectories
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """Children with a finite Q_hat at both ends, as (group, rows, cols, num_groups).

  Child c is prefix column `cols[c]` of seed row `rows[c]`; its parent is column
  `cols[c] - 1` of the same row, and `group[c]` numbers the distinct parents in
  order of first appearance (row by row, step by step; see `sibling_groups`).
  Only `data["q_hat"]` decides which children are kept, so the same children can
  be read off another table of the same seeds.
  """
  q = np.asarray(data["q_hat"], np.float64)
  if q.shape != data.prefix_ends.shape:
    raise ValueError(f"q_hat has shape {q.shape}, the table's prefixes {data.prefix_ends.shape}")
  exists = trajectories.prefix_mask(data)
  finite = np.isfinite(q)
  h = np.arange(1, data.max_steps + 1)
  child = (exists[:, :-1] & exists[:, 1:] & finite[:, :-1] & finite[:, 1:]
           & (h[None, :] <= trajectories.num_steps(data)[:, None]))  # [B, H], column h - 1
  rows, cols = np.nonzero(child)
  cols = cols + 1
  if not len(rows):
    return np.zeros(0, np.int64), rows.astype(np.int64), cols.astype(np.int64), 0
  # A parent is (problem, prefix text); number them by first appearance.
  keys = np.stack([np.asarray(data.problem, np.int64)[rows],
                   trajectories.prefix_ids(data)[rows, cols - 1]], axis=1)
  _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
  rank = np.empty(len(first), np.int64)
  rank[np.argsort(first, kind="stable")] = np.arange(len(first))
  group = rank[inverse.reshape(-1)]
  return group, rows.astype(np.int64), cols.astype(np.int64), len(first)


def _pooled_q(q: np.ndarray, group: np.ndarray, rows: np.ndarray, cols: np.ndarray,
              num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """Children's Q_hat [C] and parents' pooled Q_hat [G] (mean over the seeds through them)."""
  q = np.asarray(q, np.float64)
  return q[rows, cols], theory.group_mean(q[rows, cols - 1], group, num_groups)


def sibling_groups(data: trajectories.Trajectories
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Children (step prefixes) grouped by their parent prefix.

  A parent is identified by (problem, the text of the prefix: its tokens up to and
  including its last one, as `trajectories.prefix_ids`): seeds of one problem whose
  responses agree up to the parent are siblings there, and every seed's first
  step shares the question-only parent (column 0). Each seed contributes its own
  sampled child at every parent it passes through; duplicates are kept, because
  children are samples of pi.

  Q_hat of a parent: the mean of the parent column over the seeds that pass
  through it (each ran the same n_mc completions, so this pools them).

  Args:
    data: a rollout trajectory table with a per-prefix `q_hat` column
      ([B, H+1], NaN where there is no estimate).

  Returns:
    (group [C] int, child_q [C], parent_q [G]): the parent index of each child
    with a finite Q_hat, the child's Q_hat, and each parent's pooled Q_hat.
  """
  group, rows, cols, num_groups = _sibling_children(data)
  child_q, parent_q = _pooled_q(data["q_hat"], group, rows, cols, num_groups)
  return group, child_q, parent_q


class _RolloutStates:
  """The states of the rollout sweeps: parents with >= 2 sampled children of pi.

  Attributes:
    group: [C] parent of each kept child, renumbered 0..P-1.
    rows, cols: [C] where each kept child sits in the table's prefix columns.
    num_parents: P.
    a_pi: [C] A^pi(child) = Q_hat(child) - Q_hat(parent), from the base table.
    adv_pi_var: mean over parents of the variance of A^pi (the mu = pi reference).
  """

  def __init__(self, data: trajectories.Trajectories):
    group, rows, cols, num_groups = _sibling_children(data)
    keep = (np.bincount(group, minlength=num_groups) >= 2)[group]
    # Renumber the kept parents 0..P-1 for bincount.
    kept, inverse = np.unique(group[keep], return_inverse=True)
    self.group = inverse.reshape(-1)
    self.rows, self.cols = rows[keep], cols[keep]
    self.num_parents = len(kept)
    child_q, parent_q = self.q(data["q_hat"])
    self.a_pi = child_q - parent_q[self.group]
    self.adv_pi_var, _ = self.terms(self.a_pi)

  @property
  def num_children(self) -> int:
    return len(self.group)

  def q(self, q_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A q_hat array read at the kept children [C] and pooled at their parents [P]."""
    return _pooled_q(q_hat, self.group, self.rows, self.cols, self.num_parents)

  def terms(self, a_mu: np.ndarray) -> tuple[float, float]:
    """(distinguishability, alignment) of A^mu at the kept children: means over parents."""
    return theory.sibling_terms(a_mu, self.a_pi, self.group, self.num_parents)

  def row(self, kind: str, param: Any, a_mu: np.ndarray,
          flat_fraction: float) -> dict[str, Any]:
    dist, align = self.terms(a_mu)
    return {"kind": kind, "param": param, "distinguishability": dist, "alignment": align,
            "bound": dist + align, "flat": bool(dist < flat_fraction * self.adv_pi_var),
            "num_parents": int(self.num_parents), "num_children": int(self.num_children),
            "adv_pi_var": self.adv_pi_var}


def rollout_sweep(data: trajectories.Trajectories,
                  bok_ks: Sequence[int] = DEFAULT_BOK_KS,
                  flat_fraction: float = FLAT_FRACTION) -> list[dict[str, Any]]:
  """Theorem 3.1 terms of BoK(pi) provers from Monte-Carlo Q_hat of pi.

  States are parent prefixes with >= 2 sampled children (see `sibling_groups`);
  per parent, A^mu(child) = bok_q(Q_hat(child), K) - bok_q(Q_hat(parent), K) and
  A^pi(child) = Q_hat(child) - Q_hat(parent). The terms are the sibling
  estimates of `theory.sibling_terms` (means over parents of the variance of
  A^mu and of A^mu * A^pi over the children; so even for K = 1 alignment exceeds
  distinguishability).

  Caveat: Q_hat is a noisy estimate, and its noise adds to both variances (about
  Q (1 - Q) / n_mc per child for K = 1), so small-n_mc tables overstate
  distinguishability, most for K that stretch mid-range Q.

  Args:
    data: rollout trajectory table (see `sibling_groups`).
    bok_ks: Best-of-K provers to score (K = 1 is mu = pi).
    flat_fraction: a K is flagged flat when its distinguishability is below this
      fraction of the mu = pi one (mean variance of A^pi).

  Returns:
    One dict per K: kind ('bok'), param (K), distinguishability, alignment,
    bound (their sum), flat, num_parents, num_children (children of those
    parents), adv_pi_var (the mu = pi reference).
  """
  states = _RolloutStates(data)
  child_q, parent_q = states.q(data["q_hat"])
  rows = []
  for k in bok_ks:
    with _x64():
      a_mu = _np(targets.bok_q(child_q, k)) - _np(targets.bok_q(parent_q, k))[states.group]
    rows.append(states.row("bok", int(k), a_mu, flat_fraction))
  return rows


# What must agree, in this order, for a prover table to hold the base's seeds:
# sibling groups and prefix columns are read from them. `num_steps` is derived
# (`trajectories.num_steps`), `seed` is a column, the rest are table fields.
PAIRED_FIELDS = ("problem", "seed", "num_steps", "tokens", "prompt_len", "prefix_ends")


def _paired_field(data: trajectories.Trajectories, key: str) -> np.ndarray:
  if key == "num_steps":
    return trajectories.num_steps(data)
  if key in trajectories.CORE:
    return np.asarray(getattr(data, key))
  return np.asarray(data[key])


def check_paired(base_data: trajectories.Trajectories,
                 prover_data: trajectories.Trajectories, name: str = "prover") -> None:
  """Raises ValueError unless `prover_data` holds Q_hat of the same seeds as `base_data`.

  Tables that differ only in the prover share the policy checkpoint, the seed
  and the rollouts config, and so the seed responses (they are sampled before
  the prover's completions; `RolloutRunner.shard`). Checked: the row count, then
  each of `PAIRED_FIELDS` (shape, then values), then the shape of q_hat; the
  message names the first mismatch.

  Args:
    base_data: rollout table of the base policy pi (prover.kind=policy).
    prover_data: rollout table of the same seeds with another prover.
    name: the prover's name, for the message.
  """
  where = f"prover {name!r} is not paired with the base rollouts"
  n_base, n_prover = len(base_data), len(prover_data)
  if n_base != n_prover:
    raise ValueError(f"{where}: {n_prover} seed rows vs {n_base} in the base")
  for key in PAIRED_FIELDS:
    a, b = _paired_field(base_data, key), _paired_field(prover_data, key)
    if a.shape != b.shape:
      raise ValueError(f"{where}: {key!r} has shape {b.shape} vs {a.shape} in the base")
    diff = a != b
    if diff.any():
      at = tuple(int(j) for j in np.argwhere(diff)[0])
      i = at[0]
      raise ValueError(f"{where}: first mismatch in {key!r} at {list(at)} (base row {i}: "
                       f"problem {int(base_data.problem[i])}, seed "
                       f"{int(base_data['seed'][i])}): {b[at]} vs {a[at]} in the base")
  a, b = np.shape(base_data["q_hat"]), np.shape(prover_data["q_hat"])
  if a != b:
    raise ValueError(f"{where}: 'q_hat' has shape {b} vs {a} in the base")


def prover_sweep(base_data: trajectories.Trajectories,
                 prover_datasets: Mapping[str, trajectories.Trajectories],
                 flat_fraction: float = FLAT_FRACTION) -> list[dict[str, Any]]:
  """Theorem 3.1 terms of other-policy provers (checkpoints) from paired rollouts.

  Each prover table holds Monte-Carlo Q_hat^mu of the SAME seed responses as
  `base_data` (rolled out with prover.kind=checkpoint instead of policy; checked
  by `check_paired`). The states, children and A^pi are those of
  `rollout_sweep` on `base_data`; A^mu(child) = Q_hat^mu(child) -
  Q_hat^mu(parent), with the parent's Q_hat^mu pooled over the same seeds as the
  parent's Q_hat^pi. The terms are then computed exactly as there, so a prover
  table equal to the base reproduces the K = 1 (mu = pi) row.

  Caveat: as in `rollout_sweep`, the Monte-Carlo noise of Q_hat^mu adds to
  distinguishability (not to alignment in expectation: the two tables' noise
  is independent).

  Args:
    base_data: rollout table of the base policy (its Q_hat is Q^pi).
    prover_datasets: prover name -> rollout table of the same seeds.
    flat_fraction: a prover is flagged flat when its distinguishability is below
      this fraction of the mu = pi one (mean variance of A^pi).

  Returns:
    One dict per prover, in the mapping's order, with the keys of
    `rollout_sweep`'s rows: kind ('checkpoint'), param (the name), ...

  Raises:
    ValueError: a prover table is not paired with the base, or lacks a finite
      Q_hat at a prefix where the base has one.
  """
  for name, data in prover_datasets.items():
    check_paired(base_data, data, name)
  states = _RolloutStates(base_data)
  rows = []
  for name, data in prover_datasets.items():
    q = np.asarray(data["q_hat"], np.float64)
    for cols in (states.cols - 1, states.cols):  # parents, then children
      bad = ~np.isfinite(q[states.rows, cols])
      if bad.any():
        c = int(np.argmax(bad))
        raise ValueError(f"prover {name!r} has no finite q_hat at row {int(states.rows[c])}, "
                         f"prefix column {int(cols[c])}, where the base has one")
    child_q, parent_q = states.q(q)
    rows.append(states.row("checkpoint", name, child_q - parent_q[states.group],
                           flat_fraction))
  return rows
