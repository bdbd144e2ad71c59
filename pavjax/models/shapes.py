"""Named shapes of released model families, as the `config.json` each checkpoint ships.

No weights: these are the architecture fields only, so that the memory of a real
model (the paper's Gemma 2 9B policy and 2B prover, arXiv 2410.08146 Sec. 5) can be
compiled ahead of time (`pavjax.aot`) on a machine that has never downloaded it.
`config_dict(name_or_path)` returns the dict that `pavjax.models.hf.config_from_hf`
reads, for a name below or for a checkpoint directory / `config.json` on disk
(weights need not be there).

Each entry is the published configuration of that checkpoint (the fields that set
its shape and numerics); `tests/test_aot.py` checks the parameter count each one
gives against the count published for the checkpoint.
"""

from __future__ import annotations

import copy
import os
from typing import Any

# Gemma 2 (arXiv 2408.00118): GeGLU, pre- and post-norms, soft-capped attention and
# logits, alternating sliding-window (4096) and global layers, a 256k vocabulary.
_GEMMA2 = {
    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
    "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False,
    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "sliding_window": 4096, "vocab_size": 256000, "tie_word_embeddings": True,
}

SHAPES: dict[str, dict[str, Any]] = {
    "gemma2-2b": {**_GEMMA2, "hidden_size": 2304, "intermediate_size": 9216,
                  "num_hidden_layers": 26, "num_attention_heads": 8,
                  "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256},
    "gemma2-9b": {**_GEMMA2, "hidden_size": 3584, "intermediate_size": 14336,
                  "num_hidden_layers": 42, "num_attention_heads": 16,
                  "num_key_value_heads": 8, "head_dim": 256, "query_pre_attn_scalar": 256},
    "gemma2-27b": {**_GEMMA2, "hidden_size": 4608, "intermediate_size": 36864,
                   "num_hidden_layers": 46, "num_attention_heads": 32,
                   "num_key_value_heads": 16, "head_dim": 128, "query_pre_attn_scalar": 144},
    "llama3-8b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "vocab_size": 128256, "tie_word_embeddings": False,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False},
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "max_position_embeddings": 131072, "max_window_layers": 28,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 131072,
        "use_sliding_window": False, "vocab_size": 152064, "tie_word_embeddings": False,
        "hidden_act": "silu"},
}

# Parameters of each checkpoint as published (the sum over its safetensors tensors);
# pavjax's count adds its value head, embed_dim + 1 more.
PUBLISHED_PARAMS = {
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma2-27b": 27_227_128_320,
    "llama3-8b": 8_030_261_248,
    "qwen2.5-7b": 7_615_616_512,
}


def is_shape_name(name: str) -> bool:
  return name in SHAPES


def config_dict(name_or_path: str) -> dict[str, Any]:
  """The `config.json` dict of a named shape, or of a checkpoint dir / config.json file."""
  if name_or_path in SHAPES:
    return copy.deepcopy(SHAPES[name_or_path])
  path = os.fspath(name_or_path)
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{name_or_path!r} is neither a named shape ({sorted(SHAPES)}) nor a "
                     "checkpoint directory or config.json file")
  import json  # pylint: disable=g-import-not-at-top
  with open(path, encoding="utf-8") as f:
    return json.load(f)
