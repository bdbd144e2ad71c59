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
  """Validates, takes the workdir, records the resolved config, and runs `config.job`.

  The workdir's lock (`workdir_lock`) is held until the job returns or raises, so
  a second job on it stops at once. A workdir that already holds checkpoints
  resumes only under the config its `config.json` records
  (`config_lib.check_resume`); the record is replaced only after that check.
  """
  from pavjax import artifacts  # pylint: disable=g-import-not-at-top
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  from pavjax import workdir_lock  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  workdir = config_lib.check_workdir(workdir)
  validate_job(config, jax.device_count())
  lead = artifacts.is_lead_process()
  with workdir_lock.hold(workdir, config.job, lead=lead):
    allowed = config_lib.check_resume(config, workdir)
    if lead:
      if allowed:
        _keep_previous_config(workdir, allowed)
      config_lib.write_config(config, workdir)
    return job_module(config.job).run(config, workdir)


def _keep_previous_config(workdir: str, allowed: dict) -> None:
  """Before a resume under fields $PAVJAX_RESUME_ALLOW let change: the old record is
  kept as `config.<time>.json`."""
  import logging  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  kept = os.path.join(workdir, f"config.{int(time.time())}.json")
  shutil.copyfile(os.path.join(workdir, "config.json"), kept)
  logging.warning("resuming %s with changed fields %s; the previous config is kept as %s",
                  workdir, ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in allowed.items()),
                  kept)
