"""The terms of Theorem 3.1 and the closed-form NPG step (arXiv 2410.08146, Sec. 3.2).

Theorem 3.1 bounds one natural-policy-gradient step on the effective reward
`Q^pi + alpha * A^mu` from below by `lr * (distinguishability + alignment)`:

  distinguishability  E_s Var_{a~pi}[A^mu(s, a)]            does mu tell pi's own steps apart?
  alignment           E_s E_{a~pi}[A^mu(s, a) A^pi(s, a)]   does mu's progress agree with pi's?

A prover that is too weak (Q^mu ~ 0) or too strong (Q^mu ~ 1) has A^mu ~ 0 and
scores ~0 on both.

Tabular (jnp, jit-friendly). Shapes: `S` states, `A` actions; policies are
[S, A] rows that sum to 1 and Q tables are [S, A]. States are averaged with
optional `state_weights` [S] (e.g. the on-policy state distribution d^pi;
uniform by default), or summed over an unnormalised occupancy
(`occupancy_terms`, `npg_first_order_gain`).

From samples (host-side numpy, ragged groups): `sibling_terms` estimates both
terms from sibling steps, children sampled from pi at a shared parent prefix,
with `group_mean` pooling values per parent.

Choice of V^mu. The paper writes A^mu(s, a) = Q^mu(s, a) - V^mu(s) and leaves the
tabular V^mu implicit; here V^mu(s) = E_{a~mu}[Q^mu(s, a)] when the prover `mu`
is given, an explicit `v_mu` [S] overrides it, and with neither the base policy
pi is used. The choice does not change the theorem's quantities or the NPG step:
a per-state constant drops out of Var_{a~pi}[.], out of E_{a~pi}[. * A^pi]
(since E_{a~pi}[A^pi] = 0) and out of the softmax normalization. It does change
`tabular_advantages` itself, which is why it is an argument at all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def policy_value(pi: jax.Array, q: jax.Array) -> jax.Array:
  """V(s) = E_{a~pi}[Q(s, a)] for every state: [S, A] x [S, A] -> [S]."""
  return jnp.einsum("SA,SA->S", pi, q)


def tabular_advantages(q: jax.Array, v: jax.Array | None = None,
                       policy: jax.Array | None = None) -> jax.Array:
  """A(s, a) = Q(s, a) - V(s).

  Args:
    q: [S, A] Q table.
    v: optional [S] state values; takes precedence over `policy`.
    policy: optional [S, A]; V(s) = E_{a~policy}[Q(s, a)] when `v` is None.

  Returns:
    [S, A] advantages.

  Raises:
    ValueError: if neither `v` nor `policy` is given.
  """
  q = jnp.asarray(q)
  if v is None:
    if policy is None:
      raise ValueError("tabular_advantages needs a state value v or a policy to average Q")
    v = policy_value(jnp.asarray(policy, q.dtype), q)
  return q - jnp.asarray(v, q.dtype)[:, None]


def _state_mean(x: jax.Array, state_weights: jax.Array | None) -> jax.Array:
  if state_weights is None:
    return jnp.mean(x)
  w = jnp.asarray(state_weights, x.dtype)
  return jnp.sum(w * x) / jnp.sum(w)


def _prover_advantages(pi, q_mu, mu, v_mu):
  return tabular_advantages(q_mu, v=v_mu, policy=pi if mu is None else mu)


def _variance_per_state(pi, q_mu, mu, v_mu):
  """Var_{a~pi}[A^mu(s, a)] per state, [S]."""
  adv = _prover_advantages(pi, q_mu, mu, v_mu)  # [S, A]
  centred = adv - policy_value(pi, adv)[:, None]
  return policy_value(pi, jnp.square(centred))


def _alignment_per_state(pi, q_mu, q_pi, mu, v_mu):
  """E_{a~pi}[A^mu(s, a) A^pi(s, a)] per state, [S]."""
  adv_mu = _prover_advantages(pi, q_mu, mu, v_mu)
  adv_pi = tabular_advantages(q_pi, policy=pi)
  return policy_value(pi, adv_mu * adv_pi)


def distinguishability(pi: jax.Array, q_mu: jax.Array, *, mu: jax.Array | None = None,
                       v_mu: jax.Array | None = None,
                       state_weights: jax.Array | None = None) -> jax.Array:
  """E_s Var_{a~pi}[A^mu(s, a)]: how much the prover tells pi's own actions apart.

  The first term of Theorem 3.1's one-step improvement bound. A prover that is
  too weak (Q^mu ~ 0 everywhere) or too strong (Q^mu ~ 1) scores ~0 here.

  Args:
    pi: [S, A] base policy.
    q_mu: [S, A] prover Q^mu.
    mu: optional [S, A] prover policy, for V^mu = E_mu[Q^mu] (see module doc).
    v_mu: optional [S] explicit V^mu.
    state_weights: optional [S] state distribution (uniform by default).

  Returns:
    [] float.
  """
  return _state_mean(_variance_per_state(pi, q_mu, mu, v_mu), state_weights)


def alignment(pi: jax.Array, q_mu: jax.Array, q_pi: jax.Array, *, mu: jax.Array | None = None,
              v_mu: jax.Array | None = None,
              state_weights: jax.Array | None = None) -> jax.Array:
  """E_s E_{a~pi}[A^mu(s, a) * A^pi(s, a)]: whether the prover's progress agrees with pi's.

  The second term of Theorem 3.1. A^pi uses V^pi(s) = E_{a~pi}[Q^pi(s, a)]. With
  mu = pi this is E_s Var_{a~pi}[Q^pi] = E_s E_pi[(A^pi)^2].

  Args:
    pi: [S, A] base policy.
    q_mu: [S, A] prover Q^mu.
    q_pi: [S, A] base-policy Q^pi.
    mu, v_mu, state_weights: as in `distinguishability`.

  Returns:
    [] float.
  """
  return _state_mean(_alignment_per_state(pi, q_mu, q_pi, mu, v_mu), state_weights)


def npg_update(pi: jax.Array, q: jax.Array, adv_mu: jax.Array, lr: float | jax.Array,
               alpha: float | jax.Array) -> jax.Array:
  """One natural-policy-gradient step on the effective reward, in closed form.

  pi_{t+1}(a|s) ∝ pi_t(a|s) * exp(lr * (Q^t(s, a) + alpha * A^mu(s, a))), the
  update Theorem 3.1 analyses (arXiv 2410.08146, Sec. 3.2). Computed as a softmax
  of log pi + lr * r so large rewards cannot overflow; actions with pi = 0 keep
  probability 0.

  Args:
    pi: [S, A] current policy pi_t.
    q: [S, A] Q^{pi_t}.
    adv_mu: [S, A] prover advantages.
    lr: step size g.
    alpha: weight of the prover term.

  Returns:
    [S, A] pi_{t+1}.
  """
  pi = jnp.asarray(pi)
  logits = jnp.log(pi) + lr * (jnp.asarray(q, pi.dtype) + alpha * jnp.asarray(adv_mu, pi.dtype))
  return jax.nn.softmax(logits, axis=-1)


def occupancy_terms(pi: jax.Array, q_mu: jax.Array, q_pi: jax.Array, occupancy: jax.Array, *,
                    mu: jax.Array | None = None,
                    v_mu: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Theorem 3.1's two terms summed over an unnormalised state occupancy.

  With d(s) = sum_h Pr_pi(s_h = s), the expected visits of each state in an
  episode, these are the weights of the performance-difference lemma, so
  `lr * (distinguishability + alignment)` is on the scale of a gain in V(root);
  divided by sum_s d(s) they are `distinguishability` and `alignment` with
  `state_weights=occupancy`.

  Args:
    pi, q_mu, q_pi, mu, v_mu: as in `alignment`.
    occupancy: [S] non-negative visits d(s).

  Returns:
    (sum_s d(s) Var_{a~pi}[A^mu(s, a)], sum_s d(s) E_{a~pi}[A^mu(s, a) A^pi(s, a)]),
    two [] floats. With q_mu = q_pi and mu = pi both are sum_s d(s) E_pi[(A^pi)^2].
  """
  d = jnp.asarray(occupancy)
  dist = _variance_per_state(pi, q_mu, mu, v_mu)
  align = _alignment_per_state(pi, q_mu, q_pi, mu, v_mu)
  return jnp.sum(d.astype(dist.dtype) * dist), jnp.sum(d.astype(align.dtype) * align)


