"""Test-time search: step-level beam search with verifier scores."""

from pavjax.search.beam import SCORES, Beam, SearchResult, StepBeamSearch

__all__ = ["SCORES", "Beam", "SearchResult", "StepBeamSearch"]
