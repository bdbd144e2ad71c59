"""Pretrained (Hugging Face) tokenizers, chat templates and few-shot prompts.

`load_tokenizer(path)` reads a checkpoint directory as `transformers.AutoTokenizer`
would, without importing transformers or unpickling anything:

  tokenizer.json            the `tokenizers` pipeline (preferred when present), else
  tokenizer.model           a SentencePiece model, used through `sentencepiece`;
  tokenizer_config.json     bos/eos/unk/pad tokens (a string or an AddedToken dict),
                            added_tokens_decoder, chat_template, and for a
                            SentencePiece model add_bos_token / add_eos_token
                            (with tokenizer.json, its post-processor alone adds
                            BOS/EOS: transformers 5 ignores those two keys there);
  special_tokens_map.json   the special tokens, as transformers reads it: only when
                            tokenizer_config.json has no added_tokens_decoder, and
                            then its entries win;
  generation_config.json    eos_token_id (an id or a list: all of them are stop ids)
                            and pad_token_id;
  chat_template.jinja       the chat template (wins over tokenizer_config's).

A directory with neither tokenizer file (a pickled `.bin`/`.pkl` tokenizer, or
slow-tokenizer files only) is refused with an error naming what was looked for.

Ids. The ids are the checkpoint's own: pavjax's "id 0 is padding" cannot hold
for a pretrained vocabulary (id 0 is "!" in GPT-2 and Llama 3, `<unk>` in Llama 2).

  eos_id     the tokenizer's eos token (= AutoTokenizer's eos_token_id); when it
             names none, the first of generation_config's eos_token_id.
  stop_ids   eos_id, then every other generation_config eos_token_id (a chat model
             ends a turn with, e.g., <|eot_id|> as well as <|end_of_text|>).
  pad_id     the checkpoint's pad token (tokenizer files, else generation_config's
             pad_token_id), else eos_id. In pavjax the pad id only fills slots that
             are masked or cut off by lengths: left padding of prompts, the tokens
             a finished row is fed while others still decode, right padding of
             teacher-forcing arrays and trajectory tables; and responses are cut at
             their first EOS before padding is looked at (`is_correct`,
             `segment_steps`, `answer_key`). So pad_id == eos_id is safe, and the
             pad id is never trained on. It must not be an id real text uses, since
             graders drop pad ids from a response: a task using this tokenizer must
             set its own `pad_id` to the tokenizer's (`base.Task.pad_id` is 0).
  bos_id     the id `encode_text` puts before the text (the checkpoint's bos when
             tokenizer.json's post-processor, or for a SentencePiece model
             add_bos_token, adds it), else None: pavjax
             prompts start exactly as the checkpoint's tokenizer starts a text.
             `bos_token_id` is the named bos token whether or not it is added.
  unk_id     the tokenizer's unk token id, or None (byte-level vocabularies have
             none).
  nl_id      the single id the tokenizer gives the text "\\n" alone (a leading
             bare "▁" piece, SentencePiece's dummy prefix, is not part of it);
             anything else (no token, several, unknown) is an error.
  vocab_size the tokenizer's own size: 1 + its largest id (added tokens
             included). A model's embedding table may be larger (padded).

Two encodings, two decodings:

  encode(text)       pavjax's line convention, as the other text tokenizers: each
                     line on its own (no BOS/EOS), lines joined by nl_id, and
                     special-token strings in the text stay plain text (a problem
                     cannot smuggle in an EOS). A line encodes the same wherever it
                     sits, so steps are token spans. This is not what the
                     tokenizer gives the whole text: merges across a newline
                     ("\\n\\n", ".\\n") never happen, and a SentencePiece model
                     with a dummy prefix gives every line one.
  decode(ids)        inverse of `encode`: split at nl_id, each piece decoded on its
                     own; pad, bos, eos and stop ids are dropped, ids outside the
                     vocabulary are ignored; never raises.
  encode_text(text)  the reference-exact whole-text encoding: the ids
                     `AutoTokenizer.from_pretrained(path)(text)["input_ids"]` gives
                     (BOS/EOS as the checkpoint adds them; special-token strings
                     become their ids), for prompts written by a chat template.
  decode_text(ids)   whole-text decoding, as `AutoTokenizer.decode` (without
                     clean_up_tokenization_spaces).

Where AutoTokenizer may differ: transformers 5 rebuilds the pipeline of a
model-specific tokenizer class (e.g. LlamaTokenizer, GemmaTokenizer) from that
class's code instead of reading tokenizer.json's (or the SentencePiece model's)
normalizer and pre-tokenizer; pavjax follows the files. They agree for the
generic class (PreTrainedTokenizerFast / TokenizersBackend, e.g. Llama 3) and
whenever a class's code matches its files (tested: GemmaTokenizer on a
Gemma-style SentencePiece BPE model). They do not for LlamaTokenizer on a
SentencePiece model with a dummy prefix (Llama 2, Mistral 7B v0.1): transformers
5 gives a leading space no extra "▁" and text after a special token no prefix,
where sentencepiece on the model's own file does. For a SentencePiece-only
checkpoint without a tokenizer class the reference is AutoTokenizer's generic
conversion of the .model: special-token strings are split out of the text, and
every other span is encoded by sentencepiece as it is (with its dummy prefix).
Mistral's pre-tokenizer regex patch is not applied.

Chat templates: `chat_template(path)` reads the checkpoint's template and
`render_chat` renders it as `apply_chat_template(messages, tokenize=False)` does
(a sandboxed jinja2 environment with trim_blocks and lstrip_blocks, the
`raise_exception`, `strftime_now` helpers, a non-escaping `tojson` filter and a
`{% generation %}` block). Base models get `few_shot_prompt` instead.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

from pavjax.tasks import tokenizer as tokenizer_lib

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The named special tokens, in transformers' order (it adds missing ones in this order).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                      "cls_token", "mask_token")
_EXTRA_SPECIAL_KEYS = ("additional_special_tokens", "extra_special_tokens")
_PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth")
_DUMMY_PREFIX = "\u2581"  # SentencePiece's word-boundary piece "▁"
_MARKER = "\ue000"  # a piece string no model has: sentencepiece decodes it as itself


def _read_json(path: str) -> dict:
  """The JSON object in `path`, or {} when the file is missing."""
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    obj = json.load(f)
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
  return obj


def _content(value: Any) -> str | None:
  """A special token's text: tokenizer configs store a string or an AddedToken dict."""
  if value is None:
    return None
  if isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(f"unreadable special token {value!r} (expected a string or "
                   "{'content': ...})")