def npg_first_order_gain(pi: jax.Array, q: jax.Array, adv_mu: jax.Array,
                         lr: float | jax.Array, alpha: float | jax.Array,
                         occupancy: jax.Array) -> jax.Array:
  """The first-order gain in V(root) of `npg_update(pi, q, adv_mu, lr, alpha)`.

  Differentiating the exact step at lr = 0 (performance-difference lemma) gives
  dV(root)/dlr = sum_s d(s) Cov_{a~pi}(Q^pi, Q^pi + alpha A^mu)
               = sum_s d(s) (E_pi[(A^pi)^2] + alpha E_pi[A^mu A^pi]),
  i.e. `occupancy_terms(pi, q, q, d, mu=pi)[1] + alpha * alignment`. Theorem 3.1's
  distinguishability is not in this derivative: the theorem's bound
  `lr * (distinguishability + alignment)` is a separate prediction. A per-state
  constant in `adv_mu` drops out (E_pi[A^pi] = 0).

  Args:
    pi: [S, A] current policy.
    q: [S, A] its Q^pi.
    adv_mu: [S, A] prover advantages (as given to `npg_update`).
    lr, alpha: as in `npg_update`.
    occupancy: [S] visits d(s) of pi from the root.

  Returns:
    [] lr * dV(root)/dlr at lr = 0; the exact gain is this + O(lr^2).
  """
  pi = jnp.asarray(pi)
  adv_pi = tabular_advantages(q, policy=pi)
  per_state = policy_value(pi, adv_pi * (adv_pi + alpha * jnp.asarray(adv_mu, adv_pi.dtype)))
  return lr * jnp.sum(jnp.asarray(occupancy, per_state.dtype) * per_state)


