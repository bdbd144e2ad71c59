"""HF checkpoints in and out (pavjax.models.hf), verified against transformers.

Every checkpoint is a random tiny model that transformers writes at test time (no
network): float32, 2 layers, D=64, GQA (4 query / 2 kv heads of 16), vocab 256, with
every tensor randomized (biases and norm scales included, so a dropped or misplaced
one shows). Tests marked `needs_variants` need the family variants of
`TransformerConfig` (embed_scale, norm_offset, qkv_bias, ...); the refusal tests on
config.json alone do not.
"""

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pavjax import sharding as shd
from pavjax.models import Transformer, TransformerConfig
from pavjax.models import hf
from pavjax.sampling import Greedy, Sampler, cached_lm, left_pad

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402  (after the importorskip above)
from safetensors.numpy import save_file  # noqa: E402

_VARIANT_FIELDS = {"embed_scale", "norm_offset", "qkv_bias", "qk_norm", "mlp_activation",
                   "post_norms", "attn_softcap", "final_softcap", "query_scale",
                   "layer_windows", "rope_scaling", "param_dtype"}
HAS_VARIANTS = _VARIANT_FIELDS <= {f.name for f in dataclasses.fields(TransformerConfig)}
needs_variants = pytest.mark.skipif(
    not HAS_VARIANTS, reason="needs the HF family variants of TransformerConfig")

_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=128)
_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}

# case -> (family, transformers config class, extra config fields, expected cfg fields)
CASES = {
    "llama": ("llama", "LlamaConfig", dict(tie_word_embeddings=False),
              dict(embed_scale=False, tie_embeddings=False, mlp_activation="silu")),
    "llama_tied": ("llama", "LlamaConfig", dict(tie_word_embeddings=True),
                   dict(tie_embeddings=True)),
    "llama3": ("llama", "LlamaConfig", dict(tie_word_embeddings=False,
                                            rope_parameters=_LLAMA3_ROPE),
               dict(rope_base=500000.0, rope_scaling=("llama3", 8.0, 1.0, 4.0, 64))),
    "mistral": ("mistral", "MistralConfig", dict(sliding_window=None), dict(embed_scale=False)),
    "qwen2": ("qwen2", "Qwen2Config", dict(tie_word_embeddings=True,
                                           rope_parameters={"rope_type": "default",
                                                            "rope_theta": 1e6}),
              dict(qkv_bias=True, rope_base=1e6)),
    "qwen3": ("qwen3", "Qwen3Config", dict(tie_word_embeddings=False), dict(qk_norm=True)),
    "gemma": ("gemma", "GemmaConfig", dict(hidden_act="gelu_pytorch_tanh"),
              dict(embed_scale=True, norm_offset=1.0, mlp_activation="gelu_tanh",
                   tie_embeddings=True)),
    "gemma2": ("gemma2", "Gemma2Config", dict(sliding_window=4, query_pre_attn_scalar=24,
                                              attn_logit_softcapping=2.0,
                                              final_logit_softcapping=5.0),
               dict(post_norms=True, norm_offset=1.0, layer_windows=(4, 0),
                    query_scale=24**-0.5, attn_softcap=2.0, final_softcap=5.0)),
}

_DIRS = {}


def _randomize(model):
  """Every parameter random: weights ~ N(0, 1/fan_in), vectors (norms, biases) perturbed.

  The blocks' outputs are made larger than the (sqrt(D)-scaled, tied) embedding: a
  random tied model otherwise keeps predicting its input token, and greedy decoding
  then repeats one token whatever the cache holds.
  """
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 2:
        p.copy_(noise * p.shape[1] ** -0.5)
        if name.endswith(("o_proj.weight", "down_proj.weight")):
          p.mul_(3.0)
        if name.endswith("embed_tokens.weight") and model.config.model_type.startswith("gemma"):
          p.mul_(0.2)  # Gemma multiplies the looked-up embedding by sqrt(D) = 8
      else:
        p.add_(0.2 * noise)
        if "post_feedforward" in name or ("post_attention" in name and
                                          model.config.model_type == "gemma2"):
          p.add_(2.0)  # Gemma 2's post-norms set the blocks' output scale: (1 + w)


