"""Online RL of the policy with dense PAV rewards (or outcome-only / the Q^mu control).

Launch (after SFT or RFT):
  python -m pavjax.main --config=configs/rl.py:task=arith,size=tiny,reward=pav,prover=bok \
    --config.init_from=runs/rft_arith/checkpoints \
    --config.rl.prover.verifier=runs/prm_arith/checkpoints --workdir=runs/rl_pav_arith
The paper's didactic run (exact mu_10 prover, no verifier needed):
  python -m pavjax.main --config=configs/rl.py:task=planted,size=test,reward=pav,prover=procedural \
    --config.init_from=runs/sft_planted/checkpoints --workdir=runs/rl_planted
On the paper's MADE-style MLP policy instead of the transformer: size=made (SFT too).
Variants: task=..., size=..., reward=outcome|pav|q_bonus, prover=bok|verifier|procedural
(procedural: planted's mu_gamma, or arith's exact line prover, pavjax.tasks.arith.StepProver).
setting=pavjax|paper (planted only): pavjax's defaults (KL 0.001 to the SFT policy and a
learned value baseline, from the paper's MATH RL, arXiv 2410.08146 Sec. 5) or the didactic
RL the paper states (Sec. 3.3 / App. B): REINFORCE with the effective reward, no KL penalty,
the batch-mean outcome as baseline (one prompt x 64 samples, `group_mean` over all 64),
Adam 1e-3 at a constant rate. Pair it with configs/sft.py:...,setting=paper.
"""

import ml_collections

from pavjax import config_lib

# Per task: (alpha, num_prompts, group_size, num_steps, lr). planted follows the
# paper's didactic setting (alpha 1, batch 64, Adam 1e-3); arith is CPU-sized.
_TASK_DEFAULTS = {
    "planted": (1.0, 16, 4, 1000, 1e-3),
    "arith": (3.0, 16, 4, 300, 2e-5),
    "toy": (1.0, 8, 2, 20, 1e-3),
    "jsonl_math": (3.0, 32, 4, 1000, 1e-6),
}


SETTINGS = ("pavjax", "paper")


def get_config(arg=None):
  v = config_lib.parse_arg(arg, {"task": "arith", "size": "tiny", "reward": "pav",
                                 "prover": "bok", "difficulty": "", "hf": "",
                                 "setting": "pavjax"})
  if v["setting"] not in SETTINGS:
    raise config_lib.ConfigError("setting", f"{v['setting']!r} is not one of {SETTINGS}")
  if v["setting"] == "paper" and v["task"] != "planted":
    raise config_lib.ConfigError("setting", "paper is the didactic task's RL (task=planted)")
  config = config_lib.base_config("rl", v["size"])
  config.task = config_lib.task_config(v["task"], v["difficulty"])
  config_lib.set_task_lengths(config, v["task"])
  alpha, prompts, group, steps, lr = _TASK_DEFAULTS.get(v["task"], _TASK_DEFAULTS["arith"])

  rl = config.rl = ml_collections.ConfigDict()
  rl.reward = v["reward"]  # outcome | pav (Rex + alpha A^mu) | q_bonus (Rex + alpha Q^mu)
  rl.alpha = alpha  # weight of the dense term (paper: 1 didactic, 3-5 on MATH)
  rl.estimator = "reinforce_value"  # reinforce_value | rloo | group_mean | none
  rl.num_prompts = prompts  # problems per batch
  rl.group_size = group  # samples per problem (forked from one prefill)
  rl.temperature = 1.0  # sampling temperature of RL rollouts
  rl.kl_coef = 0.001  # KL penalty to the initial policy (paper: 0.001; 0 = off)
  rl.value_coef = 0.5  # weight of the value-baseline regression
  # The baseline of reinforce_value: 'head' (a scalar head on the policy's detached
  # trunk) or 'separate' (a second network initialised from the policy's checkpoint,
  # the paper's setup; twice the parameters and optimizer state).
  rl.value_model = "head"
  rl.log_ratio_clamp = 10.0  # |log pi - log ref| clamp inside the KL estimate
  rl.mask_truncated = False  # leave responses without EOS out of the loss
  rl.max_steps = 0  # steps scored per response (0 = sample.max_new_tokens)
  rl.monitor_window = 20  # steps per window of the reward-hacking monitor (0 = off)
  rl.monitor_min_rise = 0.02  # dense-reward rise that, with flat accuracy, triggers it
  rl.eval_pass_ns = "1,4,16"  # Pass@N at each evaluation ('' = greedy accuracy only)
  rl.prover = ml_collections.ConfigDict()
  rl.prover.kind = v["prover"]  # bok | verifier | procedural
  rl.prover.verifier = ""  # checkpoints of a q verifier: Q^pi (bok) or the prover's Q^mu
  rl.prover.bok_k = 4  # K of the Best-of-K prover
  rl.prover.gamma = 10.0  # mu_gamma strength of the procedural prover (planted)
  rl.prover.step_accuracy = 0.8  # per-line accuracy of the procedural prover (arith)

  config.train.num_steps = steps
  config.train.batch_size = prompts * group
  config.train.log_every = 10
  config.train.eval_every = max(steps // 10, 1)
  config.checkpoint.every = max(steps // 5, 1)
  config.optim.lr = lr
  config.optim.warmup_steps = 0
  config.optim.end_lr_frac = 1.0  # constant learning rate
  if v["task"] == "planted":
    config.sample.method = "temperature"  # one prompt: accuracy by sampling, not greedy
    config.sample.num_eval = 256
  else:
    config.sample.num_eval = 64
  # The policy-gradient surrogate is not a loss that falls: it jumps when the policy
  # takes off (a planted MADE run crossed the spike rule at iteration 105), and
  # outcome-only RL with a batch-mean baseline has exactly zero gradient until its
  # first success. So RL warns on finite divergence (training.DivergenceMonitor)
  # rather than stopping; --config.train.divergence=stop opts in.
  config.train.divergence = "warn"
  if v["setting"] == "paper":
    # Every planted problem is the same prompt [BOS], so 64 samples of one prompt are
    # the paper's batch of 64, and group_mean over that group is the batch mean.
    rl.kl_coef = 0.0
    rl.estimator = "group_mean"
    rl.num_prompts, rl.group_size = 1, prompts * group
    config.optim.warmup_steps = 0
    config.optim.end_lr_frac = 1.0
  config_lib.use_pretrained(config, v["hf"])
  return config
