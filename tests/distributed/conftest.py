"""Marker for the tests that start a localhost cluster of JAX processes."""


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "multiprocess: starts several JAX processes on localhost (CPU, gloo); "
      "about 40 s on 2 cores; deselect with -m 'not multiprocess'")
