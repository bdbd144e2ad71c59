"""Entry point: `python -m pavjax.main --config=configs/<job>.py[:variants] --workdir=DIR`.

Single fields are overridden with `--config.section.field=value`; the config is
locked, so a misspelled field or a wrongly typed value fails at once. The job named
by `config.job` runs as `pavjax.jobs.<job>.run(config, workdir)`.

A config error prints one line `pavjax: bad config: ...`, unusable task data one line
`pavjax: bad data: <file>:<line>: <reason>: <detail>` (`pavjax.tasks.base.DataError`);
both exit with code 2. A run that fails for a reason its error names in full (a damaged
checkpoint, non-finite values, a finite divergence: `failures()`) prints one line
`pavjax: failed: <error>: <message>` and exits with code 1.

Multi-host: set PAVJAX_DISTRIBUTED=1 (launch_tpu.sh does) and every process calls
`jax.distributed.initialize()` before touching devices.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from pavjax.jobs import run_job  # noqa: F401  (re-exported: `from pavjax.main import run_job`)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Job config file (with :variants).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
flags.mark_flags_as_required(["config", "workdir"])

DISTRIBUTED_ENV = "PAVJAX_DISTRIBUTED"


def maybe_initialize_distributed() -> None:
  """`jax.distributed.initialize()` only when the launcher asks for it."""
  if os.environ.get(DISTRIBUTED_ENV, "") not in ("", "0"):
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()


def serialize_fake_cpu_devices() -> None:
  """Turns off CPU async dispatch when several CPU devices are faked via XLA_FLAGS.

  Fake devices share the host's cores, and XLA:CPU can stall an all-reduce
  rendezvous until it aborts (40 s); one program in flight at a time makes that
  rarer. Must run before jax creates its backend.
  """
  flags_env = os.environ.get("XLA_FLAGS", "")
  marker = "--xla_force_host_platform_device_count="
  if marker in flags_env:
    count = flags_env.split(marker, 1)[1].split()[0]
    if count.isdigit() and int(count) > 1:
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_cpu_enable_async_dispatch", False)


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with unknown override fields and bad variants named clearly."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError) as e:
    from pavjax import config_lib  # pylint: disable=g-import-not-at-top
    specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    spec = specs[-1] if specs else None
    if spec is not None:
      try:
        config_lib.check_override_paths(config_lib.load_config_file(spec), argv)
      except config_lib.ConfigError as named:
        print(f"pavjax: bad config: {named}", file=sys.stderr)
        sys.exit(2)
    print(f"pavjax: bad flags: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)
  # Orbax and other libraries log through absl at INFO; keep their chatter out.
  logging.getLogger("absl").setLevel(logging.WARNING)
  serialize_fake_cpu_devices()
  maybe_initialize_distributed()
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  from pavjax.tasks import base as tasks_base  # pylint: disable=g-import-not-at-top
  try:
    run_job(FLAGS.config, FLAGS.workdir)  # FLAGS.config loads the file lazily
  except config_lib.ConfigError as e:
    print(f"pavjax: bad config: {e}", file=sys.stderr)
    sys.exit(2)
  except tasks_base.DataError as e:
    print(f"pavjax: bad data: {one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except failures() as e:
    print(f"pavjax: failed: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
    _silence_teardown()
    sys.exit(1)


def failures() -> tuple[type[Exception], ...]:
  """Errors that end a run for a reason its message names in full: the run stops
  with that one line (exit code 1), not a traceback through the job's frames."""
  from pavjax import checkpoint  # pylint: disable=g-import-not-at-top
  from pavjax import metrics  # pylint: disable=g-import-not-at-top
  from pavjax import training  # pylint: disable=g-import-not-at-top
  return (checkpoint.CorruptCheckpointError, metrics.NonFiniteError, training.DivergenceError)


def _silence_teardown() -> None:
  """After the one-line error: library threads that print while the interpreter
  shuts down (orbax's closed event loops) write to /dev/null, not under it."""
  sys.stderr.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  os.close(devnull)


def one_line(error: Exception) -> str:
  """The error's message on one line (newlines shown as `\\n`)."""
  return str(error).replace("\r", "\\r").replace("\n", "\\n")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