# --- estimates from sibling samples (host-side numpy) ------------------------------------------


def group_mean(values: np.ndarray, group: np.ndarray, num_groups: int) -> np.ndarray:
  """Mean of `values` [C] within each group: [num_groups] float64 (0 for an empty group).

  Args:
    values: [C] one value per member.
    group: [C] int, the group of each member, in [0, num_groups).
    num_groups: G.
  """
  n = np.bincount(group, minlength=num_groups)
  return np.bincount(group, np.asarray(values, np.float64), num_groups) / np.maximum(n, 1)


def sibling_terms(a_mu: np.ndarray, a_pi: np.ndarray, group: np.ndarray,
                  num_groups: int) -> tuple[float, float]:
  """Theorem 3.1's terms estimated from sibling steps sampled from pi.

  The states are parent prefixes (the groups); each child is one step sampled
  from pi at its parent, so children weigh equally within a parent, and parents
  weigh equally. Distinguishability is the mean over parents of the population
  variance of A^mu over the parent's children; alignment the mean over parents
  of the children's mean A^mu * A^pi. Alignment is a raw (not centred) mean, as
  in the theorem: with few children the sample mean of A^pi is not 0, so even
  for A^mu = A^pi alignment exceeds distinguishability.

  Args:
    a_mu: [C] prover advantage of each child (e.g. Q^mu(child) - Q^mu(parent)).
    a_pi: [C] base-policy advantage of each child.
    group: [C] int, the parent of each child, in [0, num_groups).
    num_groups: G; a group without children is left out of both means.

  Returns:
    (distinguishability, alignment) as floats; NaN for both without any child.
  """
  a_mu = np.asarray(a_mu, np.float64)
  a_pi = np.asarray(a_pi, np.float64)
  group = np.asarray(group, np.int64)
  n = np.bincount(group, minlength=num_groups)
  present = n > 0
  if not present.any():
    return float("nan"), float("nan")
  mean = group_mean(a_mu, group, num_groups)
  var = group_mean((a_mu - mean[group]) ** 2, group, num_groups)
  cross = group_mean(a_mu * a_pi, group, num_groups)
  return float(var[present].mean()), float(cross[present].mean())
