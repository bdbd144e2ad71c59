"""RFT: the SFT policy fine-tuned on its own correct samples (the start of RL).

Launch (after SFT):
  python -m pavjax.main --config=configs/rft.py:task=arith,size=tiny \
    --config.init_from=runs/sft_arith/checkpoints --workdir=runs/rft_arith
Variants: task=..., size=....
"""

import ml_collections

from pavjax import config_lib


def get_config(arg=None):
  config = config_lib.sibling_config(__file__, "sft").get_config(arg)
  config.job = "rft"
  config.rft = ml_collections.ConfigDict()
  config.rft.num_problems = 1024  # training problems sampled (0 = the whole split)
  config.rft.num_samples = 8  # samples per problem; the correct ones are kept
  config.rft.temperature = 1.0
  # No correct sample at all: "fallback" keeps the initial (SFT) policy as RFT's
  # checkpoint and says so in summary.json and the report; "fail" stops the job.
  config.rft.on_no_correct = "fallback"
  config.train.num_steps = 300
  config.train.log_every = 25
  config.checkpoint.every = 100
  config.optim.lr = config.optim.lr / 4  # a gentle step away from the SFT policy
  config.optim.warmup_steps = 20
  config.sample.batch_size = 256
  return config
