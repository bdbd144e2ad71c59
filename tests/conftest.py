"""Test set-up: 8 faked CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the environment set-up above)

# A persistent compilation cache roughly halves repeated suite time.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config):
  del config
  if jax.device_count() != 8:
    raise RuntimeError(
        f"tests expect 8 faked CPU devices, found {jax.device_count()}: jax was imported "
        "before tests/conftest.py could set XLA_FLAGS")
