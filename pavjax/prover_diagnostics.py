"""Choose a prover before spending RL compute: the two terms of Theorem 3.1 (PAPER.md section 2).

Theorem 3.1 bounds one natural-policy-gradient step on the effective reward
`Q^pi + alpha * A^mu` from below by `lr * (distinguishability + alignment)`:

  distinguishability  E_s Var_{a~pi}[A^mu(s, a)]       does mu tell pi's own steps apart?
  alignment           E_s E_{a~pi}[A^mu(s, a) A^pi(s, a)]  does mu's progress agree with pi's?

A prover that is too weak (Q^mu ~ 0) or too strong (Q^mu ~ 1) has A^mu ~ 0 and
scores ~0 on both. Two ways to measure them:

* `planted_sweep`: exact, on the didactic task (Sec. 3.3), for every procedural
  prover mu_gamma and every Best-of-K prover BoK(pi). It also runs the tabular NPG
  step exactly and reports the true one-step `improvement` of V^pi(root).
* `rollout_sweep`: from a rollout dataset (pavjax.rollout_data), for BoK(pi)
  provers, with Monte-Carlo Q_hat of pi standing in for Q^pi.
* `prover_sweep`: the same terms for provers that are other policies
  (checkpoints), from datasets of the same seeds rolled out with
  prover.kind=checkpoint, paired row by row with the base dataset.

CLI:
  python -m pavjax.prover_diagnostics --planted [--base_gamma=5] [--lr=1] [--plot=out.png]
  python -m pavjax.prover_diagnostics --rollouts=DIR [--prover=NAME=DIR ...] [--plot=out.png]

Exact model of the planted task (decided here; see `KmpMdp`). A policy that
depends on the prefix only through the KMP state k (how much of y* the last
tokens match) and the number r of tokens left is Markov on the finite MDP with
states (k, r), 0 <= k < len(y*), 1 <= r <= length; "succeeded" and "ended" are
absorbing terminals with value 1 and 0 (after success nothing a policy does
changes the reward, so those prefixes carry A = 0 for every prover and are left
out rather than enumerated). mu_gamma is Markov there, so its Q and V are exact
(the same DP as `ProceduralProver`), and so is every policy the tabular NPG step
makes from it: on the full prefix tree, Q^pi of a Markov pi depends on a prefix
only through (k, r), so the prefix-tree NPG update gives equal rows to prefixes
with equal (k, r) and the step on this small MDP *is* the prefix-tree step.

Stand-in for the base policy: pi = mu_{base_gamma} (default 5), the policy whose
samples the paper's SFT model imitates (App. B: SFT on 3,200 samples of mu_5).
The real SFT policy is a network, not exactly mu_5, and is not Markov in (k, r);
the paper's RL results (Fig. 3b) also run many steps, not one. What this module
measures is therefore the theorem's prediction for an idealized SFT policy.

Weighting of states (decided here): E_s is the occupancy of pi summed over the
steps of an episode, d(s) = sum_h Pr_pi(s_h = s) over live (not yet succeeded,
not ended) decision states. It is the weighting of the performance-difference
lemma, so `lr * (...)` is on the scale of V(root) gains; `mass` = sum_s d(s), the
expected number of live decisions, turns the sums into per-step averages.

What "first order" means here. Differentiating the exact NPG step at lr = 0
gives dV(root)/dlr = E_s E_pi[(A^pi)^2] + alpha * alignment (the covariance of
A^pi with the effective reward); this is `first_order / lr` and is what the
exact `improvement` approaches for small lr (tests check the O(lr^2) gap).
Distinguishability is not in that derivative: it is the theorem's term, which
lower-bounds the gain for the update the theorem analyses, and it is reported
as `predicted = lr * (distinguishability + alignment)`, the theorem's weighting
(unit weight on each term, PAPER.md section 2), next to the exact numbers.

Finding (default task, pi = mu_5, alpha = 1; `--planted` prints the table). There
is NO inverted U over gamma: distinguishability, alignment, their sum and the
exact one-step improvement (lr = 0.1, 1, 10 and 100 alike) all rise monotonically
over gamma = 1..17, and in a wider sweep (`--gammas=1,5,17,100,1000,100000`) they
keep rising or saturate; only alignment has a slight maximum near gamma ~ 100-150.
Every gamma, gamma = 1 included, beats outcome-only in this one-step measure.
Two features of the task keep A^mu from vanishing at either end: the token that
completes y* has Q^mu = 1 under every prover (so even the uniform mu_1 keeps
~75% of the mu = pi distinguishability), and with a horizon of 10 for a
5-token y*, the Q of a near-perfect prover is the indicator "y* can still be
finished", which still separates EOS and match-breaking tokens near the horizon.
So the theorem's terms, for an idealized SFT policy and one NPG step, do not
explain the paper's "only gamma in [8, 15] helps" (Fig. 3b); that result must
come from what this analysis leaves out (learned, non-Markov policy; many RL
steps; estimated rather than exact rewards). For BoK(pi), the sum also rises
with K, while the exact improvement at lr = 1 peaks near K = 128 (V^{BoK}(root)
~ 0.5), not at the paper's K = 4.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from pavjax import rollout_data
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
# The planted task as a small MDP.


class KmpMdp:
  """The planted task as a finite MDP over (KMP state k, tokens left r).

  State index `s = k * length + (r - 1)` for 0 <= k < m = len(y*) and
  1 <= r <= length; the root (empty response) is (0, length). Action a (a raw
  token) from (k, r): EOS ends the episode with reward 0; a token that completes
  y* ends it with reward 1; any other token moves to (next_state[k, a], r - 1),
  and r - 1 = 0 ends the episode with reward 0. Policies are [S, A] arrays.

  Attributes:
    prover: the `ProceduralProver` whose automaton (`next_state`, `hit`) is used.
    m: len(y*).
    length: the horizon.
    num_actions: raw alphabet size (EOS included).
    num_states: m * length.
    root: index of (0, length).
  """

  def __init__(self, prover: planted_lib.ProceduralProver):
    self.prover = prover
    self.m = len(prover.planted)
    self.length = prover.length
    self.num_actions = prover.vocab_size
    self.num_states = self.m * self.length
    self.root = self.index(0, self.length)
    v = self.num_actions
    self._hit = prover.hit[:, :v]
    self._next = prover.next_state[:, :v]
    self._not_eos = np.arange(v) != prover.eos
    # Transitions that keep the episode alive (neither EOS nor success).
    self._moves = ~self._hit & self._not_eos[None, :]

  def index(self, k: int, r: int) -> int:
    return k * self.length + (r - 1)

  def state_of(self, prefix: Sequence[int]) -> int | None:
    """Index of a raw-token prefix, or None if it has succeeded or ended."""
    k, won, done, used = self.prover._scan(prefix)  # pylint: disable=protected-access
    if won or done:
      return None
    return self.index(k, self.length - used)

  def markov_policy(self, prover: planted_lib.ProceduralProver) -> np.ndarray:
    """mu_gamma as an [S, A] policy (the same row for every r)."""
    return np.repeat(np.asarray(prover.policy, np.float64), self.length, axis=0)

  def _grid(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(self.m, self.length, -1)

  def q_values(self, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Q [S, A] and V [S] of a Markov policy by backward DP over r.

    Written with the same operations in the same order as
    `ProceduralProver._solve`, so for mu_gamma the values agree bit for bit.
    """
    pi = self._grid(policy)  # [m, L, A]
    m, length, v = pi.shape
    win = np.zeros((m, length + 1))  # win[k, r], r = 0 means no token left
    q = np.zeros((m, length, v))
    for r in range(1, length + 1):
      cont = np.where(self._hit, 1.0, win[self._next, r - 1]) * self._not_eos  # [m, A]
      q[:, r - 1] = cont
      win[:, r] = (pi[:, r - 1] * cont).sum(-1)
    return q.reshape(self.num_states, v), win[:, 1:].reshape(self.num_states)

  def occupancy(self, policy: np.ndarray) -> np.ndarray:
    """d(s) = sum_h Pr_pi(s_h = s) over live states, [S]; sums to the expected live steps."""
    pi = self._grid(policy)
    occ = np.zeros((self.m, self.length + 1))
    occ[0, self.length] = 1.0
    for r in range(self.length, 1, -1):  # r = 1: every action ends the episode
      flow = occ[:, r, None] * pi[:, r - 1] * self._moves  # [m, A]
      np.add.at(occ[:, r - 1], self._next.reshape(-1), flow.reshape(-1))
    return occ[:, 1:].reshape(self.num_states)

  def root_value(self, policy: np.ndarray) -> float:
    return float(self.q_values(policy)[1][self.root])


