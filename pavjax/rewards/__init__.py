"""Pure array maths of PAVs: MC targets, BoK provers, advantages, returns, losses, diagnostics.

No model calls and no file I/O. The `jnp` functions (targets, advantages,
returns, losses, ranking, and theory's tabular terms) take arrays and masks and
are jit-friendly; `balanced_indices`, the `diagnostics` module and theory's
sibling estimates (`group_mean`, `sibling_terms`) are host-side numpy.
"""

from pavjax.rewards.advantages import effective_reward, q_bonus_reward, step_advantages
from pavjax.rewards.diagnostics import (CalibrationTable, average_ranks, calibration_table,
                                        kendall_tau, sibling_metrics, sibling_metrics_with_fractions,
                                        sign_accuracy, spearman)
from pavjax.rewards.losses import Q_LOSSES, balanced_indices, sigmoid_mse_loss, soft_bce_loss
from pavjax.rewards.ranking import rank_candidates
from pavjax.rewards.returns import token_rewards
from pavjax.rewards.targets import MCTarget, binomial_std, bok_q, mc_q, wilson_interval
from pavjax.rewards.theory import (alignment, distinguishability, npg_update, policy_value,
                                   tabular_advantages)

__all__ = [
    "CalibrationTable", "MCTarget", "Q_LOSSES", "alignment", "average_ranks",
    "balanced_indices", "binomial_std", "bok_q", "calibration_table", "distinguishability",
    "effective_reward", "kendall_tau", "mc_q", "npg_update", "policy_value", "q_bonus_reward",
    "rank_candidates", "sibling_metrics", "sibling_metrics_with_fractions", "sigmoid_mse_loss", "sign_accuracy", "soft_bce_loss",
    "spearman", "step_advantages", "tabular_advantages", "token_rewards", "wilson_interval",
]
