"""Sampling: cached prefill, prefix forking and while-loop decode."""

from pavjax.sampling.methods import Greedy, Temperature, TopK, TopP, from_config
from pavjax.sampling.sampler import (CachedLM, MadeLM, SampleOutput, Sampler, SamplingState,
                                     TransformerLM, bucket_length, cached_lm, in_dtype,
                                     left_pad)

__all__ = ["CachedLM", "Greedy", "MadeLM", "SampleOutput", "Sampler", "SamplingState",
           "Temperature", "TopK", "TopP", "TransformerLM", "bucket_length", "cached_lm",
           "from_config", "in_dtype", "left_pad"]