# ----------------------------------------------------------------------------------------------
# Exact sweep on the planted task.


def _terms(mdp: KmpMdp, pi, q_pi, occ, q_mu, v_mu, lr, alpha, v_root) -> dict[str, float]:
  """Theorem terms and the exact NPG step for one prover, all occupancy-weighted sums."""
  mass = float(occ.sum())
  with _x64():
    dist = mass * float(theory.distinguishability(pi, q_mu, v_mu=v_mu, state_weights=occ))
    align = mass * float(theory.alignment(pi, q_mu, q_pi, v_mu=v_mu, state_weights=occ))
    adv_mu = _np(theory.tabular_advantages(q_mu, v=v_mu))
    new_pi = _np(theory.npg_update(pi, q_pi, adv_mu, lr, alpha))
  return {"distinguishability": dist, "alignment": align, "bound": dist + align,
          "improvement": mdp.root_value(new_pi) - v_root}


def planted_sweep(task: planted_lib.PlantedTask | None = None, base_gamma: float = 5.0,
                  gammas: Sequence[float] = DEFAULT_GAMMAS,
                  bok_ks: Sequence[int] = DEFAULT_BOK_KS, lr: float = 1.0, alpha: float = 1.0,
                  flat_fraction: float = FLAT_FRACTION) -> list[dict[str, Any]]:
  """Exact Theorem 3.1 terms and one-step NPG improvement for every prover.

  The base policy is pi = mu_{base_gamma} (see the module docstring for why and
  for the (k, r) state space and occupancy weighting). For a procedural prover
  mu_gamma, Q^mu and V^mu are its exact DP values; for BoK(pi),
  Q^mu = bok_q(Q^pi, K) and V^mu(s) = bok_q(V^pi(s), K) (the prover's value of
  the prefix, as the paper differences consecutive prefixes). The choice of V^mu
  changes neither term nor the NPG step (pavjax.rewards.theory).

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
  mdp = KmpMdp(base)
  pi = mdp.markov_policy(base)
  q_pi, v_pi = mdp.q_values(pi)
  occ = mdp.occupancy(pi)
  mass = float(occ.sum())
  v_root = float(v_pi[mdp.root])
  with _x64():
    adv_pi_sq = mass * float(theory.alignment(pi, q_pi, q_pi, mu=pi, state_weights=occ))

  provers = [("outcome", 0, np.zeros_like(q_pi), np.zeros_like(v_pi), 0.0)]
  for gamma in gammas:
    prover = task.prover(float(gamma))
    q_mu, v_mu = mdp.q_values(mdp.markov_policy(prover))
    provers.append(("gamma", gamma, q_mu, v_mu, float(v_mu[mdp.root])))
  for k in bok_ks:
    with _x64():
      q_mu, v_mu = _np(targets.bok_q(q_pi, k)), _np(targets.bok_q(v_pi, k))
    provers.append(("bok", int(k), q_mu, v_mu, float(v_mu[mdp.root])))

  rows = []
  for kind, param, q_mu, v_mu, v_mu_root in provers:
    row = {"kind": kind, "param": param, "v_mu_root": v_mu_root}
    row.update(_terms(mdp, pi, q_pi, occ, q_mu, v_mu, lr, alpha, v_root))
    row["predicted"] = lr * row["bound"]
    row["first_order"] = lr * (adv_pi_sq + alpha * row["alignment"])
    row["flat"] = bool(row["distinguishability"] < flat_fraction * adv_pi_sq)
    row.update(mass=mass, adv_pi_sq=adv_pi_sq, v_pi_root=v_root, lr=lr, alpha=alpha)
    rows.append(row)
  baseline = rows[0]["improvement"]
  for row in rows:
    row["gain_vs_outcome"] = row["improvement"] - baseline
  return rows


def curve_shape(xs: Sequence[float], ys: Sequence[float], rel_tol: float = 0.01) -> str:
  """Plain-words shape of a curve: 'inverted U (peak at x=..)', 'increasing', ...

  An inverted U needs an interior peak that beats both ends by more than
  `rel_tol` of the curve's range; no smoothing or tuning, so a noisy or flat
  curve is called what it is.
  """
  ys = np.asarray(ys, np.float64)
  if len(ys) < 3:
    return "too few points"
  span = float(ys.max() - ys.min())
  if span == 0.0:
    return "flat"
  top = int(np.argmax(ys))
  tol = rel_tol * span
  if 0 < top < len(ys) - 1 and ys[top] - ys[0] > tol and ys[top] - ys[-1] > tol:
    return f"inverted U (peak at {xs[top]:g})"
  diffs = np.diff(ys)
  if np.all(diffs >= -tol):
    return f"increasing (max at {xs[top]:g})"
  if np.all(diffs <= tol):
    return f"decreasing (max at {xs[top]:g})"
  return f"no clear shape (max at {xs[top]:g})"


def describe_planted(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Plain-words reading of a `planted_sweep`: shapes over gamma and K, helpful provers."""
  lines = []
  for kind, name in (("gamma", "gamma"), ("bok", "K")):
    sel = [r for r in rows if r["kind"] == kind]
    if not sel:
      continue
    xs = [r["param"] for r in sel]
    for key in ("distinguishability", "alignment", "bound", "improvement"):
      lines.append(f"{key} over {name}: {curve_shape(xs, [r[key] for r in sel])}")
    helps = [r["param"] for r in sel if r["gain_vs_outcome"] > 0 and not r["flat"]]
    lines.append(f"{name} that beat outcome-only (gain > 0, not flat): "
                 f"{', '.join(f'{x:g}' for x in helps) or 'none'}")
  return lines


