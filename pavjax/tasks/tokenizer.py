"""Small text tokenizers for the text tasks: sentencepiece, and a char-level fallback.

Both share the id layout every task relies on:

  0 <pad>   1 <unk>   2 <s> (BOS)   3 </s> (EOS)   4 <nl> (newline, the step delimiter)

then the learned pieces (sentencepiece) or a fixed character set (char). Newlines
never reach sentencepiece (which would fold them into whitespace): text is split
into lines, each line is encoded on its own, and the lines are joined with the
dedicated `<nl>` id. So a line encodes the same wherever it sits in a text, and
decoding the tokens of one line gives back exactly that line.

Decoding never raises: ids out of range, and the control ids (pad, BOS, EOS)
decode to "" except unknown ids, which decode to `UNK_TEXT`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Iterable, Mapping, Protocol, Sequence

PAD_ID, UNK_ID, BOS_ID, EOS_ID, NL_ID = 0, 1, 2, 3, 4
NL_PIECE = "<nl>"
UNK_TEXT = "\u2047"  # what an unknown id decodes to (sentencepiece's own " ⁇ " marker, trimmed)

# Characters of the char-level tokenizer, after the 5 special ids. Covers the
# synthetic tasks and plain ASCII math; anything else encodes to <unk>.
DEFAULT_CHARSET = (" abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                   "0123456789"
                   "=+-*/%^()[]{}<>.,:;?!'\"_#$&|\\~`@")


class Tokenizer(Protocol):
  """What the text tasks need from a tokenizer."""

  pad_id: int
  unk_id: int
  bos_id: int
  eos_id: int
  nl_id: int

  @property
  def vocab_size(self) -> int:
    """Number of ids (every id the tokenizer may produce is below this)."""

  def encode(self, text: str) -> list[int]:
    """Ids of `text`; "\\n" becomes `nl_id`. No BOS/EOS is added."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; `nl_id` becomes "\\n", pad/BOS/EOS are dropped."""


