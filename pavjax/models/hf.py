"""Hugging Face checkpoints in and out: Llama, Mistral, Qwen2/2.5, Qwen3, Gemma, Gemma 2.

Three pieces, each with its inverse:

  * `config_from_hf`: a `config.json` -> `TransformerConfig`. Every field of the
    file is either read (mapped onto the config), known to leave the numerics alone
    (dropout, initializer range, token ids, generation defaults, ...), or checked to
    hold the value pavjax implements. Anything else with a non-null value is refused,
    naming the field, rather than silently ignored. `hf_config` writes the inverse.
  * One tensor table per family (`tensor_table`): HF tensor name -> parameter path
    and layout transform. HF Linear weights are [out, in]; pavjax's are [in, out]
    with the head axes split out (q_proj [N*H, D] -> wq [D, N, H]).
  * `load_params`: safetensors (one file or a sharded index) straight into the
    mesh: each device's callback reads only its slice, layer by layer, so host
    memory holds about one layer's tensor at a time. `export` writes
    `config.json`, `model.safetensors` (streamed, one tensor at a time) and the
    tokenizer files.

Pickle checkpoints (`pytorch_model.bin`, `*.pt`) are never opened.

The value head (`value_w` [D], `value_b` []) is pavjax's own: HF checkpoints have
none, so it loads as zeros. `export(value_head=True)` writes it as
`value_head.weight` [1, D] and `value_head.bias` [1] (transformers then reports
them as unexpected keys and ignores them); `load_params` reads them back when
present.

Dimension letters: D embed, F mlp, N query heads, K kv heads, X either head count,
H head dim, V vocab, L layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import struct
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pavjax.models.transformer import Transformer, TransformerConfig

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "added_tokens.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
VALUE_HEAD_WEIGHT = "value_head.weight"
VALUE_HEAD_BIAS = "value_head.bias"

# safetensors dtype codes pavjax reads, and the numpy dtype of each.
_DTYPES = {"F32": np.dtype(np.float32), "BF16": np.dtype(jnp.bfloat16),
           "F16": np.dtype(np.float16)}
_CODES = {v: k for k, v in _DTYPES.items()}

# Buffers some older checkpoints saved; recomputed from the config, never weights.
_BUFFER = re.compile(r"(^|\.)rotary_emb\.(inv_freq|original_inv_freq)$")


class HFCheckpointError(ValueError):
  """A config or checkpoint pavjax cannot load (or export) faithfully; the message names
  the field or tensor."""


# ------------------------------------------------------------------------------------------
# config.json <-> TransformerConfig
# ------------------------------------------------------------------------------------------

# Fields of any transformers config that never change a causal LM's outputs: bookkeeping,
# dropout (pavjax has none), init scales, token ids, and generation defaults that older
# config.json files carry.
_IGNORABLE = frozenset({
    "transformers_version", "_name_or_path", "name_or_path", "_commit_hash", "dtype",
    "torch_dtype", "use_cache", "initializer_range", "attention_dropout", "hidden_dropout",
    "embd_pdrop", "resid_pdrop", "pad_token_id", "bos_token_id", "eos_token_id",
    "sep_token_id", "decoder_start_token_id", "output_hidden_states", "output_attentions",
    "return_dict", "use_return_dict", "torchscript", "id2label", "label2id", "num_labels",
    "problem_type", "finetuning_task", "task_specific_params", "prefix",
    "chunk_size_feed_forward", "tf_legacy_loss", "use_bfloat16", "pruned_heads",
    "tie_encoder_decoder", "is_decoder", "_from_model_config", "_attn_implementation",
    "_attn_implementation_autoset", "tokenizer_class", "cache_implementation",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens",
})

# Known fields whose other values pavjax does not implement: field -> accepted values.
_FIXED_COMMON = {
    "is_encoder_decoder": (None, False),
    "add_cross_attention": (None, False),
    "cross_attention_hidden_size": (None,),
    "quantization_config": (None,),
}

# Fields every family reads (mapped onto TransformerConfig or used to derive it).
_READ_COMMON = frozenset({
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "rope_theta",
    "rope_scaling", "rope_parameters", "layer_types",
})


@dataclasses.dataclass(frozen=True)
class _Family:
  """What one HF family means in TransformerConfig terms, and its config fields."""

  defaults: Mapping[str, Any]  # transformers' class defaults of the fields read
  fixed: Mapping[str, tuple]  # known fields and the only values pavjax implements
  read: frozenset = frozenset()  # family-specific fields read besides _READ_COMMON
  ignorable: frozenset = frozenset()  # family-specific fields without numeric effect
  variant: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # fixed cfg fields


_LLAMA_ATTN = {"embed_scale": False, "norm_offset": 0.0, "mlp_activation": "silu"}
_GEMMA = {"embed_scale": True, "norm_offset": 1.0, "mlp_activation": "gelu_tanh"}

# Defaults are those of transformers' config classes (checked against them in
# tests/models/test_hf_weights.py): a field missing from config.json means the default.
_FAMILIES = {
    "llama": _Family(
        defaults=dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu"),
        fixed={"attention_bias": (None, False), "mlp_bias": (None, False),
               "hidden_act": ("silu",)},
        # pretraining_tp > 1 splits the same matmuls into slices (transformers 4); 5 drops it.
        ignorable=frozenset({"pretraining_tp"}),
        variant=_LLAMA_ATTN),
    "mistral": _Family(
        defaults=dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=131072, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, hidden_act="silu", sliding_window=4096),
        fixed={"hidden_act": ("silu",)},
        read=frozenset({"sliding_window"}),
        variant=_LLAMA_ATTN),
    "qwen2": _Family(
        defaults=dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                      num_hidden_layers=32, num_attention_heads=32,
                      max_position_embeddings=32768, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, hidden_act="silu", use_sliding_window=False,
                      sliding_window=4096, max_window_layers=28),
        fixed={"hidden_act": ("silu",)},
        read=frozenset({"use_sliding_window", "sliding_window", "max_window_layers"}),
        variant={**_LLAMA_ATTN, "qkv_bias": True}),
    "qwen3": _Family(
        defaults=dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                      num_hidden_layers=32, num_attention_heads=32, head_dim=128,
                      max_position_embeddings=32768, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, hidden_act="silu", use_sliding_window=False,
                      sliding_window=4096, max_window_layers=28),
        fixed={"hidden_act": ("silu",), "attention_bias": (None, False)},
        read=frozenset({"use_sliding_window", "sliding_window", "max_window_layers"}),
        variant={**_LLAMA_ATTN, "qk_norm": True}),
    "gemma": _Family(
        defaults=dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                      num_hidden_layers=28, num_attention_heads=16, head_dim=256,
                      max_position_embeddings=8192, rms_norm_eps=1e-6,
                      tie_word_embeddings=True),
        # "gelu" is a legacy spelling of the tanh approximation (transformers rewrites
        # it); transformers 4 read `hidden_activation` instead (None: tanh gelu).
        fixed={"hidden_act": (None, "gelu", "gelu_pytorch_tanh"),
               "hidden_activation": (None, "gelu_pytorch_tanh"),
               "attention_bias": (None, False), "use_bidirectional_attention": (None, False)},
        variant=_GEMMA),
    "gemma2": _Family(
        defaults=dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                      num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                      head_dim=256, max_position_embeddings=8192, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, query_pre_attn_scalar=256, sliding_window=4096,
                      final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
        fixed={"hidden_activation": (None, "gelu_pytorch_tanh"),
               "attention_bias": (None, False), "use_bidirectional_attention": (None, False)},
        read=frozenset({"query_pre_attn_scalar", "sliding_window", "sliding_window_size",
                        "final_logit_softcapping", "attn_logit_softcapping"}),
        # Gemma 2's modeling code reads `hidden_activation` only.
        ignorable=frozenset({"hidden_act"}),
        variant={**_GEMMA, "post_norms": True}),
}


def read_hf_config(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
  """The parsed `config.json` of a checkpoint directory (or that file, or a dict)."""
  if isinstance(path_or_dict, Mapping):
    return dict(path_or_dict)
  path = os.fspath(path_or_dict)
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  if not os.path.exists(path):
    raise HFCheckpointError(f"{path}: no config.json")
  with open(path) as f:
    return json.load(f)


def family_of(path_or_dict) -> str:
  """The family ('llama', ..., 'gemma2') of a config, from `model_type` / `architectures`."""
  hf = read_hf_config(path_or_dict)
  model_type = hf.get("model_type")
  archs = hf.get("architectures") or []
  if isinstance(archs, str):
    archs = [archs]
  by_arch = {v: k for k, v in ARCHITECTURES.items()}
  for arch in archs:
    if arch not in by_arch:
      raise HFCheckpointError(
          f"config.json architectures={archs}: {arch!r} is not one of the causal LMs pavjax "
          f"loads ({sorted(by_arch)})")
  if model_type is None:
    if not archs:
      raise HFCheckpointError("config.json has neither model_type nor architectures")
    model_type = by_arch[archs[0]]
  if model_type not in _FAMILIES:
    raise HFCheckpointError(
        f"config.json model_type={model_type!r} is not supported; known: {FAMILIES}")
  for arch in archs:
    if by_arch[arch] != model_type:
      raise HFCheckpointError(
          f"config.json model_type={model_type!r} disagrees with architectures={archs}")
  return model_type


def _check_fields(hf: Mapping[str, Any], family: str) -> None:
  """Refuses any field that is neither read, ignorable, nor at an implemented value."""
  fam = _FAMILIES[family]
  fixed = {**_FIXED_COMMON, **fam.fixed}
  for key, value in sorted(hf.items()):
    if key in fixed:
      if value not in fixed[key]:
        raise HFCheckpointError(
            f"{family} config.json {key}={value!r} is not implemented in pavjax "
            f"(supported: {[v for v in fixed[key] if v is not None]})")
    elif key in _READ_COMMON or key in fam.read or key in _IGNORABLE or key in fam.ignorable:
      continue
    elif value is not None:
      raise HFCheckpointError(
          f"{family} config.json field {key}={value!r} is not understood by "
          "pavjax.models.hf; refusing rather than ignoring it (it may change the numerics)")


def _rope(hf: Mapping[str, Any], family: str, max_pos: int) -> tuple[float, tuple]:
  """(rope_base, rope_scaling) from either transformers 5's `rope_parameters` or the older
  `rope_theta` + `rope_scaling`."""
  params = hf.get("rope_parameters")
  old_theta, old_scaling = hf.get("rope_theta"), hf.get("rope_scaling")
  if params is not None:
    if not isinstance(params, Mapping) or ("rope_type" not in params and "type" not in params):
      raise HFCheckpointError(
          f"{family} config.json rope_parameters={params!r}: expected one dict with a "
          "rope_type (per-layer-type rope parameters are not supported)")
    params = dict(params)
    # transformers 5 reads rope_parameters, 4 reads rope_theta/rope_scaling: disagreeing
    # values would mean different models to different readers.
    theta = params.get("rope_theta", old_theta if old_theta is not None else 10_000.0)
    if old_theta is not None and float(old_theta) != float(theta):
      raise HFCheckpointError(
          f"{family} config.json rope_theta={old_theta!r} disagrees with "
          f"rope_parameters.rope_theta={theta!r}")
    if old_scaling is not None:
      old_type = old_scaling.get("rope_type", old_scaling.get("type"))
      if old_type != params.get("rope_type", params.get("type")):
        raise HFCheckpointError(
            f"{family} config.json rope_scaling={old_scaling!r} disagrees with "
            f"rope_parameters={params!r}")
  else:
    theta = old_theta if old_theta is not None else 10_000.0
    params = dict(old_scaling) if old_scaling is not None else {"rope_type": "default"}
  rope_type = params.pop("rope_type", None) or params.pop("type", None)
  params.pop("type", None)
  params.pop("rope_theta", None)
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise HFCheckpointError(f"{family} config.json rope partial_rotary_factor="
                            f"{params['partial_rotary_factor']!r} is not implemented")
  params.pop("partial_rotary_factor", None)
  if rope_type == "default":
    if params:
      raise HFCheckpointError(f"{family} config.json default rope with extra parameters "
                              f"{params!r} is not understood")
    return float(theta), ()
  if rope_type == "llama3":
    known = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    extra = set(params) - known
    if extra:
      raise HFCheckpointError(f"{family} config.json llama3 rope parameters {sorted(extra)} "
                              "are not understood")
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
      if key not in params:
        raise HFCheckpointError(f"{family} config.json llama3 rope lacks {key}")
    original = params.get("original_max_position_embeddings") or max_pos
    return float(theta), ("llama3", float(params["factor"]), float(params["low_freq_factor"]),
                          float(params["high_freq_factor"]), int(original))
  raise HFCheckpointError(
      f"{family} config.json rope type {rope_type!r} is not implemented (supported: "
      "'default', 'llama3')")


def _layer_types(hf: Mapping[str, Any], family: str, num_layers: int) -> list[str] | None:
  types = hf.get("layer_types")
  if types is None:
    return None
  if len(types) != num_layers or set(types) - {"full_attention", "sliding_attention"}:
    raise HFCheckpointError(
        f"{family} config.json layer_types={types!r}: expected {num_layers} entries of "
        "'full_attention' / 'sliding_attention'")
  return list(types)


def with_run_choices(cfg: TransformerConfig, section) -> TransformerConfig:
  """`cfg` with a job's run-time choices from its `config.model` section (remat, the
  attention block and query chunk), which a checkpoint's config.json does not hold."""
  return dataclasses.replace(cfg, remat=bool(section.get("remat", False)),
                             attn_block=int(section.get("attn_block", cfg.attn_block)),
                             query_chunk=int(section.get("query_chunk", cfg.query_chunk)))


