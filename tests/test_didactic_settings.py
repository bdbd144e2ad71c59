"""The didactic task's two settings (configs/rl.py, configs/sft.py: setting=pavjax|paper).

setting=paper is the RL the paper states for the planted task (arXiv 2410.08146,
Sec. 3.3 / App. B): no KL penalty, the batch-mean outcome as baseline over the
batch's 64 samples, Adam 1e-3 at a constant rate; and an SFT without a warm-up.
"""

import sys

import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import config_lib
from pavjax import training
from pavjax.jobs import rl as rl_job
from pavjax.rl import estimators

sys.path.insert(0, ".")
from configs import rl as rl_config  # noqa: E402
from configs import sft as sft_config  # noqa: E402

PLANTED = "task=planted,size=made,prover=procedural,reward=pav"


def test_paper_rl_setting_fields_and_pavjax_defaults_kept():
  paper = rl_config.get_config(PLANTED + ",setting=paper")
  assert paper.rl.kl_coef == 0.0
  assert paper.rl.estimator == "group_mean"
  # One prompt x 64 samples: the group is the whole batch.
  assert (paper.rl.num_prompts, paper.rl.group_size, paper.train.batch_size) == (1, 64, 64)
  assert (paper.optim.warmup_steps, paper.optim.end_lr_frac, paper.optim.lr) == (0, 1.0, 1e-3)
  assert paper.rl.alpha == 1.0
  default = rl_config.get_config(PLANTED)
  assert default == rl_config.get_config(PLANTED + ",setting=pavjax")
  assert (default.rl.kl_coef, default.rl.estimator) == (0.001, "reinforce_value")
  assert (default.rl.num_prompts, default.rl.group_size) == (16, 4)
  # Nothing else differs between the two settings.
  flat = lambda c: dict(_flatten(c.to_dict()))
  diff = {k for k, v in flat(paper).items() if flat(default)[k] != v}
  assert diff == {"rl.kl_coef", "rl.estimator", "rl.num_prompts", "rl.group_size"}
  rl_job.validate(paper, 1)


def _flatten(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


@pytest.mark.parametrize("config", [rl_config, sft_config])
def test_paper_setting_is_planted_only_and_names_are_checked(config):
  with pytest.raises(config_lib.ConfigError, match="setting"):
    config.get_config("task=arith,size=tiny,setting=paper")
  with pytest.raises(config_lib.ConfigError, match="setting"):
    config.get_config("task=planted,size=made,setting=papr")


def test_batch_mean_baseline_over_the_64_samples_by_hand():
  rows, t = 64, 3
  outcome = np.zeros(rows, np.float32)
  outcome[[0, 5, 9, 40]] = 1.0  # 4 successes of 64: batch mean 0.0625
  returns = np.arange(rows * t, dtype=np.float32).reshape(rows, t) / 100.0
  mask = np.ones((rows, t), np.float32)
  mask[::3, 2] = 0.0
  want = np.array([[(returns[r, k] - 0.0625) * mask[r, k] for k in range(t)]
                   for r in range(rows)], np.float32)
  cfg = rl_config.get_config(PLANTED + ",setting=paper").rl
  got = estimators.get(cfg.estimator)(jnp.asarray(returns), jnp.asarray(mask),
                                      jnp.asarray(outcome), None, cfg.group_size)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # pavjax's 16 x 4 grouping is not the batch mean: row 0's group (rows 0-3) has mean 0.25.
  per_prompt = estimators.get("group_mean")(jnp.asarray(returns), jnp.asarray(mask),
                                            jnp.asarray(outcome), None, 4)
  np.testing.assert_allclose(per_prompt[0, 0], returns[0, 0] - 0.25, rtol=1e-6)


def _updates(optim_cfg, num_steps):
  """The first-coordinate update of each step for a constant unit gradient."""
  tx = training.make_optimizer(optim_cfg, num_steps)
  params = {"w": jnp.zeros((1,))}
  state = tx.init(params)
  out = []
  for _ in range(num_steps):
    upd, state = tx.update({"w": jnp.ones((1,))}, state, params)
    out.append(float(upd["w"][0]))
  return np.array(out)


def test_paper_sft_and_rl_learn_at_a_constant_rate_from_the_first_step():
  paper = sft_config.get_config("task=planted,size=made,setting=paper")
  assert paper.train.num_steps == 50
  steps = _updates(paper.optim, paper.train.num_steps)
  # Adam on a constant gradient steps by -lr at every step when the rate is constant.
  np.testing.assert_allclose(steps, -1e-3, rtol=1e-4)
  default = sft_config.get_config("task=planted,size=made")
  steps = _updates(default.optim, default.train.num_steps)
  assert steps[0] == 0.0 and abs(steps[-1]) > 0.9e-3  # pavjax's warm-up spans the run
  assert abs(steps[24]) < 0.6e-3
  rl = rl_config.get_config(PLANTED + ",setting=paper")
  np.testing.assert_allclose(_updates(rl.optim, 30), -1e-3, rtol=1e-4)
  # The rest of SFT is pavjax's.
  assert {k for k, v in _flatten(paper.to_dict())
          if dict(_flatten(default.to_dict()))[k] != v} == {"optim.warmup_steps",
                                                            "optim.end_lr_frac"}
