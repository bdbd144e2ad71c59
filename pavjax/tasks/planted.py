"""The paper's didactic task (Sec. 3.3, App. B): find a planted sequence.

A response is a sequence of at most `length` tokens over the alphabet
`{0, .., vocab_size - 1}`; the last symbol `vocab_size - 1` is EOS and ends the
response early. The outcome reward Rex is 1 iff the hidden planted sequence `y*`
(default `3 6 0 3 5`) occurs contiguously before EOS within the first `length`
tokens. The task has a single "question": every problem's prompt is `[BOS]`.

Two token conventions (keep them apart):

* **Raw tokens** `0 .. vocab_size - 1` (EOS = `vocab_size - 1`, 14 by default)
  are the task's own alphabet. `ProceduralProver` and all its exact dynamic
  programs speak raw tokens; a raw value outside the alphabet (e.g. -1, what
  `PlantedTask.from_ids` makes of a stray BOS) is a *foreign* token that matches
  nothing in `y*` and is otherwise an ordinary (non-EOS) token.
* **Model ids** are what jobs see through the `base.Task` protocol. Raw token 0 is
  a real token here (it is in `y*`), but pavjax reserves id 0 for padding, so every
  raw token is shifted by one: `id = token + 1`. Hence `pad_id = 0`, raw tokens
  take ids `1 .. vocab_size` (EOS id = `vocab_size`, 15 by default), and one more
  id `vocab_size + 1` (16) is BOS, the prompt. `PlantedTask.vocab_size` (the
  number of ids a model must cover) is `vocab_size + 2` = 17. Convert with
  `PlantedTask.to_ids` / `PlantedTask.from_ids`. A response may hold only the 15
  raw tokens' ids (`PlantedTask.action_ids`); the MADE policy's softmax covers just
  those, so it never emits pad or BOS (a transformer policy still covers all 17).

Episode and reward conventions (decided here; the paper only says "sequences of
length 10" and "occurs before EOS"):

* A response ends at EOS or after `length` tokens, whichever comes first. A
  response of exactly `length` tokens without EOS is *complete* (not truncated),
  so `max_response_len = length` and reference solutions do not get an EOS
  appended at the horizon. Tokens after EOS or past the horizon are ignored.
* Reasons: `correct` (y* found), `empty` (EOS first, or no token at all), `wrong`
  (anything else, full-length or EOS-terminated).
* Every token is its own step: `step_end_ids` holds every non-pad id, so step-wise
  sampling stops after each token and `segment_steps` gives one span per token.

The procedural prover `mu_gamma`: let `k` be the longest suffix of the tokens so
far that equals a prefix of `y*` (a KMP automaton state; `k = 0` included). It puts
weight `gamma` on the next planted token `y*[k]` and weight 1 on every other token,
EOS included (EOS is an ordinary choice of the 15-token alphabet, as in the paper),
then normalizes. Once `y*` has fully occurred the reward is settled at 1; the
prover then keeps going from the longest *proper* border of `y*` (the usual KMP
fallback), i.e. `k` is always taken `< len(y*)`. Because the policy depends on the
prefix only through `k`, its Q and V are computed exactly by dynamic programming
over (matched length, remaining length); success is absorbing with value 1 and EOS
before success is absorbing with value 0.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import ml_collections
import numpy as np

from pavjax.tasks import base

PAD_ID = 0
FOREIGN = -1  # raw value of an id outside the task's alphabet (e.g. BOS in a response)


def default_config() -> ml_collections.ConfigDict:
  """The task's knobs, with the paper's settings as defaults."""
  cfg = ml_collections.ConfigDict()
  cfg.planted = (3, 6, 0, 3, 5)  # the hidden sequence y* (raw tokens, EOS excluded)
  cfg.vocab_size = 15  # raw alphabet size, EOS = vocab_size - 1 included (model vocab is +2)
  cfg.length = 10  # response length in tokens (the horizon; EOS may end it earlier)
  cfg.num_train = 3200  # SFT reference responses in the train split
  cfg.num_eval = 256  # reference responses in each of validation and test
  cfg.seed = 0  # generator seed for the reference responses
  cfg.sft_gamma = 5.0  # strength of the prover mu_gamma that generates SFT references
  return cfg


# ----------------------------------------------------------------------------------------------
# Raw-token helpers.


def contains_planted(tokens: Iterable[int], planted: Sequence[int], eos: int,
                     length: int | None = None) -> bool:
  """Whether `planted` occurs contiguously in `tokens` before EOS (and the horizon).

  Args:
    tokens: raw tokens of a response.
    planted: the planted sequence y* (raw tokens).
    eos: the raw EOS token.
    length: horizon; tokens at positions >= length are ignored. None: no horizon.

  Returns:
    True iff y* is a contiguous substring of the tokens before the first EOS.
  """
  body = []
  for i, tok in enumerate(tokens):
    if tok == eos or (length is not None and i >= length):
      break
    body.append(int(tok))
  planted = tuple(int(t) for t in planted)
  m = len(planted)
  return any(tuple(body[i:i + m]) == planted for i in range(len(body) - m + 1))


def kmp_automaton(planted: Sequence[int], vocab_size: int) -> np.ndarray:
  """Matched-length transitions of the string-matching automaton for `planted`.

  Args:
    planted: the pattern y* (raw tokens, each in [0, vocab_size)).
    vocab_size: raw alphabet size.

  Returns:
    int array `delta` of shape [m + 1, vocab_size + 1], m = len(planted):
    `delta[k, a]` is the length of the longest suffix of `y*[:k] + (a,)` that is a
    prefix of y* (so `delta == m` means a full occurrence just ended). The last
    column is a foreign token (matches nothing; always 0).
  """
  planted = tuple(int(t) for t in planted)
  m = len(planted)
  delta = np.zeros((m + 1, vocab_size + 1), np.int64)
  for k in range(m + 1):
    for a in range(vocab_size):
      s = planted[:k] + (a,)
      for j in range(min(len(s), m), 0, -1):
        if s[len(s) - j:] == planted[:j]:
          delta[k, a] = j
          break
  return delta


# ----------------------------------------------------------------------------------------------
# The procedural prover.


class ProceduralProver:
  """The prover policy mu_gamma of the didactic task, with exact Q and V.

  All prefixes, actions and responses are raw tokens (see the module docstring);
  values outside `[0, vocab_size)` are foreign tokens that reset the match.

  A prefix's value follows the episode rules: tokens after EOS or past the
  horizon `length` are ignored, a finished prefix (EOS seen, or `length` tokens)
  has its settled reward as value, and `q_value(prefix, a) = value(prefix + (a,))`.

  Attributes:
    planted: y* as a tuple of raw tokens.
    vocab_size: raw alphabet size (EOS = vocab_size - 1).
    eos: the raw EOS token.
    gamma: prover strength (weight on the next planted token; 1 = uniform).
    length: the horizon.
    delta: KMP automaton, see `kmp_automaton`.
    next_state: [m, vocab_size + 1] policy state after a token; a full match falls
      back to the longest proper border of y*, so states are always < m.
    hit: [m, vocab_size + 1] bool, whether the token completes an occurrence of y*.
    policy: [m, vocab_size] action probabilities in each policy state.
    win: [m, length + 1] exact success probability `W[k, r]` from state k with r
      tokens left (success not reached yet).
  """

  def __init__(self, planted: Sequence[int], vocab_size: int, gamma: float, length: int):
    planted = tuple(int(t) for t in planted)
    if not planted:
      raise ValueError("planted sequence must be non-empty")
    if any(not 0 <= t < vocab_size - 1 for t in planted):
      raise ValueError(f"planted tokens must lie in [0, {vocab_size - 1}) (EOS excluded): "
                       f"{planted}")
    if gamma <= 0:
      raise ValueError(f"gamma must be positive, got {gamma}")
    if length < 1:
      raise ValueError(f"length must be >= 1, got {length}")
    self.planted, self.vocab_size, self.gamma, self.length = planted, vocab_size, gamma, length
    self.eos = vocab_size - 1
    m = len(planted)
    self.delta = kmp_automaton(planted, vocab_size)
    # Longest proper border of y*: the state the prover resumes from after a hit.
    border = max((j for j in range(m) if planted[m - j:] == planted[:j]), default=0)
    self.hit = self.delta[:m] == m
    self.next_state = np.where(self.hit, border, self.delta[:m])
    weights = np.ones((m, vocab_size))
    weights[np.arange(m), planted] = gamma
    self.policy = weights / weights.sum(-1, keepdims=True)
    self.win = self._solve()

  def _solve(self) -> np.ndarray:
    """Backward DP for W[k, r] over (matched length, remaining length)."""
    m, v = len(self.planted), self.vocab_size
    return self.markov_values(np.broadcast_to(self.policy[:, None], (m, self.length, v)))[1]

  # -- the (k, r) MDP ------------------------------------------------------------------------------
  # A policy that sees a prefix only through its policy state k and the tokens left r
  # is Markov on the finite MDP with live states (k, r), 0 <= k < len(y*), 1 <= r <=
  # length. From (k, r), EOS ends the episode with reward 0, a token that completes y*
  # ends it with reward 1 (nothing after success changes the reward), any other token
  # moves to (next_state[k, a], r - 1), and r - 1 = 0 ends it with reward 0. mu_gamma
  # is such a policy (`markov_policy`), and so is every tabular policy on this grid.

  def markov_policy(self) -> np.ndarray:
    """mu_gamma on the (k, r) grid: [m, length, vocab_size], the same row for every r."""
    return np.repeat(np.asarray(self.policy, np.float64)[:, None], self.length, axis=1)

  def markov_values(self, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Q and success probability of a policy that is Markov in (k, r).

    The DP of `win` (this prover's value), for any policy on this automaton and
    horizon: backward over r, Q(k, r, a) = 1 on a hit, 0 on EOS, else W(k', r - 1).

    Args:
      policy: [m, length, vocab_size]; `policy[k, r - 1]` is the action
        distribution in state k with r tokens left (see `markov_policy`).

    Returns:
      (q, win): q [m, length, vocab_size] with `q[k, r - 1, a]` = Q(k, r, a), and
      win [m, length + 1] with `win[k, r]` the success probability from (k, r)
      (`win[:, 0] = 0`: no token left). `win[0, length]` is the root's value.
    """
    m, v = len(self.planted), self.vocab_size
    if np.shape(policy) != (m, self.length, v):
      raise ValueError(f"a (k, r) policy has shape {(m, self.length, v)}, got {np.shape(policy)}")
    hit, nxt = self.hit[:, :v], self.next_state[:, :v]
    not_eos = np.arange(v) != self.eos
    win = np.zeros((m, self.length + 1))
    q = np.zeros((m, self.length, v))
    for r in range(1, self.length + 1):
      cont = np.where(hit, 1.0, win[nxt, r - 1]) * not_eos  # [m, v]
      q[:, r - 1] = cont
      win[:, r] = (policy[:, r - 1] * cont).sum(-1)
    return q, win

  def markov_occupancy(self, policy: np.ndarray) -> np.ndarray:
    """Expected visits d(k, r) = sum_h Pr(s_h = (k, r)) of the live states, [m, length].

    Forward over r from the root (0, length) with a (k, r) policy (shape as in
    `markov_values`); only moves that neither hit y* nor emit EOS stay live, and
    r = 1 is the last decision. `d[k, r - 1]` is the visits to (k, r); the total is
    the expected number of live decisions in an episode.
    """
    m, v = len(self.planted), self.vocab_size
    if np.shape(policy) != (m, self.length, v):
      raise ValueError(f"a (k, r) policy has shape {(m, self.length, v)}, got {np.shape(policy)}")
    nxt = self.next_state[:, :v]
    moves = ~self.hit[:, :v] & (np.arange(v) != self.eos)[None, :]
    occ = np.zeros((m, self.length + 1))
    occ[0, self.length] = 1.0
    for r in range(self.length, 1, -1):  # r = 1: every action ends the episode
      flow = occ[:, r, None] * policy[:, r - 1] * moves  # [m, v]
      np.add.at(occ[:, r - 1], nxt.reshape(-1), flow.reshape(-1))
    return occ[:, 1:]

  # -- prefix bookkeeping ----------------------------------------------------------------------

  def _col(self, tok: int) -> int:
    """Automaton column of a raw token (foreign tokens share the last column)."""
    tok = int(tok)
    return tok if 0 <= tok < self.vocab_size else self.vocab_size

  def _scan(self, prefix: Sequence[int]) -> tuple[int, bool, bool, int]:
    """(policy state, succeeded, finished, tokens consumed) after a prefix."""
    k, won = 0, False
    for i, tok in enumerate(prefix):
      if i >= self.length:
        return k, won, True, i
      if int(tok) == self.eos:
        return k, won, True, i
      col = self._col(tok)
      won = won or bool(self.hit[k, col])
      k = int(self.next_state[k, col])
    n = len(prefix)
    return k, won, n >= self.length, n

  def live_state(self, prefix: Sequence[int]) -> tuple[int, int] | None:
    """(k, r) of a raw-token prefix on the (k, r) grid, or None once it succeeded or ended.

    k is the policy state and r the tokens left (see `markov_values`); the empty
    prefix is the root (0, length).
    """
    k, won, done, used = self._scan(prefix)
    if won or done:
      return None
    return k, self.length - used

  def state(self, prefix: Sequence[int]) -> int:
    """The policy state k (matched length of y*, < len(y*)) after a token string.

    A pure function of the tokens: EOS and horizon are not special here (EOS is
    never in y*, so it just resets the match), which keeps `probs` the literal
    mu_gamma of the paper for any string.
    """
    k = 0
    for tok in prefix:
      k = int(self.next_state[k, self._col(tok)])
    return k

  # -- policy ----------------------------------------------------------------------------------

  def probs(self, prefix: Sequence[int] = ()) -> np.ndarray:
    """mu_gamma(. | prefix) over the raw alphabet, shape [vocab_size] (see `state`)."""
    return self.policy[self.state(prefix)].copy()

  def sample(self, rng: np.random.Generator | int, n: int,
             prefix: Sequence[int] = ()) -> list[tuple[int, ...]]:
    """Samples n responses that continue `prefix` with mu_gamma.

    Args:
      rng: numpy Generator (or a seed).
      n: number of responses.
      prefix: raw tokens the responses start with.

    Returns:
      n full responses (prefix included) as tuples of raw tokens, each ending at
      its first EOS or at `length` tokens. A finished prefix is returned as is.
    """
    rng = np.random.default_rng(rng)
    prefix = tuple(int(t) for t in prefix)
    k, _, done, used = self._scan(prefix)
    if done:  # keep the episode: up to the first EOS (included) and the horizon
      ended_by_eos = used < min(len(prefix), self.length)
      return [prefix[:used + ended_by_eos]] * n
    cdf = np.cumsum(self.policy, -1)
    cdf[:, -1] = 1.0
    states = np.full(n, k, np.int64)
    active = np.ones(n, bool)
    steps = self.length - len(prefix)
    toks = np.full((n, steps), -2, np.int64)
    for t in range(steps):
      u = rng.random(n)
      a = (cdf[states] <= u[:, None]).sum(-1)
      a = np.minimum(a, self.vocab_size - 1)
      toks[active, t] = a[active]
      states = self.next_state[states, a]
      active &= a != self.eos
    out = []
    for row in toks:
      out.append(prefix + tuple(int(x) for x in row if x != -2))
    return out

  # -- exact values ----------------------------------------------------------------------------

  def value(self, prefix: Sequence[int] = ()) -> float:
    """Exact V^mu(prefix): probability the response ends correct continuing with mu.

    `value(())` is the value of the question alone.
    """
    k, won, done, used = self._scan(prefix)
    if won:
      return 1.0
    if done:
      return 0.0
    return float(self.win[k, self.length - used])

  def q_value(self, prefix: Sequence[int], action: int) -> float:
    """Exact Q^mu(prefix, action) = V^mu(prefix + (action,))."""
    return self.value(tuple(prefix) + (int(action),))

  def q_table(self, prefix: Sequence[int] = ()) -> np.ndarray:
    """Exact Q^mu(prefix, a) for every raw action a, shape [vocab_size]."""
    k, won, done, used = self._scan(prefix)
    if won or done:
      return np.full(self.vocab_size, 1.0 if won else 0.0)
    v = self.vocab_size
    r = self.length - used - 1  # tokens left after the action
    after = np.where(self.hit[k, :v], 1.0, self.win[self.next_state[k, :v], r])
    after[self.eos] = 0.0
    return after

  def prefix_values(self, response: Sequence[int]) -> np.ndarray:
    """V^mu of every prefix of a response: `out[h] = value(response[:h])`, shape [T + 1].

    Step h's advantage under mu is `out[h + 1] - out[h]` (out[0] is the question's
    value); entries after EOS or past the horizon repeat the settled value.
    """
    return self.prefix_values_batch(np.asarray([list(response)], np.int64).reshape(1, -1))[0]

  def prefix_values_batch(self, tokens: np.ndarray) -> np.ndarray:
    """Vectorized `prefix_values` over a [B, T] array of raw tokens -> [B, T + 1]."""
    tokens = np.asarray(tokens, np.int64)
    b, t_len = tokens.shape
    v = self.vocab_size
    out = np.empty((b, t_len + 1))
    states = np.zeros(b, np.int64)
    won = np.zeros(b, bool)
    done = np.zeros(b, bool)
    out[:, 0] = self.win[0, self.length]
    for t in range(t_len):
      tok = tokens[:, t]
      col = np.where((tok >= 0) & (tok < v), tok, v)
      live = ~done & ~won & (t < self.length)
      is_eos = tok == self.eos
      won = won | (live & ~is_eos & self.hit[states, col])
      done = done | (live & is_eos) | (t + 1 >= self.length)
      states = np.where(live & ~is_eos, self.next_state[states, col], states)
      left = max(self.length - t - 1, 0)
      out[:, t + 1] = np.where(won, 1.0, np.where(done, 0.0, self.win[states, left]))
    return out

  def pass_at_n(self, n: int) -> float:
    """Exact Pass@n of the prover: 1 - (1 - V(()))^n."""
    return float(1.0 - (1.0 - self.value(())) ** n)


