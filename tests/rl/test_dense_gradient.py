"""With mu = pi and exact Q, the dense reward's expected gradient is the outcome gradient.

Exact enumeration on a tiny planted task (alphabet {0, 1, EOS}, y* = (0, 1),
horizon 3). The policy is tabular over the prover's automaton states, with
logits log mu_gamma: so pi = mu_gamma and the DP gives Q^pi exactly. Per-token
returns are built by the library (`step_advantages`, `token_rewards`, Eq. 5).
E[sum_h grad log pi(a_h|s_h) * A^pi(s_h, a_h)] equals E[sum_h grad log pi * Q^pi],
the policy gradient itself, so the dense gradient is (1 + alpha) times the
outcome-only one: the same direction, the paper's "adds nothing" (arXiv
2410.08146, Sec. 3). With a different prover the directions differ.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards
from pavjax.tasks import planted

VOCAB, EOS, LENGTH, PLANTED = 3, 2, 3, (0, 1)


def _responses():
  """Every distinct episode: token sequences that stop at EOS or at the horizon."""
  out = set()
  for seq in itertools.product(range(VOCAB), repeat=LENGTH):
    seq = list(seq)
    if EOS in seq:
      seq = seq[:seq.index(EOS) + 1]
    out.add(tuple(seq))
  return sorted(out)


def _expected_gradient(pi_prover, value_prover, alpha):
  """E_{y ~ pi}[grad_theta sum_t return_t * log pi(y_t | y_<t)] at theta = log mu."""
  theta0 = jnp.log(jnp.asarray(pi_prover.policy))  # [states, VOCAB]
  responses = _responses()
  states, actions, weights, returns = [], [], [], []
  for y in responses:
    s = [pi_prover.state(y[:t]) for t in range(len(y))]
    prob = np.prod([pi_prover.probs(y[:t])[a] for t, a in enumerate(y)])
    values = value_prover.prefix_values(y)  # [T + 1]: question, then after each token
    t_len = len(y)
    adv = rewards.step_advantages(jnp.asarray(values[1:])[None], jnp.asarray(values[:1]),
                                  jnp.ones((1, t_len), bool))
    outcome = planted.contains_planted(y, PLANTED, EOS, LENGTH)
    ret = rewards.token_rewards(jnp.array([float(outcome)]), adv, jnp.arange(t_len)[None], alpha)
    pad = LENGTH - t_len
    states.append(s + [0] * pad)
    actions.append(list(y) + [0] * pad)
    weights.append(prob)
    returns.append(list(np.asarray(ret[0])) + [0.0] * pad)
  states, actions = jnp.asarray(states), jnp.asarray(actions)
  weights, returns = jnp.asarray(weights), jnp.asarray(returns)
  np.testing.assert_allclose(float(weights.sum()), 1.0, rtol=1e-6)

  def surrogate(theta):
    logp = jax.nn.log_softmax(theta, -1)[states, actions]  # [Y, LENGTH]
    return jnp.sum(weights[:, None] * returns * logp)  # padded tokens have return 0

  return np.asarray(jax.grad(surrogate)(theta0)).ravel()


def test_mu_equals_pi_gives_the_outcome_gradient_scaled_by_one_plus_alpha():
  pi = planted.ProceduralProver(PLANTED, VOCAB, gamma=2.0, length=LENGTH)
  outcome_only = _expected_gradient(pi, pi, alpha=0.0)
  assert np.linalg.norm(outcome_only) > 1e-3
  for alpha in (0.5, 3.0):
    dense = _expected_gradient(pi, pi, alpha=alpha)
    np.testing.assert_allclose(dense, (1 + alpha) * outcome_only, rtol=1e-5, atol=1e-7)


def test_a_different_prover_changes_the_direction():
  pi = planted.ProceduralProver(PLANTED, VOCAB, gamma=2.0, length=LENGTH)
  mu = planted.ProceduralProver(PLANTED, VOCAB, gamma=8.0, length=LENGTH)
  outcome_only = _expected_gradient(pi, pi, alpha=0.0)
  dense = _expected_gradient(pi, mu, alpha=3.0)
  cos = dense @ outcome_only / (np.linalg.norm(dense) * np.linalg.norm(outcome_only))
  assert cos < 0.999, cos
