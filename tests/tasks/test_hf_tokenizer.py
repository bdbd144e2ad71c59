"""Pretrained tokenizers against transformers (offline: every checkpoint is built here).

Checkpoints, each a directory AutoTokenizer loads:
  bpe         byte-level BPE (tokenizers) with a BOS post-processor, saved by
              transformers' PreTrainedTokenizerFast (Llama 3 style), with a chat
              template and a generation_config listing two eos ids;
  bpe_legacy  the same vocabulary with no post-processor and the special tokens in
              special_tokens_map.json only (the legacy layout); add_bos_token in the
              config, which transformers 5 ignores next to tokenizer.json (no BOS);
              no pad token, so pad is eos; the chat template in the config;
  sp          a SentencePiece unigram model (byte fallback, dummy prefix) alone
              with a tokenizer_config.json (AutoTokenizer converts it generically);
  sp_gemma    a SentencePiece BPE model without dummy prefix, as GemmaTokenizer
              (which converts it to a tokenizers BPE of its own).
"""

import io
import json
import os

import jinja2
import pytest
import sentencepiece as spm
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from pavjax.tasks import arith
from pavjax.tasks import hf_tokenizer

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<pad>", "<|start_header_id|>",
            "<|end_header_id|>"]

# Digits, unicode (accents, CJK, emoji, symbols), blank lines, leading and repeated spaces.
CORPUS = [
    "The answer is 42.",
    "  two leading spaces, then   three inside",
    "x=c*k=7*3=21\nm=x+q=21+12=33\nanswer: 33",
    "naïve café — ünïcödé ✓ 日本語 🙂 €5",
    "\n\nblank lines above\n\n\nand below\n\n",
    " one leading space\n  and two on this line",
    "tabs\there and a trailing space ",
    "c=7, q=12, h=9, k=3. x=c*k, m=x+q. find m.",
    "Question: what is 3+4?\nAnswer: 7",
]

TEXTS = CORPUS + [
    "",
    "\n",
    " ",
    "unseen: zebra quokka ∑∫ 한국어",
    "specials inline: <|eot_id|>hi<pad> there<|end_of_text|>",
    "<s>hello</s> x <unk> y",
    "1234567890 0.5 -17",
]

CHAT_TEMPLATE = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system = "You solve math problems." %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}
{% for m in messages %}
    {% if m['role'] not in ['user', 'assistant'] %}
        {{ raise_exception('unknown role: ' + m['role']) }}
    {% endif %}
<|start_header_id|>{{ m['role'] }}<|end_header_id|>

{{ m['content'] | trim }}{% if m.meta is defined %} {{ m.meta | tojson }}{% endif %}
{% generation %}{% if loop.last and m['role'] == 'assistant' %}[last]{% endif %}{% endgeneration %}
<|eot_id|>
{% endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

MESSAGES = [
    {"role": "user", "content": "  What is 7*3?\n", "meta": {"k": "<b>&'ü", "n": [1, 2]}},
    {"role": "assistant", "content": "x=7*3=21\nanswer: 21", "meta": None},
    {"role": "user", "content": "And 21+12?"},
]


def _train_bpe(post_processor: bool) -> Tokenizer:
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS * 20, trainer)
  if post_processor:
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
  return tok


def _train_sentencepiece(model_type: str, add_dummy_prefix: bool) -> bytes:
  writer = io.BytesIO()
  lines = [line for text in CORPUS for line in text.split("\n") if line]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines * 30), model_writer=writer, vocab_size=400,
      model_type=model_type, hard_vocab_limit=False, byte_fallback=True, split_digits=True,
      character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
      add_dummy_prefix=add_dummy_prefix, user_defined_symbols=["<|im_end|>"], pad_id=3,
      num_threads=1, minloglevel=2)
  return writer.getvalue()