def _id_list(value: Any) -> list[int]:
  """generation_config's eos_token_id / pad_token_id: None, an id or a list of ids."""
  if value is None:
    return []
  values = value if isinstance(value, (list, tuple)) else [value]
  if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
    raise ValueError(f"generation_config: expected token ids, got {value!r}")
  return list(values)


def _special_config(path: str) -> dict:
  """tokenizer_config.json, overridden by special_tokens_map.json as transformers reads it.

  transformers reads the map only when the config has no `added_tokens_decoder`
  (its legacy path), and then the map's entries win.
  """
  config = _read_json(os.path.join(path, TOKENIZER_CONFIG))
  if "added_tokens_decoder" in config:
    return config
  return {**config, **_read_json(os.path.join(path, SPECIAL_TOKENS_MAP))}


def special_tokens(path: str) -> dict[str, str]:
  """The checkpoint's named special tokens (of `SPECIAL_TOKEN_KEYS`), as text.

  These are also the chat template's `bos_token`, `eos_token`, ... variables.

  Args:
    path: the checkpoint directory.

  Returns:
    Key ("bos_token", ...) -> token text, for the tokens its files name.
  """
  config = _special_config(path)
  out = {}
  for key in SPECIAL_TOKEN_KEYS:
    text = _content(config.get(key))
    if text is not None:
      out[key] = text
  return out


def _extra_special_tokens(path: str) -> list[str]:
  """The additional/extra special tokens the files list (transformers makes sure they exist)."""
  config = _special_config(path)
  out = []
  for key in _EXTRA_SPECIAL_KEYS:
    value = config.get(key) or []
    values = value.values() if isinstance(value, Mapping) else value
    out.extend(t for t in (_content(v) for v in values) if t is not None)
  return out


