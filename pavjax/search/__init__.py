"""Test-time search: best-of-N and votes, step-level beam search, DVTS, compute accounting."""

from pavjax.search import best_of_n, compute
from pavjax.search.beam import SCORES, Beam, SearchResult, StepBeamSearch, run_dvts

__all__ = ["SCORES", "Beam", "SearchResult", "StepBeamSearch", "best_of_n", "compute",
           "run_dvts"]