def _hf_config(case):
  family, cls, extra, _ = CASES[case]
  return getattr(transformers, cls)(**{**_TINY, **extra})


def _checkpoint(tmp_root, case, **save_kw):
  """A saved random checkpoint for `case` (cached per case and save options)."""
  key = (case, tuple(sorted(save_kw.items())))
  if key not in _DIRS:
    model = transformers.AutoModelForCausalLM.from_config(_hf_config(case))
    _randomize(model)
    path = os.path.join(tmp_root, f"{case}_{len(_DIRS)}")
    model.save_pretrained(path, **save_kw)
    _DIRS[key] = path
  return _DIRS[key]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("hf"))


def _tensors(path):
  """name -> numpy array (bfloat16 as its uint16 bits) of every tensor in a checkpoint."""
  out = {}
  for name, fname in hf.checkpoint_files(path).items():
    with safe_open(fname, framework="pt") as f:
      t = f.get_tensor(name)
      out[name] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
      out[name + ":dtype"] = str(t.dtype)
  return out


def _init_abstract(cfg):
  return nn.unbox(jax.eval_shape(
      lambda r: Transformer(cfg).init(r, jnp.zeros((1, 1), jnp.int32)), jax.random.PRNGKey(0)
  )["params"])


# ------------------------------------------------------------------------------------------
# config.json alone
# ------------------------------------------------------------------------------------------


@needs_variants
@pytest.mark.parametrize("family", hf.FAMILIES)
def test_config_defaults_are_those_of_transformers(family):
  cls = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
         "qwen3": "Qwen3Config", "gemma": "GemmaConfig", "gemma2": "Gemma2Config"}[family]
  full = getattr(transformers, cls)().to_dict()
  kw = {"max_len": 4096} if family == "mistral" else {}  # its default window is 4096
  assert hf.config_from_hf(full, **kw) == hf.config_from_hf({"model_type": family}, **kw)


@needs_variants
@pytest.mark.parametrize("case", sorted(CASES))
def test_config_from_hf_fields(root, case):
  family, _, _, expect = CASES[case]
  cfg = hf.config_from_hf(_checkpoint(root, case))
  assert hf.family_of(_checkpoint(root, case)) == family
  assert (cfg.vocab_size, cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
          cfg.head_dim, cfg.mlp_dim, cfg.max_len) == (256, 64, 2, 4, 2, 16, 128, 128)
  assert cfg.param_dtype == "float32"
  for key, value in expect.items():
    assert getattr(cfg, key) == value, key
  # The inverse mapping reads back to the same config.
  assert hf.config_from_hf(hf.hf_config(cfg, family)) == cfg


