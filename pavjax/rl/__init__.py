"""Online RL pieces: advantage estimators and the policy-gradient loss (pure arrays).

An RL batch is a trajectory table (`pavjax.trajectories`); its token step ids and
loss mask are views of that table.
"""

from pavjax.rl import estimators
from pavjax.rl.estimators import ESTIMATORS, policy_loss, register

__all__ = ["ESTIMATORS", "estimators", "policy_loss", "register"]
