"""XLA flags every test process sets before importing jax (no jax import here)."""

# XLA:CPU aborts a process when one device thread of a collective waits 60 s for the
# others (20 s warning + 40 s). Faked devices share a few busy cores, and on a loaded
# 2-core CI machine a thread can be descheduled that long: a slow run, not a hang.
# Measured on this machine with one device held 75 s in a host callback before an
# all-reduce: the default aborted at 60 s, this flag let it finish. A real hang still
# fails, at this limit or at the multiprocess test's own deadline (which dumps stacks).
SLOW_COLLECTIVE = "--xla_cpu_collective_call_terminate_timeout_seconds=200"


def fake_cpu_devices(count: int) -> str:
  """XLA_FLAGS for `count` faked CPU devices."""
  return f"--xla_force_host_platform_device_count={count} {SLOW_COLLECTIVE}"