def _added_tokens(config: Mapping[str, Any]) -> list[tuple[int, dict]]:
  """tokenizer_config's added_tokens_decoder as (id, AddedToken fields), by id."""
  decoder = config.get("added_tokens_decoder") or {}
  out = []
  for key, value in decoder.items():
    if not isinstance(value, Mapping) or not isinstance(value.get("content"), str):
      raise ValueError(f"{TOKENIZER_CONFIG}: added_tokens_decoder[{key!r}] is not an "
                       "AddedToken dict")
    out.append((int(key), {k: v for k, v in value.items() if not k.startswith("__")}))
  return sorted(out, key=lambda item: item[0])


def _missing_tokenizer_error(path: str) -> FileNotFoundError:
  """The error for a directory without tokenizer.json or tokenizer.model."""
  files = sorted(os.listdir(path))
  looked_for = (f"looked for {TOKENIZER_JSON} (tokenizers) and {SENTENCEPIECE_MODEL} "
                "(SentencePiece)")
  pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
  if pickles:
    return FileNotFoundError(
        f"{path}: no tokenizer file pavjax can read ({looked_for}); found only pickled "
        f"files {pickles[:8]}, which pavjax never loads (unpickling runs code). Re-save "
        "the tokenizer with transformers' save_pretrained to get tokenizer.json.")
  shown = ", ".join(files[:12]) + (", ..." if len(files) > 12 else "")
  return FileNotFoundError(f"{path}: no tokenizer found ({looked_for}); the directory "
                           f"holds: {shown or 'nothing'}")


def _split_prefix(with_specials: Sequence[int], without: Sequence[int]
                  ) -> tuple[list[int], list[int]]:
  """The ids a post-processor puts before and after `without` in `with_specials`."""
  n = len(without)
  for k in range(len(with_specials) - n + 1):
    if list(with_specials[k:k + n]) == list(without):
      return list(with_specials[:k]), list(with_specials[k + n:])
  raise ValueError("the tokenizer's post-processor changes the text's own ids; only "
                   "added prefixes and suffixes (BOS/EOS) are supported")


class _TokenizersBackend:
  """tokenizer.json through the `tokenizers` library, set up as transformers does."""

  kind = "tokenizers"

  def __init__(self, path: str, config: Mapping[str, Any], named: Mapping[str, str],
               extra: Sequence[str]):
    from tokenizers import AddedToken, Tokenizer  # pylint: disable=g-import-not-at-top
    tok = Tokenizer.from_file(os.path.join(path, TOKENIZER_JSON))
    # transformers encodes one text without truncation or padding, whatever the file says.
    tok.no_truncation()
    tok.no_padding()
    # Tokens the config declares, then named/extra special tokens, added where missing
    # (transformers' order); an existing vocabulary entry keeps its id.
    self.named = dict(named)
    present = {t.content for t in tok.get_added_tokens_decoder().values()}
    for _, fields in _added_tokens(config):
      if fields["content"] not in present:
        token = AddedToken(**fields)
        if fields.get("special"):
          tok.add_special_tokens([token])
        else:
          tok.add_tokens([token])
        present.add(fields["content"])
    for text in list(named.values()) + list(extra):
      if text not in present:
        tok.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        present.add(text)
    # BOS/EOS come from tokenizer.json's post-processor alone: transformers 5 drops
    # add_bos_token/add_eos_token from the config when tokenizer.json exists.
    self.tok = tok
    # Line encoding keeps special-token strings as text: a copy that never matches them.
    self.plain = Tokenizer.from_str(tok.to_str())
    self.plain.encode_special_tokens = True
    self.special_ids = frozenset(i for i, t in tok.get_added_tokens_decoder().items()
                                 if t.special)
    self.vocab_size = max(max(tok.get_vocab(with_added_tokens=True).values()) + 1,
                          tok.get_vocab_size(with_added_tokens=True))

  def token_to_id(self, text: str) -> int | None:
    return self.tok.token_to_id(text)

  def id_to_token(self, i: int) -> str | None:
    return self.tok.id_to_token(i)

  def encode(self, text: str, add_special_tokens: bool) -> list[int]:
    return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_plain(self, text: str) -> list[int]:
    return self.plain.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode(list(ids), skip_special_tokens=False)

  def decode_each(self, ids: Sequence[int]) -> list[str]:
    """The text of each id alone (one batched call)."""
    return self.tok.decode_batch([[i] for i in ids], skip_special_tokens=False)


