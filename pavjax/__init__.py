"""pavjax: process advantage verifiers (Setlur et al., 2024) in JAX."""

__version__ = "0.1.0"