def config_from_hf(path_or_dict, *, max_len: int | None = None, dtype: str = "float32",
                   param_dtype: str | None = None) -> TransformerConfig:
  """The `TransformerConfig` of an HF checkpoint's `config.json`.

  Args:
    path_or_dict: a checkpoint directory, its config.json, or the parsed dict.
    max_len: the longest sequence pavjax will run (default: max_position_embeddings).
      A Mistral/Qwen sliding window shorter than it is refused.
    dtype: compute dtype.
    param_dtype: parameter dtype (default float32, whatever the checkpoint stores).

  Raises:
    HFCheckpointError: naming the field, for an unknown family, rope type, activation,
      bias, bidirectional attention, an active sliding window (Mistral/Qwen), or any
      field not known to be harmless.
  """
  hf = read_hf_config(path_or_dict)
  family = family_of(hf)
  fam = _FAMILIES[family]
  _check_fields(hf, family)
  get = lambda key: hf[key] if hf.get(key) is not None else fam.defaults.get(key)

  num_heads = int(get("num_attention_heads"))
  num_kv = hf.get("num_key_value_heads")
  num_kv = int(num_kv) if num_kv is not None else int(fam.defaults.get("num_key_value_heads",
                                                                         num_heads))
  hidden = int(get("hidden_size"))
  head_dim = get("head_dim")
  head_dim = int(head_dim) if head_dim is not None else hidden // num_heads
  num_layers = int(get("num_hidden_layers"))
  max_pos = int(get("max_position_embeddings"))
  max_len = int(max_len) if max_len is not None else max_pos
  rope_base, rope_scaling = _rope(hf, family, max_pos)
  types = _layer_types(hf, family, num_layers)

  fields: dict[str, Any] = dict(
      vocab_size=int(get("vocab_size")), embed_dim=hidden, num_layers=num_layers,
      num_heads=num_heads, num_kv_heads=num_kv, head_dim=head_dim,
      mlp_dim=int(get("intermediate_size")), max_len=max_len, rope_base=rope_base,
      rope_scaling=rope_scaling, tie_embeddings=bool(get("tie_word_embeddings")),
      dtype=dtype, param_dtype=param_dtype or "float32", norm_eps=float(get("rms_norm_eps")),
      **fam.variant)

  if family == "mistral":
    window = hf.get("sliding_window", fam.defaults["sliding_window"])
    if window is not None and int(window) < max_len:
      raise HFCheckpointError(
          f"mistral config.json sliding_window={window} is shorter than max_len={max_len}; "
          f"pavjax does not implement Mistral's sliding window: pass max_len<={window}")
  elif family in ("qwen2", "qwen3"):
    window = get("sliding_window")
    if get("use_sliding_window") and window is not None and int(window) < max_len:
      windowed = (any(t == "sliding_attention" for t in types) if types is not None
                  else int(get("max_window_layers")) < num_layers)
      if windowed:
        raise HFCheckpointError(
            f"{family} config.json use_sliding_window=True with sliding_window={window} "
            f"shorter than max_len={max_len} is not implemented: pass max_len<={window}")
  elif family == "gemma2":
    window = hf.get("sliding_window", hf.get("sliding_window_size",
                                             fam.defaults["sliding_window"]))
    size = hf.get("sliding_window_size")
    if size is not None and window is not None and int(size) != int(window):
      raise HFCheckpointError(
          f"gemma2 config.json sliding_window_size={size} disagrees with "
          f"sliding_window={window}")
    if types is None:  # transformers' default: even layers slide, odd ones are global
      types = ["sliding_attention" if i % 2 == 0 else "full_attention"
               for i in range(num_layers)]
    windows = tuple(int(window) if t == "sliding_attention" and window is not None else 0
                    for t in types)
    # Canonical forms (the defaults) where they mean the same model, so configs compare.
    fields["layer_windows"] = windows if any(windows) else ()
    scale = float(get("query_pre_attn_scalar")) ** -0.5
    fields["query_scale"] = 0.0 if scale == head_dim**-0.5 else scale
    fields["attn_softcap"] = float(hf.get("attn_logit_softcapping", 50.0) or 0.0)
    fields["final_softcap"] = float(hf.get("final_logit_softcapping", 30.0) or 0.0)
  if family in ("llama", "mistral", "gemma") and types and "sliding_attention" in types:
    raise HFCheckpointError(f"{family} config.json layer_types={types!r}: per-layer sliding "
                            "windows are not implemented for this family")
  return _make_config(fields)


