"""The one step rule (pavjax.step_boundary): against a brute-force oracle, on a trained
byte-level BPE whose merges put the delimiter inside larger tokens, in the sampler's
decode loop and in step-wise beam search."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax.sampling import Greedy, sampler as sampler_lib
from pavjax.search import StepBeamSearch
from pavjax.step_boundary import StepBoundary
from pavjax.testing import BigramLM
from tests import pretrained


def oracle_boundaries(texts, response, delimiter):
  """Token indices that end a step, from the response's whole text: leftmost
  non-overlapping occurrences of the delimiter, each ending a step at the token that
  holds its last character, at most one step per token."""
  starts, pos = [], 0
  for tok in response:
    starts.append(pos)
    pos += len(texts[tok].encode())
  text = b"".join(texts[t].encode() for t in response)
  delim = delimiter.encode()
  out, pos = [], 0
  while True:
    k = text.find(delim, pos)
    if k < 0:
      return out
    last_char = k + len(delim) - 1
    token = max(i for i, s in enumerate(starts) if s <= last_char)
    if not out or out[-1] != token:
      out.append(token)
    pos = k + len(delim)


@pytest.mark.parametrize("delimiter", ["\n", "\n\n", "aab", "abab"])
def test_the_automaton_equals_the_text_oracle(delimiter):
  rng = np.random.default_rng(0)
  pieces = ["a", "b", "\n", "\n\n", "a\n", "\na", "ab", "aab", "ba\n\nb", "", "\n\n\n", "é"]
  texts = pieces + ["".join(rng.choice(pieces, 3)) for _ in range(20)]
  boundary = StepBoundary.from_texts(texts, delimiter)
  eos = len(texts)  # outside the texts: the automaton never sees it
  for _ in range(400):
    response = rng.integers(0, len(texts), rng.integers(1, 12)).tolist()
    spans = boundary.segment(response, eos_id=eos)
    ends = [stop - 1 for _, stop in spans]
    want = oracle_boundaries(texts, response, delimiter)
    if not want or want[-1] != len(response) - 1:
      want = want + [len(response) - 1]  # the unfinished tail is its own span
    assert ends == want, (response, [texts[t] for t in response])
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_from_ids_is_the_id_rule_with_eos_and_padding():
  boundary = StepBoundary.from_ids((3, 4), vocab_size=8)
  pad, eos = 0, 2
  assert boundary.segment([5, 3, 6, 6, 4, 5, eos, 3, 5], eos, pad) == [(0, 2), (2, 5), (5, 7)]
  assert boundary.segment([5, 3, 6, pad, pad], eos, pad) == [(0, 2), (2, 3)]
  assert boundary.segment([pad, pad], eos, pad) == []
  with pytest.raises(ValueError, match="outside the vocabulary"):
    StepBoundary.from_ids((8,), vocab_size=8)


def _solution(rng):
  x, y = rng.integers(2, 99, 2)
  return [f"We have x = {x}.", f"So 2x = {2 * x}.", f"Then 2x + {y} = {2 * x + y}.",
          f"The answer is {2 * x + y}."]


@pytest.fixture(scope="module")
def merged_bpe(tmp_path_factory):
  """A checkpoint dir whose byte-level BPE merges newlines with the text around them."""
  pytest.importorskip("tokenizers")
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  path = str(tmp_path_factory.mktemp("merged_bpe"))
  rng = np.random.default_rng(0)
  corpus = [sep.join(_solution(rng)) for _ in range(200) for sep in ("\n\n", "\n")]
  lines = pretrained.arith_corpus()[:800]  # arith's text too, so its newlines merge
  corpus += [sep.join(lines[i:i + 4]) for i in range(0, len(lines), 4) for sep in ("\n\n", "\n")]
  tok = Tokenizer(models.BPE())
  # GPT-2's pre-tokenizer keeps "\n\n" apart from words; a plain byte-level split lets
  # BPE merge ".\n\n" and "\n\nThe", as many real vocabularies contain.
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.add_special_tokens(["<|end|>"])
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>").save_pretrained(
      path)
  return path


def test_a_trained_bpe_merges_the_delimiter_into_larger_tokens(merged_bpe):
  """MATH-style steps ("\n\n" between them), encoded as a pretrained model writes them:
  the whole text at once, merges crossing the delimiter."""
  from pavjax.tasks import hf_tokenizer
  steps = _solution(np.random.default_rng(1))
  pretrained = hf_tokenizer.load_tokenizer(merged_bpe)
  texts = pretrained.token_texts()
  boundary = StepBoundary.from_texts(texts, "\n\n")
  text = "\n\n".join(steps)
  ids = pretrained.encode_text(text, add_special_tokens=False)
  spans = boundary.segment(ids + [pretrained.eos_id], pretrained.eos_id)
  assert len(spans) == len(steps)
  ends = [stop - 1 for _, stop in spans[:-1]]
  assert ends == oracle_boundaries(texts, ids, "\n\n")
  # Some step ends at a token that is more than the delimiter (".\n\n", "\n\nThe", ...).
  assert any(texts[ids[e]] != "\n\n" for e in ends), [texts[ids[e]] for e in ends]
  assert "".join(pretrained.decode_text(ids[a:b]) for a, b in spans) == text


@pytest.mark.parametrize("delimiter", ["\n", "\n\n"])
def test_a_text_task_segments_a_model_s_own_encoding_as_its_references(merged_bpe, delimiter):
  """arith with the pretrained tokenizer: references use pavjax's line encoding (the
  delimiter made of newline ids), a pretrained model writes the whole text with merged
  tokens; both give the same steps."""
  from pavjax import config_lib
  from pavjax.tasks import arith
  cfg = config_lib.task_config("arith", "easy")
  cfg.num_train, cfg.num_eval, cfg.hf_tokenizer = 50, 20, merged_bpe
  cfg.step_delimiter = delimiter
  task = arith.make(cfg)
  tok = task.tokenizer
  merged = 0
  for p in task.split("validation"):
    reference = task.encode_solution(p)
    whole = tok.encode_text(delimiter.join(p.steps), add_special_tokens=False) + [task.eos_id]
    merged += whole != reference
    for ids in (reference, whole):
      assert len(task.segment_steps(ids)) == len(p.steps)
      assert task.step_texts(ids) == list(p.steps)
      assert task.is_correct(ids, p).reason == "correct"
  assert merged  # the model's own encoding is not the line encoding
  # arith's own character tokenizer: the delimiter is made of its newline ids.
  cfg.hf_tokenizer, cfg.tokenizer = "", "char"
  task = arith.make(cfg)
  for p in task.split("validation"):
    ids = task.encode_solution(p)
    assert ids.count(task.tokenizer.nl_id) == delimiter.count("\n") * (len(p.steps) - 1)
    assert len(task.segment_steps(ids)) == len(p.steps)
    assert task.step_texts(ids) == list(p.steps)
  with pytest.raises(ValueError, match="step_delimiter"):
    cfg.step_delimiter = "."
    arith.make(cfg)


# Tokens: 0 pad, 1 BOS, 2 EOS, 3 "a", 4 "a\n", 5 "\nb". The policy writes 3 4 5 3 4 5 ...:
# "a" "a\n" "\nb": the delimiter "\n\n" straddles tokens 4 and 5.
TEXTS = ["", "", "", "a", "a\n", "\nb"]
EOS = 2


def _policy():
  table = np.full((6, 6), -1e9, np.float32)
  for after, nxt in ((1, 3), (3, 4), (4, 5), (5, 3), (0, 3), (2, 3)):
    table[after, nxt] = 0.0
  return jnp.asarray(table)


def test_decode_stops_where_a_straddling_delimiter_completes():
  boundary = StepBoundary.from_texts(TEXTS, "\n\n")
  lm = BigramLM()
  cache, logits = sampler_lib.prefill(lm, _policy(), jnp.array([[1]], jnp.int32),
                                      jnp.array([1], jnp.int32), cache_size=16)
  keys = sampler_lib.row_keys_for(jax.random.PRNGKey(0), 1)
  state = sampler_lib.init_state(cache, logits, keys, 8)
  state = sampler_lib.decode(lm, _policy(), state, method=Greedy(), stop_tokens=(EOS,),
                             boundary=boundary.arrays())
  assert np.asarray(state.tokens)[0, :3].tolist() == [3, 4, 5]
  assert int(state.lengths[0]) == 3 and bool(state.finished[0])
  # Without the rule (no stop id in this text) the row runs to the budget.
  state = sampler_lib.init_state(cache, logits, keys, 8)
  state = sampler_lib.decode(lm, _policy(), state, method=Greedy(), stop_tokens=(EOS,))
  assert int(state.lengths[0]) == 8 and not bool(state.finished[0])


def test_beam_steps_end_on_the_delimiter_rule():
  boundary = StepBoundary.from_texts(TEXTS, "\n\n")
  value = lambda vp, tokens, lengths: lengths.astype(jnp.float32) / 100.0
  search = StepBeamSearch(BigramLM(), value, beam_width=1, expansions=1, max_steps=3,
                          max_step_tokens=6, eos_id=EOS, score="q", boundary=boundary)
  result = search.run(_policy(), None, [[1]], jax.random.PRNGKey(0))
  (entry,) = result.pools[0]  # never finished: cut at max_steps, after three whole steps
  assert entry["tokens"] == [3, 4, 5] * 3 and entry["step"] == 3 and not entry["finished"]
  # The same steps by the trajectory table's rule.
  assert boundary.segment(entry["tokens"], EOS) == [(0, 3), (3, 6), (6, 9)]
