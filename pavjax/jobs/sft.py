"""SFT: next-token prediction on a task's reference solutions.

Writes to the workdir: checkpoints/, metrics.jsonl + tensorboard/, eval.jsonl,
samples.md (a table of sampled solutions with rewards), loss.png, summary.json.
The trainer is `pavjax.supervised` (RFT uses it too).
"""

from __future__ import annotations

import time

import ml_collections

from pavjax import config_lib
from pavjax import runtime
from pavjax import supervised
from pavjax import tasks


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every field this job reads, checked before any compute; errors name the field."""
  config_lib.validate(config, num_devices)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the policy by SFT; returns the summary it also writes to summary.json."""
  env = runtime.setup(config, workdir)
  t0 = time.time()
  data = tasks.sft_arrays(env.task, env.task.split("train"), config.model.max_len)
  return supervised.train(env, data, job="sft", t0=t0)