def _make_config(fields: Mapping[str, Any]) -> TransformerConfig:
  known = {f.name for f in dataclasses.fields(TransformerConfig)}
  missing = sorted(set(fields) - known)
  if missing:
    raise NotImplementedError(
        f"TransformerConfig has no field(s) {missing}: the HF family variants of "
        "pavjax/models/transformer.py are needed")
  return TransformerConfig(**fields)


def infer_family(cfg: TransformerConfig) -> str:
  """The HF family a config can be written as (Mistral configs read back as 'llama')."""
  if getattr(cfg, "post_norms", False):
    return "gemma2"
  if getattr(cfg, "norm_offset", 0.0) == 1.0:
    return "gemma"
  if getattr(cfg, "qk_norm", False):
    return "qwen3"
  if getattr(cfg, "qkv_bias", False):
    return "qwen2"
  return "llama"


def hf_config(cfg: TransformerConfig, family: str | None = None, *,
              source: Mapping[str, Any] | None = None, dtype: str | None = None
              ) -> dict[str, Any]:
  """The `config.json` dict of `cfg` as an HF `family` model (the inverse of
  `config_from_hf`).

  Rope is written both ways (`rope_parameters` for transformers 5, `rope_theta` +
  `rope_scaling` for 4), with the same values. Token ids and other ignorable fields
  are copied from `source` (the original config.json) when given.

  Raises:
    HFCheckpointError: when `family` cannot express `cfg` (reading the result back
      must give `cfg` again).
  """
  family = family or infer_family(cfg)
  if family not in _FAMILIES:
    raise HFCheckpointError(f"unknown family {family!r}; known: {FAMILIES}")
  rope_scaling = tuple(getattr(cfg, "rope_scaling", ()) or ())
  if not rope_scaling:
    scaling, params = None, {"rope_type": "default", "rope_theta": cfg.rope_base}
  elif rope_scaling[0] == "llama3":
    _, factor, low, high, original = rope_scaling
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
               "high_freq_factor": high, "original_max_position_embeddings": original}
    params = {**scaling, "rope_theta": cfg.rope_base}
  else:
    raise HFCheckpointError(f"rope_scaling={rope_scaling!r} cannot be exported")
  out: dict[str, Any] = {
      "architectures": [ARCHITECTURES[family]], "model_type": family,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim,
      "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_len,
      "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
      "rope_theta": cfg.rope_base, "rope_scaling": scaling, "rope_parameters": params,
      "dtype": dtype or getattr(cfg, "param_dtype", "float32"), "attention_dropout": 0.0,
      "use_cache": True,
  }
  if family in ("llama", "mistral", "qwen2", "qwen3"):
    out["hidden_act"] = "silu"
  if family == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  elif family == "mistral":
    out["sliding_window"] = None
  elif family in ("qwen2", "qwen3"):
    out.update(use_sliding_window=False, sliding_window=None,
               max_window_layers=cfg.num_layers,
               layer_types=["full_attention"] * cfg.num_layers)
    if family == "qwen3":
      out["attention_bias"] = False
  elif family == "gemma":
    out.update(hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
               attention_bias=False)
  elif family == "gemma2":
    windows = tuple(getattr(cfg, "layer_windows", ()) or (0,) * cfg.num_layers)
    sizes = sorted({w for w in windows if w})
    if len(sizes) > 1:
      raise HFCheckpointError(f"gemma2 has one sliding window size; layer_windows={windows}")
    scale = getattr(cfg, "query_scale", 0.0) or cfg.head_dim**-0.5
    scalar = scale**-2.0
    scalar = round(scalar) if abs(scalar - round(scalar)) < 1e-6 * scalar else scalar
    out.update(hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
               attention_bias=False, query_pre_attn_scalar=scalar,
               sliding_window=sizes[0] if sizes else None,
               layer_types=["sliding_attention" if w else "full_attention" for w in windows],
               attn_logit_softcapping=getattr(cfg, "attn_softcap", 0.0) or None,
               final_logit_softcapping=getattr(cfg, "final_softcap", 0.0) or None)
  if source is not None:
    fam = _FAMILIES[family]
    for key, value in read_hf_config(source).items():
      if key not in out and (key in _IGNORABLE or key in fam.ignorable) and key not in (
          "dtype", "torch_dtype", "transformers_version", "_name_or_path"):
        out[key] = value
  # The inverse must be exact: what reads back differs only in run-time choices.
  back = config_from_hf(out, max_len=cfg.max_len, dtype=cfg.dtype,
                        param_dtype=getattr(cfg, "param_dtype", "float32"))
  back = dataclasses.replace(back, remat=cfg.remat, attn_block=cfg.attn_block,
                             query_chunk=cfg.query_chunk)
  if back != cfg:
    diff = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(back, f.name)}
    raise HFCheckpointError(
        f"family {family!r} cannot express {diff}: export writes models whose architecture "
        "is a Hugging Face family's (those that started from a checkpoint, model.size=hf); "
        "pavjax's own presets (e.g. embeddings scaled by sqrt(D) with SwiGLU) match none")
  return out