# ----------------------------------------------------------------------------------------------
# Sweep from a rollout dataset.


def _sibling_children(data: Mapping[str, np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """Children with a finite Q_hat at both ends, as (group, rows, cols, num_groups).

  Child c is prefix column `cols[c]` of seed row `rows[c]`; its parent is column
  `cols[c] - 1` of the same row, and `group[c]` numbers the distinct parents (see
  `sibling_groups`). Only `data["q_hat"]` decides which children are kept, so
  the same children can be read off another dataset of the same seeds.
  """
  pos, mask = rollout_data.prefix_positions(data)
  q = np.asarray(data["q_hat"], np.float64)
  tokens = np.asarray(data["tokens"])
  num_steps = np.asarray(data["num_steps"])
  problem = np.asarray(data["problem"])
  keys: dict[tuple[int, bytes], int] = {}
  group, rows, cols = [], [], []
  for i in range(len(q)):
    for h in range(1, int(num_steps[i]) + 1):
      if not (mask[i, h - 1] and mask[i, h]):
        continue
      if not (np.isfinite(q[i, h - 1]) and np.isfinite(q[i, h])):
        continue
      key = (int(problem[i]), tokens[i, :pos[i, h - 1] + 1].tobytes())
      group.append(keys.setdefault(key, len(keys)))
      rows.append(i)
      cols.append(h)
  return (np.asarray(group, np.int64), np.asarray(rows, np.int64), np.asarray(cols, np.int64),
          len(keys))


def _pooled_q(q: np.ndarray, group: np.ndarray, rows: np.ndarray, cols: np.ndarray,
              num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """Children's Q_hat [C] and parents' pooled Q_hat [G] (mean over the seeds through them)."""
  q = np.asarray(q, np.float64)
  n = np.bincount(group, minlength=num_groups)
  parent_q = np.bincount(group, q[rows, cols - 1], num_groups) / np.maximum(n, 1)
  return q[rows, cols], parent_q


def sibling_groups(data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Children (step prefixes) grouped by their parent prefix.

  A parent is identified by (problem, tokens up to and including its last
  token): seeds of one problem whose responses agree up to the parent are
  siblings there, and every seed's first step shares the question-only parent
  (column 0). Each seed contributes its own sampled child at every parent it
  passes through; duplicates are kept, because children are samples of pi.

  Q_hat of a parent: the mean of the parent column over the seeds that pass
  through it (each ran the same n_mc completions, so this pools them).

  Args:
    data: a rollout dataset (`rollout_data.load`), or a dict with at least
      tokens, prompt_len, step_ends, num_steps, q_hat and problem.

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
    rows, cols: [C] where each kept child sits in the dataset's prefix columns.
    num_parents: P.
    a_pi: [C] A^pi(child) = Q_hat(child) - Q_hat(parent), from the base data.
    adv_pi_var: mean over parents of the variance of A^pi (the mu = pi reference).
  """

  def __init__(self, data: Mapping[str, np.ndarray]):
    group, rows, cols, num_groups = _sibling_children(data)
    keep = (np.bincount(group, minlength=num_groups) >= 2)[group]
    # Renumber the kept parents 0..P-1 for bincount.
    kept, inverse = np.unique(group[keep], return_inverse=True)
    self.group = inverse.reshape(-1)
    self.rows, self.cols = rows[keep], cols[keep]
    self.num_parents = len(kept)
    self._n = np.bincount(self.group, minlength=self.num_parents).astype(np.float64)
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
    if not self.num_parents:
      return float("nan"), float("nan")
    g, p, n = self.group, self.num_parents, self._n
    mean = np.bincount(g, a_mu, p) / n
    var = np.bincount(g, (a_mu - mean[g]) ** 2, p) / n
    cross = np.bincount(g, a_mu * self.a_pi, p) / n
    return float(var.mean()), float(cross.mean())

  def row(self, kind: str, param: Any, a_mu: np.ndarray,
          flat_fraction: float) -> dict[str, Any]:
    dist, align = self.terms(a_mu)
    return {"kind": kind, "param": param, "distinguishability": dist, "alignment": align,
            "bound": dist + align, "flat": bool(dist < flat_fraction * self.adv_pi_var),
            "num_parents": int(self.num_parents), "num_children": int(self.num_children),
            "adv_pi_var": self.adv_pi_var}


def rollout_sweep(data: Mapping[str, np.ndarray],
                  bok_ks: Sequence[int] = DEFAULT_BOK_KS,
                  flat_fraction: float = FLAT_FRACTION) -> list[dict[str, Any]]:
  """Theorem 3.1 terms of BoK(pi) provers from Monte-Carlo Q_hat of pi.

  States are parent prefixes with >= 2 sampled children (see `sibling_groups`);
  per parent, A^mu(child) = bok_q(Q_hat(child), K) - bok_q(Q_hat(parent), K) and
  A^pi(child) = Q_hat(child) - Q_hat(parent). Distinguishability is the mean
  over parents of the (population) variance of A^mu over the children, alignment
  the mean over parents of the children's mean A^mu * A^pi; children are samples
  of pi, so they weigh equally, and so do parents. Alignment is a raw (not
  centred) mean, as in the theorem: with few children the sample mean of A^pi
  is not 0, so even for K = 1 alignment exceeds distinguishability.

  Caveat: Q_hat is a noisy estimate, and its noise adds to both variances (about
  Q (1 - Q) / n_mc per child for K = 1), so small-n_mc datasets overstate
  distinguishability, most for K that stretch mid-range Q.

  Args:
    data: rollout dataset (see `sibling_groups`).
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


# Arrays that must agree, in this order, for a prover dataset to hold the base's
# seeds: sibling groups and prefix columns are read from them.
PAIRED_FIELDS = ("problem", "seed", "num_steps", "tokens", "prompt_len", "step_ends")


def check_paired(base_data: Mapping[str, np.ndarray], prover_data: Mapping[str, np.ndarray],
                 name: str = "prover") -> None:
  """Raises ValueError unless `prover_data` holds Q_hat of the same seeds as `base_data`.

  Datasets that differ only in the prover share the policy checkpoint, the seed
  and the rollouts config, and so the seed responses (they are sampled before
  the prover's completions; `RolloutRunner.shard`). Checked: the row count, then
  each of `PAIRED_FIELDS` (shape, then values), then the shape of q_hat; the
  message names the first mismatch.

  Args:
    base_data: rollout dataset of the base policy pi (prover.kind=policy).
    prover_data: rollout dataset of the same seeds with another prover.
    name: the prover's name, for the message.
  """
  where = f"prover {name!r} is not paired with the base rollouts"
  n_base, n_prover = len(base_data["q_hat"]), len(prover_data["q_hat"])
  if n_base != n_prover:
    raise ValueError(f"{where}: {n_prover} seed rows vs {n_base} in the base")
  for key in PAIRED_FIELDS:
    a, b = np.asarray(base_data[key]), np.asarray(prover_data[key])
    if a.shape != b.shape:
      raise ValueError(f"{where}: {key!r} has shape {b.shape} vs {a.shape} in the base")
    diff = a != b
    if diff.any():
      at = tuple(int(j) for j in np.argwhere(diff)[0])
      i = at[0]
      raise ValueError(f"{where}: first mismatch in {key!r} at {list(at)} (base row {i}: "
                       f"problem {int(base_data['problem'][i])}, seed "
                       f"{int(base_data['seed'][i])}): {b[at]} vs {a[at]} in the base")
  a, b = np.shape(base_data["q_hat"]), np.shape(prover_data["q_hat"])
  if a != b:
    raise ValueError(f"{where}: 'q_hat' has shape {b} vs {a} in the base")


def prover_sweep(base_data: Mapping[str, np.ndarray],
                 prover_datasets: Mapping[str, Mapping[str, np.ndarray]],
                 flat_fraction: float = FLAT_FRACTION) -> list[dict[str, Any]]:
  """Theorem 3.1 terms of other-policy provers (checkpoints) from paired rollouts.

  Each prover dataset holds Monte-Carlo Q_hat^mu of the SAME seed responses as
  `base_data` (rolled out with prover.kind=checkpoint instead of policy; checked
  by `check_paired`). The states, children and A^pi are those of
  `rollout_sweep` on `base_data`; A^mu(child) = Q_hat^mu(child) -
  Q_hat^mu(parent), with the parent's Q_hat^mu pooled over the same seeds as the
  parent's Q_hat^pi. The terms are then computed exactly as there, so a prover
  dataset equal to the base reproduces the K = 1 (mu = pi) row.

  Caveat: as in `rollout_sweep`, the Monte-Carlo noise of Q_hat^mu adds to
  distinguishability (not to alignment in expectation: the two datasets' noise
  is independent).

  Args:
    base_data: rollout dataset of the base policy (its Q_hat is Q^pi).
    prover_datasets: prover name -> rollout dataset of the same seeds.
    flat_fraction: a prover is flagged flat when its distinguishability is below
      this fraction of the mu = pi one (mean variance of A^pi).

  Returns:
    One dict per prover, in the mapping's order, with the keys of
    `rollout_sweep`'s rows: kind ('checkpoint'), param (the name), ...

  Raises:
    ValueError: a prover dataset is not paired with the base, or lacks a finite
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


# ----------------------------------------------------------------------------------------------
# Output.


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """Fixed-width text table; floats in 4 significant digits (scientific when tiny)."""

  def cell(v):
    if isinstance(v, (bool, np.bool_)):
      return "yes" if v else ""
    if isinstance(v, (float, np.floating)):
      if math.isnan(v):
        return "nan"
      return f"{v:.4g}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3e}"
    return str(v)

  cells = [[cell(r[c]) for c in columns] for r in rows]
  widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]
  lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
  lines.append("  ".join("-" * w for w in widths))
  lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
  return "\n".join(lines)


PLANTED_COLUMNS = ("kind", "param", "v_mu_root", "distinguishability", "alignment", "bound",
                   "predicted", "first_order", "improvement", "gain_vs_outcome", "flat")
ROLLOUT_COLUMNS = ("kind", "param", "distinguishability", "alignment", "bound", "flat",
                   "num_parents", "num_children")


def plot(rows: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
  """Terms (and the exact improvement, when present) against gamma and K; one panel per kind.

  Rows of other kinds (outcome, checkpoint) have no x axis and are not drawn.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  kinds = [k for k in ("gamma", "bok") if any(r["kind"] == k for r in rows)]
  fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
  for ax, kind in zip(axes[0], kinds):
    sel = [r for r in rows if r["kind"] == kind]
    xs = [r["param"] for r in sel]
    for key in ("distinguishability", "alignment", "bound", "improvement"):
      if key in sel[0]:
        ax.plot(xs, [r[key] for r in sel], marker="o", label=key)
    if kind == "bok":
      ax.set_xscale("log", base=2)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("gamma" if kind == "gamma" else "K (BoK prover)")
    ax.legend(fontsize=8)
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--planted", action="store_true", help="exact sweep on the planted task")
  parser.add_argument("--base_gamma", type=float, default=5.0, help="pi = mu_{base_gamma}")
  parser.add_argument("--lr", type=float, default=1.0, help="NPG step size of `improvement`")
  parser.add_argument("--alpha", type=float, default=1.0, help="weight of A^mu in the reward")
  parser.add_argument("--gammas", default=",".join(str(g) for g in DEFAULT_GAMMAS),
                      help="comma-separated procedural provers mu_gamma to score")
  parser.add_argument("--bok_ks", default=",".join(str(k) for k in DEFAULT_BOK_KS),
                      help="comma-separated K of the Best-of-K provers to score")
  parser.add_argument("--rollouts", default="", help="rollout dataset directory")
  parser.add_argument("--prover", action="append", default=[], metavar="NAME=DIR",
                      help="(repeatable) rollouts of the --rollouts seeds with another prover "
                           "(prover.kind=checkpoint), scored as kind 'checkpoint'")
  parser.add_argument("--plot", default="", help="write a PNG of the terms here")
  args = parser.parse_args(argv)
  gammas = [float(g) for g in args.gammas.split(",") if g]
  bok_ks = [int(k) for k in args.bok_ks.split(",") if k]
  if not args.planted and not args.rollouts:
    parser.error("give --planted and/or --rollouts=DIR")
  provers = {}
  for spec in args.prover:
    name, eq, directory = spec.partition("=")
    if not (name and eq and directory):
      parser.error(f"--prover={spec}: expected NAME=DIR")
    if name in provers:
      parser.error(f"--prover: name {name!r} given twice")
    provers[name] = directory
  if provers and not args.rollouts:
    parser.error("--prover needs --rollouts=DIR (the base policy's rollouts of the same seeds)")
  plot_rows = []
  if args.planted:
    rows = planted_sweep(base_gamma=args.base_gamma, gammas=gammas, bok_ks=bok_ks, lr=args.lr,
                         alpha=args.alpha)
    r0 = rows[0]
    print(f"planted: pi = mu_{args.base_gamma:g}, V^pi(root) = {r0['v_pi_root']:.4f}, "
          f"expected live steps = {r0['mass']:.3f}, E[(A^pi)^2] = {r0['adv_pi_sq']:.4g}, "
          f"lr = {args.lr:g}, alpha = {args.alpha:g} (terms are per-episode sums)")
    print(format_table(rows, PLANTED_COLUMNS))
    for line in describe_planted(rows):
      print(line)
    plot_rows += rows
  if args.rollouts:
    base = rollout_data.load(args.rollouts)
    rows = rollout_sweep(base, bok_ks=bok_ks)
    if provers:
      rows += prover_sweep(base, {n: rollout_data.load(d) for n, d in provers.items()})
    print(f"rollouts: {args.rollouts} (terms are means over parents)")
    print(format_table(rows, ROLLOUT_COLUMNS))
    if not args.planted:
      plot_rows += rows
  if args.plot:
    plot(plot_rows, args.plot)
    print(f"wrote {args.plot}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
