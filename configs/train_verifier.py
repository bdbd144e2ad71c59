"""Verifier training (ORM or Q) on a rollout dataset.

Launch (after the rollouts job):
  python -m pavjax.main --config=configs/train_verifier.py:task=arith,size=tiny,kind=q \
    --config.verifier.train_data=runs/rollouts_arith/rollouts/train \
    --config.init_from=runs/sft_arith/checkpoints --workdir=runs/prm_arith
Variants: task=..., size=..., kind=q|orm.
"""

import ml_collections

from pavjax import config_lib


def get_config(arg=None):
  v = config_lib.parse_arg(arg, {"task": "arith", "size": "tiny", "kind": "q",
                                 "difficulty": "", "hf": ""})
  config = config_lib.base_config("train_verifier", v["size"])
  config.task = config_lib.task_config(v["task"], v["difficulty"])
  config_lib.set_task_lengths(config, v["task"])
  config.verifier = ml_collections.ConfigDict()
  config.verifier.kind = v["kind"]  # q (Q of every prefix: PRM-Q / prover) | orm (outcome)
  config.verifier.loss = "bce"  # bce (soft labels) | mse
  config.verifier.balance = True  # equal loss weight for Q_hat < 0.5 and >= 0.5 prefixes
  config.verifier.train_data = ""  # rollout dataset dir (…/rollouts/train)
  config.verifier.eval_data = ""  # held-out rollout dataset dir ('' = no evaluation)
  config.verifier.eval_batch_size = 64  # sequences per scoring call at evaluation
  config.train.num_steps = 2000
  config.train.batch_size = 32
  config.train.log_every = 50
  config.checkpoint.every = 500
  config.optim.lr = 1e-3
  config_lib.use_pretrained(config, v["hf"])
  return config