# ------------------------------------------------------------------------------------------
# Tensor tables
# ------------------------------------------------------------------------------------------

# Layout transforms, HF -> pavjax (per layer):
#   copy       same shape (norm scales [D] / [H], embedding [V, D])
#   linear     HF [O, I] -> [I, O] (mlp projections, lm_head)
#   heads_in   HF [X*H, D] -> [D, X, H] (q/k/v projections)
#   heads_out  HF [D, N*H] -> [N, H, D] (o projection)
#   heads_bias HF [X*H] -> [X, H] (Qwen2's q/k/v biases)


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One HF tensor <-> one parameter (a layer row of it when `per_layer`)."""

  hf: str  # HF name; "{i}" stands for the layer index when per_layer
  path: tuple[str, ...]  # parameter path in the flax params dict
  kind: str  # layout transform (see above)
  per_layer: bool


_ATTN = (("self_attn.q_proj.weight", ("attn", "wq"), "heads_in"),
         ("self_attn.k_proj.weight", ("attn", "wk"), "heads_in"),
         ("self_attn.v_proj.weight", ("attn", "wv"), "heads_in"),
         ("self_attn.o_proj.weight", ("attn", "wo"), "heads_out"))
_QKV_BIAS = (("self_attn.q_proj.bias", ("attn", "bq"), "heads_bias"),
             ("self_attn.k_proj.bias", ("attn", "bk"), "heads_bias"),
             ("self_attn.v_proj.bias", ("attn", "bv"), "heads_bias"))
_QK_NORM = (("self_attn.q_norm.weight", ("attn", "q_norm", "scale"), "copy"),
            ("self_attn.k_norm.weight", ("attn", "k_norm", "scale"), "copy"))
_MLP = (("mlp.gate_proj.weight", ("mlp", "w_gate"), "linear"),
        ("mlp.up_proj.weight", ("mlp", "w_up"), "linear"),
        ("mlp.down_proj.weight", ("mlp", "w_down"), "linear"))
# Llama/Mistral/Qwen/Gemma: `post_attention_layernorm` is the norm *before* the MLP.
_PRE_NORMS = (("input_layernorm.weight", ("attn_norm", "scale"), "copy"),
              ("post_attention_layernorm.weight", ("mlp_norm", "scale"), "copy"))
# Gemma 2 normalizes both before and after each sub-block.
_GEMMA2_NORMS = (("input_layernorm.weight", ("attn_norm", "scale"), "copy"),
                 ("post_attention_layernorm.weight", ("post_attn_norm", "scale"), "copy"),
                 ("pre_feedforward_layernorm.weight", ("mlp_norm", "scale"), "copy"),
                 ("post_feedforward_layernorm.weight", ("post_mlp_norm", "scale"), "copy"))

LAYER_TABLES = {
    "llama": _ATTN + _MLP + _PRE_NORMS,
    "mistral": _ATTN + _MLP + _PRE_NORMS,
    "qwen2": _ATTN + _QKV_BIAS + _MLP + _PRE_NORMS,
    "qwen3": _ATTN + _QK_NORM + _MLP + _PRE_NORMS,
    "gemma": _ATTN + _MLP + _PRE_NORMS,
    "gemma2": _ATTN + _MLP + _GEMMA2_NORMS,
}


def tensor_table(family: str, tie_embeddings: bool) -> tuple[TensorMap, ...]:
  """Every HF tensor of a `family` checkpoint and the parameter it maps to."""
  rows = [TensorMap("model.embed_tokens.weight", ("embedding",), "copy", False),
          TensorMap("model.norm.weight", ("final_norm", "scale"), "copy", False)]
  if not tie_embeddings:
    rows.append(TensorMap("lm_head.weight", ("lm_head",), "linear", False))
  for name, path, kind in LAYER_TABLES[family]:
    rows.append(TensorMap("model.layers.{i}." + name, ("layers",) + path, kind, True))
  return tuple(rows)


def hf_shape(kind: str, shape: Sequence[int]) -> tuple[int, ...]:
  """The HF shape of a (per-layer) parameter of pavjax `shape`."""
  if kind == "copy":
    return tuple(shape)
  if kind == "linear":
    return tuple(shape[::-1])
  if kind == "heads_in":
    d, x, h = shape
    return (x * h, d)
  if kind == "heads_out":
    n, h, d = shape
    return (d, n * h)
  if kind == "heads_bias":
    x, h = shape
    return (x * h,)
  raise ValueError(kind)


def read_transformed(get: Callable[[tuple], np.ndarray], kind: str, index: tuple,
                     shape: Sequence[int]) -> np.ndarray:
  """The block `index` (step-1 slices) of a pavjax per-layer parameter of `shape`, from
  `get(hf_index)`, which reads a block of the HF tensor.

  Only the HF rows/columns covering the block are read (whole heads: a head-dim
  split reads its heads in full, then keeps its part).
  """
  if kind == "copy":
    return get(index)
  if kind == "linear":  # [I, O] <- HF [O, I]
    i, o = index
    return get((o, i)).T
  if kind == "heads_in":  # [D, X, H] <- HF [X*H, D]
    d, x, h = index
    size = shape[2]
    t = get((slice(x.start * size, x.stop * size), d))  # [x*H, d]
    return t.reshape(x.stop - x.start, size, -1)[:, h, :].transpose(2, 0, 1)
  if kind == "heads_out":  # [N, H, D] <- HF [D, N*H]
    x, h, d = index
    size = shape[1]
    t = get((d, slice(x.start * size, x.stop * size)))  # [d, n*H]
    return t.reshape(t.shape[0], x.stop - x.start, size)[:, :, h].transpose(1, 2, 0)
  if kind == "heads_bias":  # [X, H] <- HF [X*H]
    x, h = index
    size = shape[1]
    return get((slice(x.start * size, x.stop * size),)).reshape(-1, size)[:, h]
  raise ValueError(kind)


def to_hf(kind: str, x: np.ndarray) -> np.ndarray:
  """A whole (per-layer) pavjax parameter in HF layout (the inverse of `read_transformed`)."""
  if kind == "copy":
    out = x
  elif kind == "linear":
    out = x.T
  elif kind == "heads_in":
    d = x.shape[0]
    out = x.reshape(d, -1).T
  elif kind == "heads_out":
    d = x.shape[-1]
    out = x.reshape(-1, d).T
  elif kind == "heads_bias":
    out = x.reshape(-1)
  else:
    raise ValueError(kind)
  return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------------
# Reading safetensors
# ------------------------------------------------------------------------------------------


def checkpoint_files(path: str) -> dict[str, str]:
  """Tensor name -> safetensors file of a checkpoint directory.

  Raises:
    HFCheckpointError: without safetensors files (pickle-only directories included:
      they are never loaded), or when the index names a missing file.
  """
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    for fname in sorted(set(weight_map.values())):
      if not os.path.exists(os.path.join(path, fname)):
        raise HFCheckpointError(f"{index} lists {fname}, which does not exist")
    return {name: os.path.join(path, fname) for name, fname in weight_map.items()}
  if os.path.exists(single):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    with safe_open(single, framework="numpy") as f:
      return {name: single for name in f.keys()}
  pickles = sorted(f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES)) \
      if os.path.isdir(path) else []
  if pickles:
    raise HFCheckpointError(
        f"{path} holds only pickle checkpoints ({', '.join(pickles)}); pavjax never loads "
        "pickle. Convert to safetensors first, e.g. in a trusted environment: "
        "AutoModelForCausalLM.from_pretrained(path).save_pretrained(out) (transformers "
        "writes model.safetensors)")
  raise HFCheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


class _Reader:
  """Open safetensors files; reads blocks of tensors as numpy (bfloat16 included)."""

  def __init__(self, files: Mapping[str, str], stack: contextlib.ExitStack):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    self._safe_open = safe_open
    self._stack = stack
    self.files = dict(files)
    self._np = {}
    self._jax = {}
    keys = {}
    for fname in sorted(set(self.files.values())):
      self._np[fname] = stack.enter_context(safe_open(fname, framework="numpy"))
      keys[fname] = set(self._np[fname].keys())
    for name, fname in self.files.items():
      if name not in keys[fname]:
        raise HFCheckpointError(f"tensor {name}: the index lists {fname}, which lacks it")

  def info(self, name: str) -> tuple[tuple[int, ...], str]:
    s = self._np[self.files[name]].get_slice(name)
    return tuple(s.get_shape()), s.get_dtype()

  def read(self, name: str, index: tuple) -> np.ndarray:
    fname = self.files[name]
    s = self._np[fname].get_slice(name)
    if s.get_dtype() != "BF16":
      return np.asarray(s[index])
    # safetensors' numpy reader has no bfloat16; its flax reader does (on the host CPU).
    if fname not in self._jax:
      self._jax[fname] = self._stack.enter_context(self._safe_open(fname, framework="flax"))
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      return np.asarray(self._jax[fname].get_slice(name)[index])


def _rules_for_mesh(rules, mesh) -> tuple:
  # The same filter as pavjax.sharding.rules_for_mesh, which pavjax.models may not import
  # (models build on nothing else in pavjax): mesh axes the mesh lacks become None.
  out = []
  for name, axes in rules or ():
    if isinstance(axes, str):
      axes = axes if axes in mesh.shape else None
    elif axes is not None:
      axes = tuple(a for a in axes if a in mesh.shape) or None
    out.append((name, axes))
  return tuple(out)


def abstract_params(cfg: TransformerConfig, mesh=None, rules=None) -> Any:
  """The model's parameters as ShapeDtypeStructs with NamedShardings on `mesh` (from
  the logical axes; `mesh` None: the first device, replicated)."""
  if mesh is None:
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,))
  boxed = jax.eval_shape(lambda r: Transformer(cfg).init(r, jnp.zeros((1, 1), jnp.int32)),
                         jax.random.PRNGKey(0))["params"]
  specs = nn.get_partition_spec(boxed)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, _rules_for_mesh(rules, mesh))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.unbox(boxed), shardings)


def _path_keys(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in path)


def _norm_index(index: tuple, shape: Sequence[int]) -> tuple:
  out = []
  for sl, n in zip(index, shape):
    start, stop, step = sl.indices(n)
    assert step == 1, index
    out.append(slice(start, stop, 1))
  return tuple(out)


def load_params(path: str, cfg: TransformerConfig, mesh=None, rules=None, *,
                family: str | None = None) -> Any:
  """The parameters of an HF checkpoint directory, created sharded on `mesh`.

  Args:
    path: directory with `config.json` and `model.safetensors` or
      `model.safetensors.index.json` (+ its shards).
    cfg: the model config (normally `config_from_hf(path)`).
    mesh, rules: the mesh and logical-axis rules; each parameter gets the NamedSharding
      its logical axes resolve to, and each device reads only its own block.
      `mesh` None: one device, replicated.
    family: default from the directory's config.json.

  Returns:
    The params dict, with the same tree and shapes as `Transformer(cfg).init(...)`;
    the value head is zeros unless the checkpoint holds `value_head.*` (a pavjax export).

  Raises:
    HFCheckpointError: naming the tensor, for a missing or unexpected tensor, a shape
      mismatch, a dtype other than float32/bfloat16/float16, an lm_head that differs
      from the tied embedding, or a pickle-only directory.
  """
  family = family or family_of(path)
  abstract = abstract_params(cfg, mesh, rules)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  leaves = {_path_keys(p): leaf for p, leaf in flat}
  table = tensor_table(family, cfg.tie_embeddings)
  by_path = {row.path: row for row in table}
  value_paths = {("value_w",), ("value_b",)}
  unmapped = sorted(set(leaves) - set(by_path) - value_paths)
  stale = sorted(set(by_path) - set(leaves))
  if unmapped or stale:  # the table and the model disagree: a pavjax bug, said plainly
    raise HFCheckpointError(f"{family}: model parameters {unmapped} have no HF tensor and "
                            f"table entries {stale} no parameter")

  # Every expected HF tensor with its expected shape.
  expected: dict[str, tuple[TensorMap, tuple[int, ...]]] = {}
  for row in table:
    shape = leaves[row.path].shape
    if row.per_layer:
      for i in range(cfg.num_layers):
        expected[row.hf.format(i=i)] = (row, hf_shape(row.kind, shape[1:]))
    else:
      expected[row.hf] = (row, hf_shape(row.kind, shape))

  files = checkpoint_files(path)
  with contextlib.ExitStack() as stack:
    reader = _Reader(files, stack)
    optional = {VALUE_HEAD_WEIGHT: (1, cfg.embed_dim), VALUE_HEAD_BIAS: (1,)}
    tied_head = cfg.tie_embeddings and "lm_head.weight" in files
    if tied_head:
      optional["lm_head.weight"] = (cfg.vocab_size, cfg.embed_dim)
    missing = sorted(set(expected) - set(files))
    if missing:
      raise HFCheckpointError(f"{path}: missing tensor {missing[0]}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for name in sorted(files):
      if name in expected:
        want = expected[name][1]
      elif name in optional:
        want = optional[name]
      elif _BUFFER.search(name):
        continue
      else:
        raise HFCheckpointError(f"{path}: unexpected tensor {name} (not part of a {family} "
                                "model with this config)")
      shape, code = reader.info(name)
      if shape != want:
        raise HFCheckpointError(f"tensor {name}: shape {list(shape)}, expected {list(want)}")
      if code not in _DTYPES:
        raise HFCheckpointError(f"tensor {name}: dtype {code} is not float32/bfloat16/float16")
    if tied_head:
      _check_tied(reader)

    out = []
    for p, leaf in flat:
      keys = _path_keys(p)
      if keys in value_paths:
        out.append(_value_head_leaf(keys, leaf, reader, files))
        continue
      out.append(_load_leaf(by_path[keys], leaf, reader, cfg.num_layers))
  return jax.tree_util.tree_unflatten(treedef, out)


def _check_tied(reader: _Reader, rows: int = 4096) -> None:
  """Refuses an lm_head.weight that is not the tied embedding (compared in row blocks)."""
  v = reader.info("model.embed_tokens.weight")[0][0]
  for start in range(0, v, rows):
    block = (slice(start, min(start + rows, v)), slice(None))
    a = reader.read("model.embed_tokens.weight", block)
    b = reader.read("lm_head.weight", block)
    if not np.array_equal(a, b):
      raise HFCheckpointError(
          "tensor lm_head.weight differs from model.embed_tokens.weight, but the config ties "
          "them (tie_word_embeddings=True)")


def _value_head_leaf(keys, leaf, reader: _Reader, files) -> jax.Array:
  name = VALUE_HEAD_WEIGHT if keys == ("value_w",) else VALUE_HEAD_BIAS

  def cb(index):
    if name not in files:
      return np.zeros(np.empty(leaf.shape)[index].shape, leaf.dtype)
    if name == VALUE_HEAD_WEIGHT:  # [D] <- HF [1, D]: this device's columns only
      return reader.read(name, (slice(0, 1),) + tuple(index))[0].astype(leaf.dtype)
    return reader.read(name, (slice(None),)).reshape(()).astype(leaf.dtype)  # [] <- [1]

  return jax.make_array_from_callback(leaf.shape, leaf.sharding, cb)


def _load_leaf(row: TensorMap, leaf, reader: _Reader, num_layers: int) -> jax.Array:
  """One parameter as a global array; each device's callback reads only its block."""
  dtype = leaf.dtype

  def cb(index):
    index = _norm_index(index, leaf.shape)
    if not row.per_layer:
      get = lambda hf_index: reader.read(row.hf, hf_index)
      return read_transformed(get, row.kind, index, leaf.shape).astype(dtype)
    layer_rows = []
    for i in range(index[0].start, index[0].stop):
      name = row.hf.format(i=i)
      get = lambda hf_index, name=name: reader.read(name, hf_index)
      layer_rows.append(read_transformed(get, row.kind, index[1:], leaf.shape[1:]).astype(dtype))
    return np.stack(layer_rows) if layer_rows else np.zeros(
        (0,) + tuple(s.stop - s.start for s in index[1:]), dtype)

  return jax.make_array_from_callback(leaf.shape, leaf.sharding, cb)


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------


