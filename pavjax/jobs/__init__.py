"""Jobs: one orchestration loop per module, each exposing `validate(config, num_devices)`
and `run(config, workdir)`.

This package's own module is the registry: `run_job` and `validate_job` look a job
up by `config.job`, so the pipeline runs other jobs without importing their
modules, and no job module imports another.
"""

from __future__ import annotations

import importlib
import types


def job_module(name: str) -> types.ModuleType:
  """`pavjax.jobs.<name>`, or a config error naming the field."""
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  try:
    return importlib.import_module(f"pavjax.jobs.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"pavjax.jobs.{name}":
      raise
    raise config_lib.ConfigError("job", f"no job module pavjax/jobs/{name}.py") from None


def validate_job(config, num_devices: int) -> None:
  """The job's own checks of every field it reads (pure: no task, no devices touched)."""
  job_module(config.job).validate(config, num_devices)


def run_job(config, workdir: str) -> dict:
  """Validates, records the resolved config, and runs `config.job`."""
  from pavjax import artifacts  # pylint: disable=g-import-not-at-top
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  workdir = config_lib.check_workdir(workdir)
  validate_job(config, jax.device_count())
  if artifacts.is_lead_process():
    config_lib.write_config(config, workdir)
  return job_module(config.job).run(config, workdir)
