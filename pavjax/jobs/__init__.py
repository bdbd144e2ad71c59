"""Jobs: one orchestration loop per module, each exposing `run(config, workdir)`.

`run_job` lives here, not in pavjax.main, so that a job can run other jobs (the
pipeline does) without importing the flag definitions of the entry point twice.
"""

from __future__ import annotations

import importlib


def run_job(config, workdir: str) -> dict:
  """Validates, records the resolved config, and runs `config.job`."""
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  workdir = config_lib.check_workdir(workdir)
  try:
    job = importlib.import_module(f"pavjax.jobs.{config.job}")
  except ModuleNotFoundError as e:
    raise config_lib.ConfigError("job", f"no job module pavjax/jobs/{config.job}.py") from e
  import jax  # pylint: disable=g-import-not-at-top
  # A job may validate its own config (the pipeline checks each stage's).
  getattr(job, "validate", config_lib.validate)(config, jax.device_count())
  if jax.process_index() == 0:
    config_lib.write_config(config, workdir)
  return job.run(config, workdir)