class CharTokenizer:
  """One id per character of a fixed charset (for the tiniest configs and tests)."""

  pad_id, unk_id, bos_id, eos_id, nl_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID, NL_ID

  def __init__(self, charset: str = DEFAULT_CHARSET):
    if len(set(charset)) != len(charset) or "\n" in charset:
      raise ValueError("charset must have distinct characters and no newline")
    self.charset = charset
    self._offset = NL_ID + 1
    self._ids = {c: i + self._offset for i, c in enumerate(charset)}

  @property
  def vocab_size(self) -> int:
    """Special ids plus one id per character."""
    return self._offset + len(self.charset)

  def encode(self, text: str) -> list[int]:
    """One id per character; unknown characters become `unk_id`."""
    return [NL_ID if c == "\n" else self._ids.get(c, UNK_ID) for c in text]

  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode` for known characters."""
    out = []
    for i in ids:
      i = int(i)
      if i == NL_ID:
        out.append("\n")
      elif self._offset <= i < self.vocab_size:
        out.append(self.charset[i - self._offset])
      elif i in (PAD_ID, BOS_ID, EOS_ID):
        continue
      else:
        out.append(UNK_TEXT)
    return "".join(out)


class SentencePieceTokenizer:
  """A sentencepiece model, encoded line by line with a dedicated newline id."""

  pad_id, unk_id, bos_id, eos_id, nl_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID, NL_ID

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    expected = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>", NL_ID: NL_PIECE}
    for i, piece in expected.items():
      if self.sp.id_to_piece(i) != piece:
        raise ValueError(f"sentencepiece model has {self.sp.id_to_piece(i)!r} at id {i}, "
                         f"expected {piece!r}; train it with `train_sentencepiece`")
    self._size = self.sp.get_piece_size()

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    """Reads a `.model` file."""
    with open(path, "rb") as f:
      return cls(f.read())

  @property
  def vocab_size(self) -> int:
    """Number of pieces in the model (special ids included)."""
    return self._size

  def encode(self, text: str) -> list[int]:
    """Each line on its own, joined by `nl_id`."""
    out: list[int] = []
    for k, line in enumerate(text.split("\n")):
      if k:
        out.append(NL_ID)
      if line:
        out.extend(self.sp.encode(line))
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode` for text the model covers."""
    lines, cur = [], []

    def flush():
      pieces = []
      for i in cur:
        if i == UNK_ID or not 0 <= i < self._size:
          pieces.append(None)
        else:
          pieces.append(i)
      text, run = [], []
      for p in pieces:  # decode runs of known ids; unknown ids become UNK_TEXT
        if p is None:
          if run:
            text.append(self.sp.decode(run))
            run = []
          text.append(UNK_TEXT)
        else:
          run.append(p)
      if run:
        text.append(self.sp.decode(run))
      lines.append("".join(text))

    for i in ids:
      i = int(i)
      if i == NL_ID:
        flush()
        cur = []
      elif i in (PAD_ID, BOS_ID, EOS_ID):
        continue
      else:
        cur.append(i)
    flush()
    return "\n".join(lines)


def train_sentencepiece(lines: Iterable[str], vocab_size: int, *, model_type: str = "bpe",
                        max_sentences: int = 20000, extra_options: Mapping[str, Any] | None = None
                        ) -> bytes:
  """Trains a small sentencepiece model on `lines` (no newlines inside) in memory.

  Digits are split (one piece per digit); the vocabulary size is a soft limit
  (`hard_vocab_limit=False`), so tiny corpora give smaller vocabularies; pad, unk,
  BOS, EOS and `<nl>` take ids 0-4. At most `max_sentences` lines are used (the
  first ones: pass them pre-shuffled), which keeps training to about a second.

  Args:
    lines: training sentences.
    vocab_size: target number of pieces.
    model_type: sentencepiece model type ('bpe' or 'unigram').
    max_sentences: cap on the number of training sentences.
    extra_options: more `SentencePieceTrainer.train` keyword arguments.

  Returns:
    The serialized model proto.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sentences = []
  for line in lines:
    if len(sentences) >= max_sentences:
      break
    if "\n" in line:
      raise ValueError("training lines must not contain newlines")
    if line:
      sentences.append(line)
  if not sentences:
    raise ValueError("no training text for sentencepiece")
  writer = io.BytesIO()
  options = dict(
      sentence_iterator=iter(sentences), model_writer=writer, vocab_size=vocab_size,
      model_type=model_type, hard_vocab_limit=False, split_digits=True, byte_fallback=False,
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, user_defined_symbols=[NL_PIECE],
      normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
      character_coverage=1.0, input_sentence_size=max_sentences, shuffle_input_sentence=False,
      num_threads=1, minloglevel=2)
  options.update(extra_options or {})
  spm.SentencePieceTrainer.train(**options)
  return writer.getvalue()


def config_hash(fields: Mapping[str, Any], length: int = 12) -> str:
  """Short stable hash of a JSON-able mapping (cache keys for tokenizer files)."""
  blob = json.dumps(dict(fields), sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:length]


def load_or_train_sentencepiece(path: str, lines_fn, vocab_size: int, **train_kwargs
                                ) -> tuple[SentencePieceTokenizer, bool]:
  """Loads the model at `path`, or trains one from `lines_fn()` and writes it there.

  The write is atomic (temp file + rename), so concurrent builders of the same
  model never see a partial file.

  Args:
    path: the `.model` file (its directory is created).
    lines_fn: zero-argument callable returning the training lines (only called
      when the model is missing).
    vocab_size: target vocabulary size.
    **train_kwargs: passed to `train_sentencepiece`.

  Returns:
    The tokenizer, and whether it was loaded from the cache.
  """
  if os.path.exists(path):
    return SentencePieceTokenizer.load(path), True
  proto = train_sentencepiece(lines_fn(), vocab_size, **train_kwargs)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(proto)
  os.replace(tmp, path)
  return SentencePieceTokenizer(proto), False
