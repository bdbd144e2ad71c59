"""Sampling: KV-cache prefill, prefix forking and while-loop decode."""

from pavjax.sampling.methods import Greedy, Temperature, TopK, TopP, from_config
from pavjax.sampling.sampler import (CachedLM, SampleOutput, Sampler, SamplingState,
                                     TransformerLM, bucket_length, left_pad)

__all__ = ["CachedLM", "Greedy", "SampleOutput", "Sampler", "SamplingState", "Temperature",
           "TopK", "TopP", "TransformerLM", "bucket_length", "from_config", "left_pad"]