def test_config_refusals_name_the_field():
  llama = {"model_type": "llama", **_TINY}

  def refused(cfg, match, **kw):
    with pytest.raises(hf.HFCheckpointError, match=match):
      hf.config_from_hf(cfg, **kw)

  refused({**llama, "model_type": "gpt2"}, "model_type='gpt2'")
  refused({**llama, "architectures": ["LlamaForSequenceClassification"]},
          "LlamaForSequenceClassification")
  refused({**llama, "architectures": ["MistralForCausalLM"]}, "disagrees")
  refused({**llama, "hidden_act": "gelu"}, "hidden_act='gelu'")
  refused({**llama, "attention_bias": True}, "attention_bias=True")
  refused({**llama, "mlp_bias": True}, "mlp_bias=True")
  refused({**llama, "logits_scaling": 2.0}, "logits_scaling=2.0")  # unknown: refused
  refused({**llama, "quantization_config": {"bits": 4}}, "quantization_config")
  refused({**llama, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'")
  refused({**llama, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                        "rope_theta": 1e4}}, "'dynamic'")
  refused({**llama, "rope_theta": 1e4, "rope_parameters": {"rope_type": "default",
                                                           "rope_theta": 1e6}}, "rope_theta")
  refused({**llama, "model_type": "mistral", "sliding_window": 16}, "sliding_window=16",
          max_len=64)
  refused({**llama, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16,
           "max_window_layers": 0}, "use_sliding_window", max_len=64)
  refused({**llama, "model_type": "gemma", "hidden_activation": "gelu"}, "hidden_activation")
  refused({**llama, "model_type": "gemma", "use_bidirectional_attention": True},
          "use_bidirectional_attention=True")
  refused({**llama, "model_type": "gemma2", "hidden_activation": "relu"}, "hidden_activation")


@needs_variants
def test_config_accepts_harmless_and_inactive_fields():
  llama = {"model_type": "llama", **_TINY}
  base = hf.config_from_hf(llama)
  harmless = {"initializer_range": 0.5, "attention_dropout": 0.1, "bos_token_id": 7,
              "use_cache": False, "torch_dtype": "bfloat16", "pretraining_tp": 2,
              "some_future_field": None, "rope_scaling": None}
  assert hf.config_from_hf({**llama, **harmless}) == base
  # An inactive or long-enough window is no window.
  mistral = {**llama, "model_type": "mistral"}
  assert hf.config_from_hf({**mistral, "sliding_window": 64}, max_len=64).max_len == 64
  qwen = {**llama, "model_type": "qwen2", "use_sliding_window": False, "sliding_window": 16}
  assert hf.config_from_hf(qwen).qkv_bias
  # Old-style rope fields.
  old = hf.config_from_hf({**llama, "rope_theta": 5e5, "rope_scaling": {
      "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64}})
  assert old.rope_base == 5e5 and old.rope_scaling == ("llama3", 8.0, 1.0, 4.0, 64)
  assert hf.config_from_hf({**llama, "model_type": "gemma", "hidden_act": "gelu"}
                           ).mlp_activation == "gelu_tanh"  # legacy spelling of tanh gelu


# Field sets of published config.json files (transformers 4 era; sizes as released).
PUBLISHED = {
    "Llama-3.2-1B": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": {
            "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256},
    "Qwen2.5-0.5B": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
        "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936},
    "Qwen3-0.6B": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936},
    "gemma-7b": {
        "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 2, "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu",
        "hidden_activation": None, "hidden_size": 3072, "initializer_range": 0.02,
        "intermediate_size": 24576, "max_position_embeddings": 8192, "model_type": "gemma",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 16,
        "pad_token_id": 0, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
        "torch_dtype": "bfloat16", "transformers_version": "4.38.0.dev0", "use_cache": True,
        "vocab_size": 256000},
    "gemma-2-2b": {
        "architectures": ["Gemma2ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "attn_logit_softcapping": 50.0, "bos_token_id": 2,
        "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": 30.0,
        "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
        "initializer_range": 0.02, "intermediate_size": 9216, "max_position_embeddings": 8192,
        "model_type": "gemma2", "num_attention_heads": 8, "num_hidden_layers": 26,
        "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
        "torch_dtype": "float32", "transformers_version": "4.42.4", "use_cache": True,
        "vocab_size": 256000},
    "Mistral-7B-v0.1": {
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000},
}


@needs_variants
def test_published_configs_map_or_are_refused_for_a_reason():
  cfgs = {name: hf.config_from_hf(c) for name, c in PUBLISHED.items() if "Mistral" not in name}
  assert cfgs["Llama-3.2-1B"].rope_scaling == ("llama3", 32.0, 1.0, 4.0, 8192)
  assert (cfgs["Qwen2.5-0.5B"].qkv_bias, cfgs["Qwen2.5-0.5B"].head_dim) == (True, 64)
  assert cfgs["Qwen3-0.6B"].qk_norm and cfgs["Qwen3-0.6B"].rope_base == 1e6
  assert cfgs["gemma-7b"].mlp_activation == "gelu_tanh"
  g2 = cfgs["gemma-2-2b"]
  assert g2.layer_windows == (4096, 0) * 13 and g2.query_scale == 0.0  # 256 == head_dim
  assert (g2.attn_softcap, g2.final_softcap) == (50.0, 30.0)
  # Mistral v0.1 slides a 4096 window over 32768 positions: fine up to 4096 tokens only.
  with pytest.raises(hf.HFCheckpointError, match="sliding_window=4096"):
    hf.config_from_hf(PUBLISHED["Mistral-7B-v0.1"])
  assert hf.config_from_hf(PUBLISHED["Mistral-7B-v0.1"], max_len=4096).max_len == 4096
  for name, cfg in cfgs.items():  # what export writes reads back the same
    family = PUBLISHED[name]["model_type"]
    assert hf.config_from_hf(hf.hf_config(cfg, family)) == cfg, name


@needs_variants
def test_export_refuses_what_the_family_cannot_express():
  cfg = hf.config_from_hf({"model_type": "qwen3", **_TINY})
  with pytest.raises(hf.HFCheckpointError, match="qk_norm"):
    hf.hf_config(cfg, "llama")
  assert hf.infer_family(cfg) == "qwen3"


# ------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------


@needs_variants
@pytest.mark.parametrize("case", sorted(CASES))
def test_load_matches_init_tree_and_export_round_trips_bitwise(root, case):
  family = CASES[case][0]
  src = _checkpoint(root, case)
  cfg = hf.config_from_hf(src)
  params = hf.load_params(src, cfg)
  abstract = _init_abstract(cfg)
  assert jax.tree.structure(params) == jax.tree.structure(abstract)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(abstract)):
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
  assert not np.any(np.asarray(params["value_w"])) and float(params["value_b"]) == 0.0

  out = os.path.join(root, f"export_{case}")
  hf.export(params, cfg, out, family=family, source_config=src)
  want, got = _tensors(src), _tensors(out)
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  with open(os.path.join(out, "config.json")) as f:
    written = json.load(f)
  assert written["model_type"] == family
  assert written["architectures"] == [hf.ARCHITECTURES[family]]
  model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert type(model).__name__ == hf.ARCHITECTURES[family]


@needs_variants
def test_sharded_index_and_bfloat16_checkpoints(root):
  single = _checkpoint(root, "qwen2")
  sharded = _checkpoint(root, "qwen2", max_shard_size="50KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  cfg = hf.config_from_hf(sharded)
  a, b = hf.load_params(single, cfg), hf.load_params(sharded, cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  # bfloat16 on disk: loads into float32 (or bfloat16) parameters; exports bitwise back.
  model = transformers.AutoModelForCausalLM.from_pretrained(single).to(torch.bfloat16)
  bf16 = os.path.join(root, "qwen2_bf16")
  model.save_pretrained(bf16)
  p32 = hf.load_params(bf16, cfg)
  cfg16 = hf.config_from_hf(bf16, param_dtype="bfloat16")
  p16 = hf.load_params(bf16, cfg16)
  assert p16["embedding"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(p32["layers"]["attn"]["wq"]),
                                np.asarray(p16["layers"]["attn"]["wq"]).astype(np.float32))
  out = os.path.join(root, "qwen2_bf16_export")
  hf.export(p32, cfg, out, family="qwen2", dtype="bfloat16")
  want, got = _tensors(bf16), _tensors(out)
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@needs_variants
def test_value_head_export_and_tokenizer_files(root):
  src = _checkpoint(root, "llama_tied")
  cfg = hf.config_from_hf(src)
  params = hf.load_params(src, cfg)
  params = {**params, "value_w": jnp.arange(64, dtype=jnp.float32) / 64,
            "value_b": jnp.asarray(0.5, jnp.float32)}
  tok = os.path.join(root, "tokenizer")
  os.makedirs(tok, exist_ok=True)
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    with open(os.path.join(tok, name), "w") as f:
      f.write(name)
  out = os.path.join(root, "with_value_head")
  hf.export(params, cfg, out, tokenizer_dir=tok, value_head=True)
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    with open(os.path.join(out, name)) as f:
      assert f.read() == name
  assert not os.path.exists(os.path.join(out, "tokenizer.model"))
  tensors = _tensors(out)
  assert tensors[hf.VALUE_HEAD_WEIGHT].shape == (1, 64)
  back = hf.load_params(out, cfg)
  np.testing.assert_array_equal(np.asarray(back["value_w"]), np.asarray(params["value_w"]))
  assert float(back["value_b"]) == 0.5
  _, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"]
  assert sorted(info["unexpected_keys"]) == [hf.VALUE_HEAD_BIAS, hf.VALUE_HEAD_WEIGHT]


@needs_variants
def test_bad_checkpoints_are_refused_naming_the_tensor(root):
  src = _checkpoint(root, "llama")
  cfg = hf.config_from_hf(src)
  with safe_open(os.path.join(src, "model.safetensors"), framework="numpy") as f:
    good = {name: f.get_tensor(name) for name in f.keys()}

  def variant(name, tensors, config=None):
    path = os.path.join(root, "bad_" + name)
    os.makedirs(path, exist_ok=True)
    shutil.copyfile(os.path.join(src, "config.json"), os.path.join(path, "config.json"))
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return path

  def refused(path, match, c=cfg):
    with pytest.raises(hf.HFCheckpointError, match=match):
      hf.load_params(path, c)

  up = "model.layers.1.mlp.up_proj.weight"
  refused(variant("missing", {k: v for k, v in good.items() if k != up}),
          f"missing tensor {up}")
  refused(variant("shape", {**good, up: good[up][:, :32]}), rf"tensor {up}: shape \[128, 32\]")
  refused(variant("dtype", {**good, up: good[up].astype(np.int32)}), f"tensor {up}: dtype I32")
  extra = "model.layers.0.self_attn.extra.weight"
  refused(variant("unexpected", {**good, extra: good[up]}), f"unexpected tensor {extra}")
  refused(variant("layer2", {**good, "model.layers.2.mlp.up_proj.weight": good[up]}),
          "unexpected tensor model.layers.2")
  # Rotary buffers of older checkpoints are recomputed, not refused.
  inv = {**good, "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}
  hf.load_params(variant("inv_freq", inv), cfg)

  tied_src = _checkpoint(root, "llama_tied")
  tied = hf.config_from_hf(tied_src)
  with safe_open(os.path.join(tied_src, "model.safetensors"), framework="numpy") as f:
    tensors = {name: f.get_tensor(name) for name in f.keys()}
  emb = tensors["model.embed_tokens.weight"]
  hf.load_params(variant("tied_same", {**tensors, "lm_head.weight": emb.copy()}), tied)
  refused(variant("tied_diff", {**tensors, "lm_head.weight": emb + 1}),
          "lm_head.weight differs", tied)

  pickle_only = os.path.join(root, "bad_pickle")
  os.makedirs(pickle_only, exist_ok=True)
  shutil.copyfile(os.path.join(src, "config.json"), os.path.join(pickle_only, "config.json"))
  with open(os.path.join(pickle_only, "pytorch_model.bin"), "wb") as f:
    f.write(b"not opened")
  refused(pickle_only, "pytorch_model.bin.*never loads pickle.*safetensors")


@needs_variants
def test_loading_on_a_mesh_gives_the_one_device_values(root):
  assert jax.device_count() == 8, "needs 8 (faked) devices; see tests/conftest.py"
  # Head-dim, layer and vocab splits besides the default rules' fsdp/tensor ones.
  odd_rules = (("vocab", "data"), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", None),
               ("kv_heads", None), ("kv", "tensor"), ("layers", "data"))
  for case in ("qwen2", "llama"):
    src = _checkpoint(root, case)
    cfg = hf.config_from_hf(src)
    one = jax.tree.map(np.asarray, hf.load_params(src, cfg))
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    for rules in (shd.DEFAULT_RULES, odd_rules):
      params = hf.load_params(src, cfg, mesh, rules)
      for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(one)):
        np.testing.assert_array_equal(np.asarray(x), y)
    wq = params["layers"]["attn"]["wq"]
    assert wq.sharding.spec == P("data", "fsdp", None, "tensor")
    assert wq.addressable_shards[0].data.shape == (1, 32, 4, 8)
  default = hf.load_params(src, cfg, mesh, shd.DEFAULT_RULES)
  assert default["layers"]["attn"]["wq"].sharding.spec == P(None, "fsdp", "tensor", None)
  assert default["lm_head"].addressable_shards[0].data.shape == (32, 128)


def test_each_device_reads_only_the_block_it_holds(root, monkeypatch):
  """Sharded loading reads blocks, never whole tensors: with every parameter split 8
  ways, the elements read equal those held (head splits aside, none here), and no read
  is larger than one device's block."""
  src = _checkpoint(root, "llama")
  cfg = hf.config_from_hf(src)
  reads = []
  real_read = hf._Reader.read  # pylint: disable=protected-access

  def counting_read(self, name, index):
    block = real_read(self, name, index)
    reads.append((name, block.size))
    return block

  monkeypatch.setattr(hf._Reader, "read", counting_read)  # pylint: disable=protected-access
  mesh = shd.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  rules = (("vocab", "fsdp"), ("embed", "fsdp"), ("mlp", None), ("heads", None),
           ("kv_heads", None), ("kv", None), ("layers", None))
  params = hf.load_params(src, cfg, mesh, rules)
  trunk = [x for k, x in params.items() if k not in ("value_w", "value_b")]  # heads: zeros
  held = sum(shard.data.size for x in jax.tree.leaves(trunk) for shard in x.addressable_shards)
  largest_block = max(shard.data.size for x in jax.tree.leaves(params)
                      for shard in x.addressable_shards)
  value_head = {hf.VALUE_HEAD_WEIGHT, hf.VALUE_HEAD_BIAS}
  assert not any(name in value_head for name, _ in reads)  # absent: zeros, nothing read
  assert sum(n for _, n in reads) == held
  assert max(n for _, n in reads) <= largest_block
  whole = cfg.vocab_size * cfg.embed_dim
  assert largest_block == whole // 8  # every big parameter really is split 8 ways


# ------------------------------------------------------------------------------------------
# Numerics against transformers
# ------------------------------------------------------------------------------------------


def _hf_model(path):
  model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
  model.generation_config.eos_token_id = None
  model.generation_config.bos_token_id = None
  model.generation_config.pad_token_id = 0
  return model.eval()


@needs_variants
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_greedy_decoding_match_transformers(root, case):
  src = _checkpoint(root, case)
  cfg = hf.config_from_hf(src)
  params = hf.load_params(src, cfg)
  model = Transformer(cfg)
  ref = _hf_model(src)
  rng = np.random.default_rng(1)
  rows = [rng.integers(1, 256, size=n).tolist() for n in (12, 7)]

  # Full forward over a right-padded batch: each row's real positions equal transformers
  # run on that row alone (pad slots are causal-masked away from them).
  tokens = np.zeros((2, 12), np.int32)
  for b, row in enumerate(rows):
    tokens[b, :len(row)] = row
  logits = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(tokens)).logits)
  for b, row in enumerate(rows):
    with torch.no_grad():
      want = ref(torch.tensor([row])).logits[0].numpy()
    np.testing.assert_allclose(logits[b, :len(row)], want, atol=1e-4, rtol=0, err_msg=case)

  # Cached greedy decoding from left-padded prompts: token for token.
  padded, lengths = left_pad(rows)
  out = Sampler(cached_lm(model)).generate(params, jnp.asarray(padded), jnp.asarray(lengths),
                                           jax.random.PRNGKey(0), max_new_tokens=32,
                                           method=Greedy())
  for b, row in enumerate(rows):
    with torch.no_grad():
      want = ref.generate(torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=int),
                          max_new_tokens=32, do_sample=False)[0, len(row):].numpy()
    np.testing.assert_array_equal(np.asarray(out.tokens[b]), want, err_msg=f"{case} row {b}")
