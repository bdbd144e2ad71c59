"""Shared job-test fixtures: one briefly trained toy policy for the search, RL and RFT tests."""

import os
import sys

import pytest

from pavjax.main import run_job

sys.path.insert(0, ".")
from configs import sft as sft_config  # noqa: E402


@pytest.fixture(scope="session")
def toy_policy(tmp_path_factory):
  """Checkpoints of a toy SFT policy (120 steps): right often enough for RFT, far from perfect.

  Its value head is untrained; tests use it as a stand-in verifier too.
  """
  workdir = str(tmp_path_factory.mktemp("toy_sft"))
  config = sft_config.get_config("task=toy,size=test")
  config.train.num_steps = 120
  config.train.batch_size = 32
  config.checkpoint.every = 120
  config.sample.num_eval = 8
  config.sample.batch_size = 8
  run_job(config, workdir)
  return os.path.join(workdir, "checkpoints")
