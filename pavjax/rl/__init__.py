"""Online RL pieces: advantage estimators and the RL loss, and batch assembly."""

from pavjax.rl import batch, estimators
from pavjax.rl.estimators import ESTIMATORS, policy_loss, register

__all__ = ["ESTIMATORS", "batch", "estimators", "policy_loss", "register"]
