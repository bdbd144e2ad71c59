"""Test set-up: 8 faked CPU devices, set before jax is imported anywhere."""

import os

import pytest

from tests import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                           xla_flags.fake_cpu_devices(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the environment set-up above)

from pavjax.main import serialize_fake_cpu_devices  # noqa: E402

# 8 fake devices share 2 cores, and XLA:CPU now and then stalls an all-reduce
# rendezvous until it aborts the process (40 s: "Expected 8 threads to join the
# rendezvous, but only 7 of them arrived"). One program in flight at a time made
# it rarer in a loop of the worst test (0 of 11 runs vs 2 of 6) without removing
# it, so long multi-thousand-step runs in tests use one device (see
# tests/jobs/test_train_verifier.py). Scheduling only: results are unchanged.
serialize_fake_cpu_devices()

# A persistent compilation cache roughly halves repeated suite time.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
if os.environ.get("PAVJAX_TEST_CACHE", "1") != "0":
  jax.config.update("jax_compilation_cache_dir", _CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config):
  del config
  if jax.device_count() != 8:
    raise RuntimeError(
        f"tests expect 8 faked CPU devices, found {jax.device_count()}: jax was imported "
        "before tests/conftest.py could set XLA_FLAGS")


@pytest.fixture
def plots(monkeypatch):
  """Every `metrics.plot_series` call, by file name: (series, bands); nothing drawn."""
  calls = {}

  def fake(series, path, **kw):
    calls[os.path.basename(path)] = (series, kw.get("bands"))
    return path

  monkeypatch.setattr("pavjax.metrics.plot_series", fake)
  return calls