class _SentencePieceBackend:
  """tokenizer.model through `sentencepiece`, with the checkpoint's special tokens.

  As AutoTokenizer's generic conversion: the named and added special tokens
  (control pieces such as <s>, the unknown piece, and tokens the model lacks) are
  split out of the text first, every other span goes to sentencepiece as it is;
  user-defined pieces are left to sentencepiece, which matches them itself. Tokens
  the model lacks get ids after its pieces (their added_tokens_decoder ids, else
  the next free ones).
  """

  kind = "sentencepiece"

  def __init__(self, path: str, config: Mapping[str, Any], named: Mapping[str, str],
               extra: Sequence[str]):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.sp = spm.SentencePieceProcessor(model_file=os.path.join(path, SENTENCEPIECE_MODEL))
    self.piece_size = self.sp.get_piece_size()
    # The model's own bos/eos/unk/pad stand in for those the config does not name.
    self.named = dict(named)
    own = {"bos_token": self.sp.bos_id(), "eos_token": self.sp.eos_id(),
           "unk_token": self.sp.unk_id(), "pad_token": self.sp.pad_id()}
    for key, i in own.items():
      if key not in self.named and 0 <= i < self.piece_size:
        self.named[key] = self.sp.id_to_piece(i)
    named = self.named
    self._extra_text: dict[int, str] = {}  # ids decoded as their token text, not by sentencepiece
    self._split: dict[str, int] = {}  # token text -> id, split out of the text before encoding
    special = set()
    for i, fields in _added_tokens(config):
      self._add(i, fields["content"])
      if fields.get("special"):
        special.add(i)
    for text in list(named.values()) + list(extra):
      i = self.token_to_id(text)
      if i is None:
        i = max([self.piece_size - 1, *self._extra_text]) + 1
      self._add(i, text)
      special.add(i)
    special.update(i for i in range(self.piece_size) if self.sp.is_control(i))
    self._token_text = {i: text for text, i in self._split.items()}  # decoded as their text
    self.special_ids = frozenset(special)
    self.vocab_size = max([self.piece_size - 1, *self._extra_text]) + 1
    self._pattern = (re.compile("|".join(re.escape(t) for t in sorted(self._split, key=len,
                                                                      reverse=True)))
                     if self._split else None)
    self._prefix = []
    if config.get("add_bos_token") and "bos_token" in named:
      self._prefix = [self.token_to_id(named["bos_token"])]
    self._suffix = []
    if config.get("add_eos_token") and "eos_token" in named:
      self._suffix = [self.token_to_id(named["eos_token"])]

  def _add(self, i: int, text: str) -> None:
    """Registers token `text` with id `i` (split out of texts unless sentencepiece matches it)."""
    if 0 <= i < self.piece_size and self.sp.id_to_piece(i) == text:
      if self.sp.is_control(i) or self.sp.is_unknown(i):
        self._split[text] = i  # sentencepiece would spell these out as characters
      return  # a user-defined piece: sentencepiece matches it in place
    self._extra_text[i] = text
    self._split[text] = i

  def token_to_id(self, text: str) -> int | None:
    if text in self._split:
      return self._split[text]
    i = self.sp.piece_to_id(text)
    if i == self.sp.unk_id() and text != self.sp.id_to_piece(i):
      return None
    return i

  def id_to_token(self, i: int) -> str | None:
    if i in self._extra_text:
      return self._extra_text[i]
    return self.sp.id_to_piece(i) if 0 <= i < self.piece_size else None

  def encode(self, text: str, add_special_tokens: bool) -> list[int]:
    out, start = [], 0
    for m in (self._pattern.finditer(text) if self._pattern else ()):
      if m.start() > start:
        out.extend(self.sp.encode(text[start:m.start()]))
      out.append(self._split[m.group()])
      start = m.end()
    if start < len(text):
      out.extend(self.sp.encode(text[start:]))
    return self._prefix + out + self._suffix if add_special_tokens else out

  def encode_plain(self, text: str) -> list[int]:
    return self.sp.encode(text) if text else []

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`: split-out tokens as their text, runs of pieces by sentencepiece."""
    parts: list[str] = []
    run: list[int] = []

    def flush():
      if not run:
        return
      if parts:  # after a token: no dummy prefix to strip, so decode behind a marker
        pieces = [_MARKER] + [self.sp.id_to_piece(i) for i in run]
        parts.append(self.sp.decode_pieces(pieces)[len(_MARKER):])
      else:
        parts.append(self.sp.decode(run))
      run.clear()

    for i in ids:
      if i in self._token_text:
        flush()
        parts.append(self._token_text[i])
      elif 0 <= i < self.piece_size:
        run.append(i)
    flush()
    return "".join(parts)

  def decode_each(self, ids: Sequence[int]) -> list[str]:
    """The text of each id alone."""
    return [self.decode([i]) for i in ids]


class PretrainedTokenizer:
  """A checkpoint's tokenizer with pavjax's `Tokenizer` interface (module docstring).

  Attributes:
    path: the checkpoint directory.
    kind: 'tokenizers' (tokenizer.json) or 'sentencepiece' (tokenizer.model).
    special_tokens: the named special tokens as text ("bos_token" -> "<s>", ...), also
      the chat template's variables.
    pad_id, unk_id, bos_id, eos_id, nl_id, stop_ids, bos_token_id: see the module
      docstring.
    vocab_size: 1 + the largest id.
  """

  def __init__(self, path: str):
    """Loads the tokenizer of the checkpoint directory `path` (see `load_tokenizer`)."""
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{path}: not a directory (expected a Hugging Face checkpoint "
                              f"with {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL})")
    self.path = path
    config = _read_json(os.path.join(path, TOKENIZER_CONFIG))
    named = special_tokens(path)
    extra = _extra_special_tokens(path)
    if os.path.isfile(os.path.join(path, TOKENIZER_JSON)):
      self._backend = _TokenizersBackend(path, config, named, extra)
    elif os.path.isfile(os.path.join(path, SENTENCEPIECE_MODEL)):
      self._backend = _SentencePieceBackend(path, config, named, extra)
    else:
      raise _missing_tokenizer_error(path)
    self.kind = self._backend.kind
    self.special_tokens = dict(self._backend.named)
    self.vocab_size = self._backend.vocab_size
    ids = {key: self._token_id(key) for key in ("bos_token", "eos_token", "unk_token",
                                               "pad_token")}
    generation = _read_json(os.path.join(path, GENERATION_CONFIG))
    gen_eos = _id_list(generation.get("eos_token_id"))
    gen_pad = _id_list(generation.get("pad_token_id"))

    eos = ids["eos_token"] if ids["eos_token"] is not None else (gen_eos or [None])[0]
    if eos is None:
      raise ValueError(f"{path}: no EOS: the tokenizer names no eos_token and "
                       f"{GENERATION_CONFIG} has no eos_token_id")
    self.eos_id = eos
    self.stop_ids = tuple(dict.fromkeys([eos, *gen_eos]))
    self.pad_id = next(i for i in (ids["pad_token"], (gen_pad or [None])[0], eos)
                       if i is not None)
    self.unk_id = ids["unk_token"]
    self.bos_token_id = ids["bos_token"]
    prefix, _ = _split_prefix(self._backend.encode("a", True), self._backend.encode("a", False))
    self.bos_id = prefix[0] if len(prefix) == 1 else None
    self.nl_id = self._newline_id()
    for name, i in (("eos", self.eos_id), ("pad", self.pad_id), *(("stop", s) for s in
                                                                self.stop_ids)):
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"{path}: {name} id {i} is outside the tokenizer's "
                         f"{self.vocab_size} ids")
    self._dropped = frozenset(i for i in (self.pad_id, self.bos_token_id, self.bos_id,
                                          *self.stop_ids) if i is not None)

  def _token_id(self, key: str) -> int | None:
    """Id of the named special token `key`, or None when unnamed."""
    text = self.special_tokens.get(key)
    if text is None:
      return None
    i = self._backend.token_to_id(text)
    if i is None:
      raise ValueError(f"{self.path}: {key}={text!r} is not a token of the tokenizer")
    return i

  def _newline_id(self) -> int:
    ids = self._backend.encode_plain("\n")
    if len(ids) == 2 and self._backend.id_to_token(ids[0]) == _DUMMY_PREFIX:
      ids = ids[1:]  # SentencePiece's dummy prefix, not part of the newline
    if len(ids) != 1 or ids[0] == self.unk_id:
      pieces = [self._backend.id_to_token(i) for i in ids]
      raise ValueError(f"{self.path}: the tokenizer encodes '\\n' alone as {pieces} (ids "
                       f"{ids}); pavjax's text tasks need one newline token to delimit steps")
    return ids[0]

  def encode(self, text: str) -> list[int]:
    """Each line on its own, joined by `nl_id`; no BOS/EOS (pavjax's line convention)."""
    return tokenizer_lib.encode_lines(text, self._backend.encode_plain, self.nl_id)

  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode`: nl_id -> "\\n"; pad/BOS/EOS/stop ids and unknown ids dropped."""
    lines, run = [], []
    for i in ids:
      i = int(i)
      if i == self.nl_id:
        lines.append(self._backend.decode(run))
        run = []
      elif i not in self._dropped and 0 <= i < self.vocab_size:
        run.append(i)
    lines.append(self._backend.decode(run))
    return "\n".join(lines)

  def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """The whole text's ids, as `AutoTokenizer(path)(text, add_special_tokens=...)`."""
    return self._backend.encode(text, add_special_tokens)

  def decode_text(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """The whole text of `ids`, as `AutoTokenizer.decode(ids, skip_special_tokens=...)`."""
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
    if skip_special_tokens:
      ids = [i for i in ids if i not in self._backend.special_ids]
    return self._backend.decode(ids)

  def token_texts(self) -> list[str]:
    """Each id's own text (`decode_text([i])`; special tokens print nothing): what the
    step-boundary automaton reads (`pavjax.step_boundary`)."""
    texts = self._backend.decode_each(range(self.vocab_size))
    return ["" if i in self._backend.special_ids else t for i, t in enumerate(texts)]

  def id_to_token(self, i: int) -> str | None:
    """The vocabulary entry of id `i` (None outside the vocabulary)."""
    return self._backend.id_to_token(int(i))

  def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool,
                  template: str | None = None, **extra) -> str:
    """`render_chat` with the checkpoint's template and special tokens.

    Args:
      messages: the conversation ({"role": ..., "content": ...} dicts).
      add_generation_prompt: end with the header that opens an assistant turn.
      template: a template to use instead of the checkpoint's.
      **extra: more template variables.

    Returns:
      The prompt text; `encode_text(prompt, add_special_tokens=False)` gives its ids
      (as `apply_chat_template(..., tokenize=True)`).
    """
    template = template if template is not None else chat_template(self.path)
    if template is None:
      raise ValueError(f"{self.path}: the checkpoint has no chat template")
    variables = dict(self.special_tokens)
    variables.update(extra)
    variables.setdefault("bos_token", None)
    variables.setdefault("eos_token", None)
    return render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                       **variables)