# ----------------------------------------------------------------------------------------------
# The task.


class PlantedTask(base.Task):
  """The didactic planted-sequence task (see module docstring for id conventions).

  Attributes:
    planted: y* (raw tokens).
    num_tokens: raw alphabet size (config `vocab_size`, EOS included).
    eos_token: raw EOS token (num_tokens - 1).
    length: response horizon in tokens.
    sft_gamma: strength of the prover that generated the reference responses.
    bos_id: the prompt id (num_tokens + 1).
  """

  name = "planted"
  pad_id = PAD_ID

  def __init__(self, planted: Sequence[int] = (3, 6, 0, 3, 5), vocab_size: int = 15,
               length: int = 10, num_train: int = 3200, num_eval: int = 256, seed: int = 0,
               sft_gamma: float = 5.0):
    self.planted = tuple(int(t) for t in planted)
    self.num_tokens = int(vocab_size)
    self.eos_token = self.num_tokens - 1
    self.length = int(length)
    self.sft_gamma = float(sft_gamma)
    self.bos_id = self.num_tokens + 1
    self.seed = seed
    sft_prover = self.prover(self.sft_gamma)  # validates planted / vocab / length
    sizes = {"train": num_train, "validation": num_eval, "test": num_eval}
    self._splits = {}
    for i, (split, size) in enumerate(sizes.items()):
      # One independent stream per split: resizing one split leaves the others unchanged.
      rng = np.random.default_rng([seed, i])
      responses = sft_prover.sample(rng, size)
      self._splits[split] = [
          base.Problem(uid=f"planted-{split}-{j}", prompt=(self.bos_id,),
                       steps=tuple((t + 1,) for t in resp), answer="planted")
          for j, resp in enumerate(responses)]

  # -- ids ---------------------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self.num_tokens + 2  # pad + raw tokens + BOS

  @property
  def eos_id(self) -> int:
    return self.eos_token + 1

  @property
  def step_end_ids(self) -> tuple[int, ...]:
    # Every non-pad id (BOS too, should a policy emit it) ends a step: one token per step.
    return tuple(range(1, self.vocab_size))

  @property
  def action_ids(self) -> tuple[int, ...]:
    # The paper's 15 tokens (EOS included): ids 1 .. num_tokens; never pad or BOS.
    return tuple(range(1, self.num_tokens + 1))

  @property
  def max_prompt_len(self) -> int:
    return 1

  @property
  def max_response_len(self) -> int:
    return self.length

  def to_ids(self, tokens: Iterable[int]) -> list[int]:
    """Raw tokens -> model ids (token + 1)."""
    out = []
    for t in tokens:
      t = int(t)
      if not 0 <= t < self.num_tokens:
        raise ValueError(f"raw token {t} outside [0, {self.num_tokens})")
      out.append(t + 1)
    return out

  def from_ids(self, ids: Iterable[int]) -> list[int]:
    """Model ids -> raw tokens (id - 1); trailing padding is dropped.

    Any other id outside the raw range (BOS, or an interior pad) becomes FOREIGN
    (-1), a token that matches nothing, which the prover and reward accept.
    """
    ids = [int(i) for i in ids]
    while ids and ids[-1] == self.pad_id:
      ids.pop()
    return [i - 1 if 1 <= i <= self.num_tokens else FOREIGN for i in ids]

  def prover(self, gamma: float) -> ProceduralProver:
    """mu_gamma for this task's planted sequence, alphabet and horizon (raw tokens)."""
    return ProceduralProver(self.planted, self.num_tokens, gamma, self.length)

  def procedural_prover(self, prover_cfg) -> base.PrefixValues:
    """mu_gamma (`prover_cfg.gamma`); a step is one token, so column h = h tokens."""
    mu = self.prover(prover_cfg.gamma)

    def values(problems, responses, width):
      del problems  # one planted sequence for every prompt
      raw = np.full((len(responses), width - 1), -1, np.int64)
      for i, r in enumerate(responses):
        t = self.from_ids(r)[:width - 1]
        raw[i, :len(t)] = t
      return mu.prefix_values_batch(raw)
    return values

  # -- protocol ------------------------------------------------------------------------------------

  def split(self, name: str) -> Sequence[base.Problem]:
    if name not in self._splits:
      raise ValueError(f"unknown split {name!r}; known: {base.SPLITS}")
    return self._splits[name]

  def encode_prompt(self, problem: base.Problem) -> list[int]:
    return list(problem.prompt)

  def encode_solution(self, problem: base.Problem) -> list[int]:
    # The reference already ends with EOS if it stopped early; a full-length one is
    # complete at the horizon, so no EOS is appended (keeps it <= max_response_len).
    return [t for step in problem.steps for t in step]

  def decode(self, tokens: Sequence[int]) -> str:
    """Space-separated raw tokens; `<s>` for BOS, `</s>` for EOS, `<?id>` for others."""
    words = []
    for i in tokens:
      i = int(i)
      if i == self.pad_id:
        continue
      if i == self.bos_id:
        words.append("<s>")
      elif i == self.eos_id:
        words.append("</s>")
      elif 1 <= i <= self.num_tokens:
        words.append(str(i - 1))
      else:
        words.append(f"<?{i}>")
    return " ".join(words)

  def encode(self, text: str) -> list[int]:
    """Inverse of `decode` (padding aside): whitespace-separated words -> model ids."""
    out = []
    for word in text.split():
      if word == "<s>":
        out.append(self.bos_id)
      elif word == "</s>":
        out.append(self.eos_id)
      elif word.startswith("<?") and word.endswith(">"):
        out.append(int(word[2:-1]))
      else:
        out.extend(self.to_ids([int(word)]))
    return out

  def reward_tokens(self, tokens: Sequence[int]) -> float:
    """Rex of a raw-token response."""
    return float(contains_planted(tokens, self.planted, self.eos_token, self.length))

  def is_correct(self, response: Sequence[int], problem: base.Problem) -> base.Outcome:
    del problem  # one question; the planted sequence is the task's
    raw = self.from_ids(response)
    body, _ = base.response_until_eos(raw[:self.length], self.eos_token)
    if not body:
      return base.Outcome(0.0, base.EMPTY)
    if contains_planted(body, self.planted, self.eos_token):
      return base.Outcome(1.0, base.CORRECT)
    return base.Outcome(0.0, base.WRONG)


def make(task_cfg: ml_collections.ConfigDict, workdir: str | None = None) -> PlantedTask:
  """Builds the task from `task_cfg` (fields of `default_config`)."""
  del workdir  # nothing to cache
  return PlantedTask(planted=tuple(task_cfg.planted), vocab_size=task_cfg.vocab_size,
                     length=task_cfg.length, num_train=task_cfg.num_train,
                     num_eval=task_cfg.num_eval, seed=task_cfg.seed,
                     sft_gamma=task_cfg.sft_gamma)
