"""Tabular quantities of Theorem 3.1 and the closed-form NPG step (PAPER.md section 2).

Shapes: `S` states, `A` actions; policies are [S, A] rows that sum to 1 and Q
tables are [S, A]. States are averaged with optional `state_weights` [S] (e.g.
the on-policy state distribution d^pi; uniform by default).

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
  adv = _prover_advantages(pi, q_mu, mu, v_mu)  # [S, A]
  centred = adv - policy_value(pi, adv)[:, None]
  return _state_mean(policy_value(pi, jnp.square(centred)), state_weights)


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
  adv_mu = _prover_advantages(pi, q_mu, mu, v_mu)
  adv_pi = tabular_advantages(q_pi, policy=pi)
  return _state_mean(policy_value(pi, adv_mu * adv_pi), state_weights)


def npg_update(pi: jax.Array, q: jax.Array, adv_mu: jax.Array, lr: float | jax.Array,
               alpha: float | jax.Array) -> jax.Array:
  """One natural-policy-gradient step on the effective reward, in closed form.

  pi_{t+1}(a|s) ∝ pi_t(a|s) * exp(lr * (Q^t(s, a) + alpha * A^mu(s, a)))
  (PAPER.md section 2). Computed as a softmax of log pi + lr * r so large rewards
  cannot overflow; actions with pi = 0 keep probability 0.

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
