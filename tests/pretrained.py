"""A tiny pretrained-style checkpoint for job tests: a byte-level BPE trained on arith's
text and a random Qwen2 of that vocabulary, both written by transformers (no network).

The layout is what a user's downloaded checkpoint directory holds: config.json,
model.safetensors, generation_config.json, tokenizer.json, tokenizer_config.json.
Qwen2's conventions: no BOS is added, `<|im_end|>` ends a response, `<|endoftext|>`
pads; id 0 is a plain byte ("!"), so nothing may treat id 0 as padding.
"""

from __future__ import annotations


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Small enough for a CPU test, wide enough that SFT learns arith's easy level quickly.
MODEL = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
             tie_word_embeddings=True, rope_theta=10000.0)


# A smaller model of the same family and tokenizer: a prover or verifier backbone.
SMALL_MODEL = dict(MODEL, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=2, num_key_value_heads=1)


def arith_corpus(difficulty: str = "easy") -> list[str]:
  """Prompts and steps of arith's training split (the BPE's training text)."""
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  from pavjax.tasks import arith  # pylint: disable=g-import-not-at-top
  cfg = config_lib.task_config("arith", difficulty)
  lines = []
  for p in arith.generate_splits(cfg)["train"][:2000]:
    lines.append(p.prompt)
    lines.extend(p.steps)
  return lines


def write_checkpoint(path: str, *, vocab_size: int = 320, seed: int = 0,
                     sizes: dict | None = None, tokenizer_from: str | None = None) -> str:
  """Writes the tokenizer and a random Qwen2 model to `path`; returns `path`.

  `sizes` replaces MODEL (e.g. SMALL_MODEL); `tokenizer_from` copies another
  checkpoint's tokenizer instead of training one (two models, one tokenizer).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  if tokenizer_from is not None:
    fast = transformers.AutoTokenizer.from_pretrained(tokenizer_from)
  else:
    fast = _train_tokenizer(vocab_size)
  fast.save_pretrained(path)
  config = transformers.Qwen2Config(vocab_size=len(fast), bos_token_id=None,
                                    eos_token_id=fast.eos_token_id,
                                    pad_token_id=fast.pad_token_id, **(sizes or MODEL))
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config)
  model.save_pretrained(path)
  return path


def _train_tokenizer(vocab_size: int):
  """A byte-level BPE trained on arith's text, with Qwen's special tokens."""
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(arith_corpus(), trainer)
  tok.add_special_tokens(SPECIALS)  # after the merges, as in Qwen's vocabulary
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                              pad_token="<|endoftext|>")