def load_tokenizer(path: str) -> PretrainedTokenizer:
  """The tokenizer of the Hugging Face checkpoint directory `path` (module docstring).

  Args:
    path: a directory with tokenizer.json or tokenizer.model (and optionally
      tokenizer_config.json, special_tokens_map.json, generation_config.json).

  Returns:
    The tokenizer.

  Raises:
    FileNotFoundError: `path` is not a directory, or has neither tokenizer file
      (the message names the directory, what was looked for and what is there).
    ValueError: unreadable special tokens, no EOS, or no single newline token.
  """
  return PretrainedTokenizer(path)


# --------------------------------------------------------------------------- chat templates


def chat_template(path: str, name: str | None = None) -> str | None:
  """The checkpoint's chat template, or None when it has none.

  chat_template.jinja wins over tokenizer_config.json's `chat_template` (as in
  transformers). A config may hold several named templates (a list of {"name",
  "template"}): `name` picks one, else "default".

  Args:
    path: the checkpoint directory.
    name: which named template (only for configs with several).

  Returns:
    The jinja2 source.
  """
  jinja_file = os.path.join(path, CHAT_TEMPLATE_FILE)
  if name is None and os.path.isfile(jinja_file):
    with open(jinja_file, encoding="utf-8") as f:
      return f.read()
  template = _read_json(os.path.join(path, TOKENIZER_CONFIG)).get("chat_template")
  if isinstance(template, list):
    named = {t["name"]: t["template"] for t in template}
    key = name or "default"
    if key not in named:
      raise ValueError(f"{path}: no chat template named {key!r}; known: {sorted(named)}")
    return named[key]
  if name is not None:
    raise ValueError(f"{path}: the checkpoint has a single chat template, not named ones")
  return template


