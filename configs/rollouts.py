"""Rollouts: seed responses and Monte-Carlo Q of every step prefix.

Launch (after SFT wrote runs/sft_arith):
  python -m pavjax.main --config=configs/rollouts.py:task=arith,size=tiny \
    --config.policy.checkpoint=runs/sft_arith/checkpoints --workdir=runs/rollouts_arith
Planted with the exact procedural prover (no policy checkpoint needed):
  python -m pavjax.main --config=configs/rollouts.py:task=planted,policy=procedural,prover=procedural \
    --workdir=runs/rollouts_planted
Variants: task=..., size=..., policy=checkpoint|procedural, prover=policy|checkpoint|procedural.
"""

import ml_collections

from pavjax import config_lib

def get_config(arg=None):
  v = config_lib.parse_arg(arg, {"task": "arith", "size": "tiny", "policy": "checkpoint",
                                 "prover": "policy", "difficulty": "", "hf": ""})
  config = config_lib.base_config("rollouts", v["size"])
  del config["optim"], config["train"], config["checkpoint"]
  config.task = config_lib.task_config(v["task"], v["difficulty"])
  config_lib.set_task_lengths(config, v["task"])

  config.policy = ml_collections.ConfigDict()
  config.policy.kind = v["policy"]  # checkpoint | procedural (planted's mu_gamma)
  config.policy.checkpoint = ""  # checkpoints dir of the base policy (kind=checkpoint)
  config.policy.gamma = 5.0  # mu_gamma strength when kind=procedural

  config.prover = ml_collections.ConfigDict()
  config.prover.kind = v["prover"]  # policy (Q^pi) | checkpoint (another policy) | procedural
  config.prover.checkpoint = ""  # checkpoints dir of the prover policy (kind=checkpoint)
  config.prover.gamma = 10.0  # mu_gamma strength when kind=procedural (exact Q by DP)

  config.rollouts = ml_collections.ConfigDict()
  config.rollouts.split = "train"  # which split's problems to roll out
  config.rollouts.num_problems = 256  # problems used (0 = the whole split)
  config.rollouts.n_cov = 4  # seed responses per problem (coverage)
  config.rollouts.n_mc = 8  # completions per prefix (label noise ~ 1/sqrt(n_mc))
  config.rollouts.temperature = 1.0  # sampling temperature of seeds and completions
  config.rollouts.problems_per_shard = 32  # problems per shard file (the unit of resume)
  config.rollouts.seq_batch = 32  # seed sequences prefilled per call
  config.rollouts.fork_batch = 32  # prefixes continued per call (x n_mc rows)
  config.rollouts.batching = "static"  # static | continuous (refill stopped rows; same data)
  config.rollouts.continuous_blocks = 4  # continuous: seq_batch blocks decoded per call
  config.rollouts.dtype = ""  # '' = the prover's own; bfloat16: MC rollouts in bf16
  config.rollouts.halt_after_shards = 0  # stop after this many new shards (0 = off)
  # First-pit seeding (Sec. 4.2, App. D): also continue high-value prefixes with the policy
  # and label a failed continuation's prefixes up to its first Q_hat = 0 ("pit").
  config.rollouts.seeding = "random"  # random | first_pit
  config.rollouts.pit_threshold = 0.5  # a prefix with Q_hat >= this is high-value
  config.rollouts.pit_prefixes = 1  # high-value prefixes continued per problem
  config.rollouts.pit_samples = 4  # policy continuations tried per high-value prefix
  config.sample.method = "temperature"
  config_lib.use_pretrained(config, v["hf"])
  return config
