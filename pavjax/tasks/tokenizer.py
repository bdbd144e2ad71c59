"""Small text tokenizers for the text tasks (sentencepiece, char-level).

Id layout. Id 0 is always padding. A sentencepiece model's ids are used shifted
by `offset`: 0 when the model's pad id is 0, else 1 (every piece moves up by one
and id 0 becomes padding). Newlines never reach sentencepiece (which would fold
them into whitespace): text is split into lines, each line is encoded on its
own, and the lines are joined with a dedicated newline id (the step delimiter):
a piece of the model (`nl_piece_id`) or else an extra id right after the pieces.
EOS is the model's eos (shifted) or else one more extra id; BOS is the model's
bos (shifted) or None. So a line encodes the same wherever it sits in a text,
and decoding the tokens of one line gives back exactly that line.

The reserved layout, used by `CharTokenizer` and by the models `train_sentencepiece`
writes (`SentencePieceTokenizer.with_reserved_ids`), needs neither shift nor
extra ids:

  0 <pad>   1 <unk>   2 <s> (BOS)   3 </s> (EOS)   4 <nl> (newline, the step delimiter)

then the learned pieces (sentencepiece) or a fixed character set (char).

Decoding never raises: the newline id becomes "\n", padding, BOS and EOS are
dropped, and unknown or out-of-range ids decode to `UNK_TEXT` (reserved layout)
or, for a user's model, as sentencepiece renders its unknown piece (ids outside
the model are dropped).
"""

from __future__ import annotations

import io
import os
from typing import Any, Iterable, Mapping, Protocol, Sequence

from pavjax import artifacts

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
  bos_id: int | None  # None: prompts start without BOS
  eos_id: int
  nl_id: int

  @property
  def vocab_size(self) -> int:
    """Number of ids (every id the tokenizer may produce is below this)."""

  def encode(self, text: str) -> list[int]:
    """Ids of `text`; "\\n" becomes `nl_id`. No BOS/EOS is added."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; `nl_id` becomes "\\n", pad/BOS/EOS are dropped."""


def encode_lines(text: str, encode_line, nl_id: int) -> list[int]:
  """pavjax's line convention: each line encoded on its own, lines joined by `nl_id`.

  So a line encodes the same wherever it sits in a text, and a step (a line) ends on
  exactly one newline id.
  """
  out: list[int] = []
  for k, line in enumerate(text.split("\n")):
    if k:
      out.append(nl_id)
    if line:
      out.extend(encode_line(line))
  return out


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
  """A sentencepiece model, encoded line by line with a dedicated newline id.

  See the module docstring for the id layout.

  Attributes:
    sp: the `sentencepiece.SentencePieceProcessor`.
    model_proto: the serialized model.
    piece_size: number of pieces in the model.
    offset: added to every sentencepiece id (0 if the model's pad id is 0, else 1).
    pad_id: 0.
    unk_id: the model's unk id + offset.
    bos_id: the model's bos id + offset, or None when it has none.
    eos_id: the model's eos id + offset, or the next extra id when it has none.
    nl_id: `nl_piece_id` + offset, or the first extra id (`piece_size + offset`).
    vocab_size: number of task ids (pieces, shift and extra ids).
  """

  def __init__(self, model_proto: bytes, *, nl_piece_id: int | None = None,
               unk_text: str | None = None):
    """Loads a serialized model.

    Args:
      model_proto: the `.model` file's bytes.
      nl_piece_id: the model's own newline piece (a sentencepiece id), if it has
        one; else the newline gets an extra id.
      unk_text: what the unknown piece and ids outside the vocabulary decode to;
        None lets sentencepiece render the unknown piece and drops ids outside
        the model.
    """
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.piece_size = self.sp.get_piece_size()
    self.offset = 0 if self.sp.pad_id() == 0 else 1
    self.pad_id = PAD_ID
    self.unk_id = self.sp.unk_id() + self.offset
    self.bos_id = self.sp.bos_id() + self.offset if self.sp.bos_id() >= 0 else None
    next_id = self.piece_size + self.offset  # the first extra id
    if nl_piece_id is None:
      self.nl_id, next_id = next_id, next_id + 1
    elif 0 <= nl_piece_id < self.piece_size:
      self.nl_id = nl_piece_id + self.offset
    else:
      raise ValueError(f"nl_piece_id={nl_piece_id} is not a piece of the model "
                       f"({self.piece_size} pieces)")
    if self.sp.eos_id() >= 0:
      self.eos_id = self.sp.eos_id() + self.offset
    else:
      self.eos_id, next_id = next_id, next_id + 1
    self.vocab_size = next_id
    self._unk_text = unk_text
    self._dropped = {i for i in (self.pad_id, self.bos_id, self.eos_id) if i is not None}

  @classmethod
  def load(cls, path: str, **kwargs) -> SentencePieceTokenizer:
    """Reads a `.model` file; `kwargs` go to the constructor."""
    with open(path, "rb") as f:
      return cls(f.read(), **kwargs)

  @classmethod
  def with_reserved_ids(cls, model_proto: bytes) -> SentencePieceTokenizer:
    """A model with the reserved layout (ids 0-4, checked), as `train_sentencepiece` writes.

    Its ids are used as they are; unknown ids decode to `UNK_TEXT`.

    Args:
      model_proto: the serialized model.

    Returns:
      The tokenizer.

    Raises:
      ValueError: when the model's ids 0-4 are not pad, unk, BOS, EOS and `<nl>`.
    """
    tok = cls(model_proto, nl_piece_id=NL_ID, unk_text=UNK_TEXT)
    expected = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>", NL_ID: NL_PIECE}
    for i, piece in expected.items():
      if tok.sp.id_to_piece(i) != piece:
        raise ValueError(f"sentencepiece model has {tok.sp.id_to_piece(i)!r} at id {i}, "
                         f"expected {piece!r}; train it with `train_sentencepiece`")
    return tok

  def encode(self, text: str) -> list[int]:
    """Each line on its own, joined by `nl_id`."""
    return encode_lines(text, lambda line: [t + self.offset for t in self.sp.encode(line)],
                        self.nl_id)

  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode` for text the model covers (see the module docstring)."""
    lines, parts, run = [], [], []  # run: sentencepiece ids not decoded yet

    def flush_run():
      if run:
        parts.append(self.sp.decode(run))
        run.clear()

    for i in ids:
      i = int(i)
      if i == self.nl_id:
        flush_run()
        lines.append("".join(parts))
        parts.clear()
      elif i in self._dropped:
        continue
      elif (self.offset <= i < self.piece_size + self.offset
            and (self._unk_text is None or i != self.unk_id)):
        run.append(i - self.offset)
      elif self._unk_text is not None:
        flush_run()
        parts.append(self._unk_text)
    flush_run()
    lines.append("".join(parts))
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


def load_or_train_sentencepiece(path: str, lines_fn, vocab_size: int, **train_kwargs
                                ) -> tuple[SentencePieceTokenizer, bool]:
  """Loads the model at `path`, or trains one from `lines_fn()` and writes it there.

  The write is atomic (`artifacts.write_bytes`), so concurrent builders of the same
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
    with open(path, "rb") as f:
      return SentencePieceTokenizer.with_reserved_ids(f.read()), True
  proto = train_sentencepiece(lines_fn(), vocab_size, **train_kwargs)
  artifacts.write_bytes(path, proto)
  return SentencePieceTokenizer.with_reserved_ids(proto), False