@functools.lru_cache(maxsize=16)
def _compile(template: str):
  """The template compiled in transformers' environment (cached: templates are long)."""
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext, nodes, sandbox  # pylint: disable=g-import-not-at-top

  class GenerationBlock(ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body (assistant-mask marker)."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # As transformers: no HTML escaping (jinja's own filter escapes <, >, &, ').
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[GenerationBlock, ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  return env.from_string(template)


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *,
                add_generation_prompt: bool, bos_token: str | None, eos_token: str | None,
                **extra) -> str:
  """Renders a chat template as `apply_chat_template(messages, tokenize=False)` does.

  Message keys whose value is None are dropped (as transformers does: templates
  test for a key's presence); `tools` and `documents` are None unless given; a
  None special token is left undefined (renders as "").

  Args:
    template: the jinja2 source (`chat_template(path)`).
    messages: the conversation, {"role": ..., "content": ...} dicts.
    add_generation_prompt: end with the header that opens an assistant turn.
    bos_token: the checkpoint's bos token text (`special_tokens(path)`).
    eos_token: the checkpoint's eos token text.
    **extra: more template variables (pad_token, unk_token, tools, documents, ...).

  Returns:
    The rendered text.
  """
  chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
  variables = {"bos_token": bos_token, "eos_token": eos_token, **extra}
  variables = {k: v for k, v in variables.items() if v is not None}
  variables.setdefault("tools", None)
  variables.setdefault("documents", None)
  return _compile(template).render(messages=chat, add_generation_prompt=add_generation_prompt,
                                   **variables)


# --------------------------------------------------------------------------- few-shot prompts

FEW_SHOT_FORMAT = "Question: {question}\nAnswer: {answer}\n\n"  # one example


def few_shot_prompt(examples: Iterable[tuple[str, str]], question: str) -> str:
  """A plain few-shot prompt for a base model (no chat template).

  Each example is written as `FEW_SHOT_FORMAT` ("Question: ...\\nAnswer: ...\\n\\n"),
  then the question as "Question: ...\\nAnswer:", so the model continues after
  "Answer:" (its answer starts with a space, as the examples'). An answer may
  span lines (one step a line, e.g. `"\\n".join(problem.steps)`), but no text may
  hold a blank line: it separates the examples.

  Args:
    examples: (question, answer) pairs.
    question: the question to answer.

  Returns:
    The prompt text.

  Raises:
    ValueError: a question or answer holds a blank line or is empty.
  """
  parts = []
  for q, a in [*examples, (question, None)]:
    for text in (q, a):
      if text is None:
        continue
      if not text.strip() or "\n\n" in text:
        raise ValueError(f"few-shot text {text!r} is empty or holds a blank line (the "
                         "example separator)")
    parts.append(FEW_SHOT_FORMAT.format(question=q, answer=a) if a is not None
                 else f"Question: {q}\nAnswer:")
  return "".join(parts)