def _write_json(path, obj):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_checkpoints")
  dirs = {name: str(root / name) for name in ("bpe", "bpe_legacy", "sp", "sp_gemma")}

  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=_train_bpe(post_processor=True), bos_token="<|begin_of_text|>",
      eos_token="<|eot_id|>", pad_token="<pad>")
  fast.chat_template = CHAT_TEMPLATE
  fast.save_pretrained(dirs["bpe"])
  tok = Tokenizer.from_file(os.path.join(dirs["bpe"], "tokenizer.json"))
  # The first generation eos differs from the tokenizer's: eos_id must stay the tokenizer's.
  _write_json(os.path.join(dirs["bpe"], "generation_config.json"), {
      "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]})

  transformers.PreTrainedTokenizerFast(
      tokenizer_object=_train_bpe(post_processor=False)).save_pretrained(dirs["bpe_legacy"])
  config_path = os.path.join(dirs["bpe_legacy"], "tokenizer_config.json")
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  config.update(add_bos_token=True, chat_template=CHAT_TEMPLATE)
  _write_json(config_path, config)
  _write_json(os.path.join(dirs["bpe_legacy"], "special_tokens_map.json"), {
      "bos_token": {"content": "<|begin_of_text|>", "lstrip": False, "normalized": False,
                    "rstrip": False, "single_word": False},
      "eos_token": "<|end_of_text|>"})

  for name, model_type, dummy, config in (
      ("sp", "unigram", True, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                    "pad_token": "<pad>", "add_bos_token": True}),
      ("sp_gemma", "bpe", False, {"tokenizer_class": "GemmaTokenizer", "bos_token": "<s>",
                           "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                           "mask_token": "<mask>", "add_bos_token": True})):
    os.makedirs(dirs[name])
    with open(os.path.join(dirs[name], "tokenizer.model"), "wb") as f:
      f.write(_train_sentencepiece(model_type, dummy))
    _write_json(os.path.join(dirs[name], "tokenizer_config.json"), config)
  return dirs


@pytest.fixture(scope="module", params=["bpe", "bpe_legacy", "sp", "sp_gemma"])
def pair(request, checkpoints):
  """(pavjax tokenizer, transformers tokenizer, checkpoint name) of one checkpoint."""
  path = checkpoints[request.param]
  return (hf_tokenizer.load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path),
          request.param)


# ------------------------------------------------------------------ ids against transformers


def test_encode_text_matches_transformers(pair):
  tok, ref, name = pair
  for text in TEXTS:
    for add in (True, False):
      assert tok.encode_text(text, add_special_tokens=add) == ref(
          text, add_special_tokens=add)["input_ids"], (text, add)
  # The comparison covers adding BOS (by a post-processor or add_bos_token) and not adding it.
  assert (tok.encode_text("7")[0] == ref.bos_token_id) == (name != "bpe_legacy")


def test_special_ids_match_transformers(pair):
  tok, ref, name = pair
  assert tok.kind == ("sentencepiece" if name.startswith("sp") else "tokenizers")
  assert tok.bos_token_id == ref.bos_token_id is not None
  assert tok.bos_id == (None if name == "bpe_legacy" else ref.bos_token_id)
  assert tok.eos_id == ref.eos_token_id
  assert tok.unk_id == ref.unk_token_id
  if name == "bpe_legacy":  # no pad token: pad is eos
    assert ref.pad_token_id is None and tok.pad_id == tok.eos_id
  else:
    assert tok.pad_id == ref.pad_token_id
  assert tok.vocab_size == len(ref) == max(ref.get_vocab().values()) + 1
  assert tok.special_tokens == ref.special_tokens_map


def test_stop_ids_from_generation_config(checkpoints):
  tok = hf_tokenizer.load_tokenizer(checkpoints["bpe"])
  eot, end = tok.encode_text("<|eot_id|><|end_of_text|>", add_special_tokens=False)
  assert tok.eos_id == eot  # the tokenizer's eos, not generation_config's first
  assert tok.stop_ids == (eot, end)
  assert hf_tokenizer.load_tokenizer(checkpoints["bpe_legacy"]).stop_ids == (end,)


def test_eos_from_generation_config_when_tokenizer_names_none(checkpoints, tmp_path):
  path = str(tmp_path / "no_eos")
  os.makedirs(path)
  for name in ("tokenizer.json",):
    with open(os.path.join(checkpoints["bpe"], name), "rb") as src:
      with open(os.path.join(path, name), "wb") as dst:
        dst.write(src.read())
  tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
  ids = [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]
  _write_json(os.path.join(path, "generation_config.json"), {"eos_token_id": ids})
  loaded = hf_tokenizer.load_tokenizer(path)
  assert (loaded.eos_id, loaded.stop_ids, loaded.pad_id) == (ids[0], tuple(ids), ids[0])
  os.remove(os.path.join(path, "generation_config.json"))
  with pytest.raises(ValueError, match="no EOS"):
    hf_tokenizer.load_tokenizer(path)


def test_newline_id(pair):
  tok, ref, name = pair
  ids = ref("\n", add_special_tokens=False)["input_ids"]
  if name == "sp":  # the dummy prefix "▁" comes first; the newline is the byte piece
    assert ref.convert_ids_to_tokens(ids) == ["\u2581", "<0x0A>"]
  assert tok.nl_id == ids[-1]
  assert ref.decode([tok.nl_id]) == "\n"


def test_decode_text_matches_transformers(pair):
  tok, ref, _ = pair
  for text in TEXTS:
    ids = ref(text)["input_ids"]
    for skip in (True, False):
      assert tok.decode_text(ids, skip_special_tokens=skip) == ref.decode(
          ids, skip_special_tokens=skip), (text, skip)


# ------------------------------------------------------------------ pavjax's line convention


def test_line_encoding_round_trips(pair):
  tok, ref, _ = pair
  for text in TEXTS:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    if "<" in text:
      continue  # special-token strings: below
    expected = []
    for k, line in enumerate(text.split("\n")):
      expected += ([tok.nl_id] if k else []) + (
          ref(line, add_special_tokens=False)["input_ids"] if line else [])
    assert ids == expected, text
  # Special-token strings stay text: a problem cannot put an EOS in a solution.
  assert not set(tok.encode("<|eot_id|> <pad> </s> <s>")) & {tok.eos_id, tok.pad_id,
                                                              tok.bos_token_id}
  assert tok.decode([tok.bos_token_id] + tok.encode("a\nb") + [tok.eos_id, tok.pad_id, 10**9]
                    ) == "a\nb"


def test_vocab_size_covers_every_id(pair):
  tok, ref, _ = pair
  assert tok.vocab_size > max(ref.get_vocab().values())
  assert tok.id_to_token(tok.vocab_size) is None
  assert tok.id_to_token(tok.eos_id) == ref.eos_token


# ------------------------------------------------------------------ chat templates


@pytest.mark.parametrize("name", ["bpe", "bpe_legacy"])
def test_chat_template_matches_transformers(checkpoints, name):
  path = checkpoints[name]
  tok, ref = hf_tokenizer.load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)
  template = hf_tokenizer.chat_template(path)
  assert template == CHAT_TEMPLATE
  # bpe saves it as chat_template.jinja, bpe_legacy holds it in tokenizer_config.json.
  assert os.path.isfile(os.path.join(path, "chat_template.jinja")) == (name == "bpe")
  for gen in (False, True):
    expected = ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
    got = hf_tokenizer.render_chat(template, MESSAGES, add_generation_prompt=gen,
                                   **{"bos_token": None, "eos_token": None,
                                      **tok.special_tokens})
    assert got == expected
    assert tok.render_chat(MESSAGES, add_generation_prompt=gen) == expected
    assert tok.encode_text(got, add_special_tokens=False) == ref.apply_chat_template(
        MESSAGES, tokenize=True, add_generation_prompt=gen)["input_ids"]
  assert expected.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
  assert '{"k": "<b>&\'ü", "n": [1, 2]}' in expected  # tojson: no escaping, no \\u


def test_chat_template_errors_and_sandbox(checkpoints):
  template = hf_tokenizer.chat_template(checkpoints["bpe"])
  bad = [{"role": "tool", "content": "x"}]
  with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role: tool"):
    hf_tokenizer.render_chat(template, bad, add_generation_prompt=False, bos_token="<s>",
                             eos_token="</s>")
  with pytest.raises(jinja2.exceptions.SecurityError):
    hf_tokenizer.render_chat("{{ ''.__class__.__mro__ }}", [], add_generation_prompt=False,
                             bos_token=None, eos_token=None)
  with pytest.raises(jinja2.exceptions.SecurityError):
    hf_tokenizer.render_chat("{% set _ = messages.append(1) %}", [], add_generation_prompt=False,
                             bos_token=None, eos_token=None)
  assert hf_tokenizer.chat_template(checkpoints["sp"]) is None


def test_few_shot_prompt():
  prompt = hf_tokenizer.few_shot_prompt(
      [("1+1?", "2"), ("x=2, y=x*3. find y.", "y=x*3=2*3=6\nanswer: 6")], "3+4?")
  assert prompt == ("Question: 1+1?\nAnswer: 2\n\n"
                    "Question: x=2, y=x*3. find y.\nAnswer: y=x*3=2*3=6\nanswer: 6\n\n"
                    "Question: 3+4?\nAnswer:")
  assert hf_tokenizer.few_shot_prompt([], "q") == "Question: q\nAnswer:"
  with pytest.raises(ValueError, match="blank line"):
    hf_tokenizer.few_shot_prompt([("q", "a\n\nb")], "q2")


# ------------------------------------------------------------------ errors


def test_missing_tokenizer_files_are_clear_errors(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError) as err:
    hf_tokenizer.load_tokenizer(str(empty))
  for part in (str(empty), "tokenizer.json", "tokenizer.model", "config.json"):
    assert part in str(err.value)

  pickled = tmp_path / "pickled"
  pickled.mkdir()
  # The file is refused by its name and never opened, so its bytes need not be a real pickle
  # (the project has no pickle anywhere, tests included).
  (pickled / "tokenizer.bin").write_bytes(b"\x80\x04not opened")
  (pickled / "tokenizer_config.json").write_text('{"eos_token": "a"}')
  with pytest.raises(FileNotFoundError) as err:
    hf_tokenizer.load_tokenizer(str(pickled))
  for part in (str(pickled), "tokenizer.json", "tokenizer.model", "tokenizer.bin", "pickled"):
    assert part in str(err.value)

  with pytest.raises(FileNotFoundError, match="not a directory"):
    hf_tokenizer.load_tokenizer(str(tmp_path / "absent"))


def test_newline_must_be_one_token(tmp_path):
  tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "</s>": 2}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()  # drops "\n": no newline token at all
  tok.save(str(tmp_path / "tokenizer.json"))
  _write_json(tmp_path / "tokenizer_config.json", {"eos_token": "</s>"})
  with pytest.raises(ValueError, match="newline token"):
    hf_tokenizer.load_tokenizer(str(tmp_path))


# ------------------------------------------------------------------ arith, pretrained tokenizer


def _arith_cfg(**overrides):
  cfg = arith.default_config()
  cfg.num_train, cfg.num_eval = 200, 40
  for key, val in overrides.items():
    cfg[key] = val
  return cfg


@pytest.mark.parametrize("name", ["bpe", "sp"])
def test_arith_with_hf_tokenizer(checkpoints, name):
  path = checkpoints[name]
  task = arith.make(_arith_cfg(hf_tokenizer=path))
  ref = transformers.AutoTokenizer.from_pretrained(path)
  tok = task.tokenizer
  assert task.vocab_size == tok.vocab_size == len(ref)
  assert (task.eos_id, task.pad_id, task.bos_id) == (
      ref.eos_token_id, ref.pad_token_id, ref.bos_token_id)
  assert task.step_end_ids == (tok.nl_id,)

  def pretrained(line):
    return ref(line, add_special_tokens=False)["input_ids"]

  for p in task.split("validation"):
    # Prompts are one line: BOS + the pretrained ids of the text + newline.
    assert task.encode_prompt(p) == [ref.bos_token_id] + pretrained(p.prompt) + [tok.nl_id]
    solution = task.encode_solution(p)
    expected = []
    for k, line in enumerate(p.steps):
      expected += ([tok.nl_id] if k else []) + pretrained(line)
    assert solution == expected + [ref.eos_token_id]
    assert task.is_correct(solution, p).reason == "correct"
    assert task.step_texts(solution) == list(p.steps)
    assert task.answer_key(solution) == p.answer
    wrong = tok.encode("\n".join(p.steps[:-1] + (f"answer: {int(p.answer) + 1}",)))
    assert task.is_correct(wrong + [task.eos_id, task.pad_id], p).reason == "wrong"
  assert len(task.encode_prompt(p)) <= task.max_prompt_len


def test_arith_tokenizer_hash_ignores_hf_tokenizer(tmp_path):
  with_field = _arith_cfg()
  without = _arith_cfg()
  with without.unlocked():
    del without["hf_tokenizer"]
  expected = arith.tokenizer_path(without, str(tmp_path))
  assert arith.tokenizer_path(with_field, str(tmp_path)) == expected
  assert arith.tokenizer_path(_arith_cfg(hf_tokenizer="/some/ckpt"), str(tmp_path)) == expected