def _host(x) -> np.ndarray:
  """A (possibly sharded) array on the host; gathered across processes when needed."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _lookup(params: Any, path: tuple[str, ...]):
  node = params
  for key in path:
    if key not in node:
      raise HFCheckpointError(f"params lack {'/'.join(path)}")
    node = node[key]
  return node


def write_safetensors(filename: str, tensors: Sequence[tuple[str, str, tuple[int, ...],
                                                             Callable[[], np.ndarray]]]
                      ) -> None:
  """Writes a safetensors file streaming one tensor at a time.

  `tensors`: (name, safetensors dtype code, shape, fetch) with fetch() giving the
  array. The header (shapes, dtypes, offsets) is known up front, so no more than one
  tensor is in host memory; the file is written under a temporary name and renamed.
  """
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, code, shape, _ in tensors:
    size = math.prod(shape) * _DTYPES[code].itemsize
    header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # 8-byte aligned data, as safetensors itself writes
  tmp = filename + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, code, shape, fetch in tensors:
      arr = np.ascontiguousarray(fetch(), dtype=_DTYPES[code])
      if arr.shape != tuple(shape):
        raise HFCheckpointError(f"tensor {name}: shape {arr.shape}, header says {shape}")
      f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
  os.replace(tmp, filename)


def export(params: Any, cfg: TransformerConfig, out_dir: str, *, family: str | None = None,
           tokenizer_dir: str | None = None, value_head: bool = False,
           dtype: str | None = None, source_config=None) -> str:
  """Writes an HF checkpoint directory that transformers loads as `family`.

  Args:
    params: the model's parameters (possibly sharded).
    cfg: their config.
    out_dir: created if needed; config.json and model.safetensors are (over)written.
    family: the HF family to write (keep the one `family_of` gave on load); default
      `infer_family(cfg)`, which writes Mistral-like configs as 'llama' (the same model).
    tokenizer_dir: copy the tokenizer / generation files (`TOKENIZER_FILES`) found there.
    value_head: also write `value_head.weight` [1, D] and `value_head.bias` [1]
      (transformers ignores them, reporting unexpected keys).
    dtype: dtype of the written tensors (default: each parameter's own).
    source_config: the original config.json (path or dict): its token ids and other
      fields without numeric effect are carried over.

  Returns:
    out_dir. Runs on every process when params span several; process 0 writes.
  """
  family = family or infer_family(cfg)
  config = hf_config(cfg, family, source=source_config,
                     dtype=dtype or getattr(cfg, "param_dtype", "float32"))
  entries = []

  def add(name, shape, fetch, src_dtype):
    code = _CODES.get(jnp.dtype(dtype) if dtype else np.dtype(src_dtype))
    if code is None:
      raise HFCheckpointError(f"tensor {name}: dtype {dtype or src_dtype} cannot be exported")
    entries.append((name, code, tuple(shape), fetch))

  for row in tensor_table(family, cfg.tie_embeddings):
    x = _lookup(params, row.path)
    if row.per_layer:
      layer_shape = hf_shape(row.kind, x.shape[1:])
      for i in range(cfg.num_layers):
        fetch = lambda x=x, i=i, kind=row.kind: to_hf(kind, _host(x[i]))
        add(row.hf.format(i=i), layer_shape, fetch, x.dtype)
    else:
      fetch = lambda x=x, kind=row.kind: to_hf(kind, _host(x))
      add(row.hf, hf_shape(row.kind, x.shape), fetch, x.dtype)
  if value_head:
    w, b = _lookup(params, ("value_w",)), _lookup(params, ("value_b",))
    add(VALUE_HEAD_WEIGHT, (1, cfg.embed_dim), lambda: _host(w).reshape(1, -1), w.dtype)
    add(VALUE_HEAD_BIAS, (1,), lambda: _host(b).reshape(1), b.dtype)
  entries.sort(key=lambda e: e[0])

  if jax.process_count() > 1 and jax.process_index() != 0:
    for *_, fetch in entries:  # gathers are collectives: every process takes part
      fetch()
    return out_dir
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  write_safetensors(os.path.join(out_dir, "model.safetensors"), entries)
  stale = os.path.join(out_dir, "model.safetensors.index.json")
  if os.path.exists(stale):  # an index would shadow the new single file
    os.remove(stale)
  if tokenizer_dir is not None:
    for name in TOKENIZER_FILES:
      src = os.path.join(tokenizer_dir, name)
      if os.path.exists(src):
        shutil.copyfile(src, os.path.join(out_dir, name))
  return out_dir
