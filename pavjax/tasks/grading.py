"""Answer equivalence for math tasks: exact numbers first, then math-verify under a time limit.

`answers_equivalent(reference, candidate, grader=..., timeout_s=...)` says whether a
response's final answer is the reference's. Both are normally already normalized by
`answers.normalize_answer` (jsonl_math stores normalized references), and the checks run
in this order, cheapest first:

  1. plain numbers (`answers.parse_number`: integers, decimals, `1,234`, `a/b`,
     `\\frac{a}{b}`): when both sides parse, their exact rational values decide, without
     sympy (`\\frac{1}{3}` is not `0.333333`; `0.75` is `\\frac{3}{4}`);
  2. equal strings;
  3. grader 'exact' stops here. Grader 'math_verify' goes on to a symbolic check with the
     `math-verify` package (HF's `parse` + `verify`, LaTeX extraction only, the reference
     as gold), unless a side is longer than `MAX_SYMBOLIC_CHARS`, holds a `$`, or reads as
     words (three or more letters in a row outside `\\command` and `\\begin{env}` names:
     math-verify reads `Monday` as the product M*o*n*d*a*y, which equals `dynamo`); those
     are wrong unless step 2 matched them.

The symbolic check runs in a separate worker process (`python -c`, which imports only
math-verify, never pavjax or jax) that answers JSON lines over a pipe, one check at a time.
Inside the worker math-verify's own signal-based timeouts (whole seconds, about half the
limit) stop most slow checks cleanly. The caller waits at most `timeout_s` for the reply;
past that the worker is killed, a fresh one is started at once, and the answer is wrong.
So a hostile answer costs at most the limit, from any thread: math-verify's signal
timeouts alone only work on the main thread (elsewhere `parse` and `verify` raise
ValueError), would replace a SIGALRM handler of the host job, and cannot interrupt one
long C call (Python's own 3**(10**8) is one call; it took 106 s on a 2-core VM). The
worker's address space is capped (`WORKER_MEMORY_BYTES`), so a huge number fails with
MemoryError there instead of swapping the host. Waiting for the worker to start (once
per process, and after each kill) and for another thread's check are not counted in the
limit. Results are cached per (reference, candidate, limit), timeouts included, so the
same hostile answer never costs the limit twice.

Decisions of this grader (tested in tests/tasks/test_grading.py):
  * `50\\%` is `50` (normalization drops the percent sign), not `0.5`;
  * `90^\\circ` is `90` (the degree sign is dropped), not `\\pi/2`;
  * a number written with the Unicode minus sign (U+2212) is that number with `-`, and a
    plain number followed by one
    unit word is the number (`405 dollars` is `405`), but not when the word changes the
    value (`2 hundred` is not `200`): both are `answers.normalize_answer` rules;
  * the reference decides the order: a set (`\\{1,2\\}`) or list (`1,2`) reference takes
    its members in any order and brackets (`(2,1)`), an ordered pair or interval (`(1,2)`)
    only in its own order (math-verify's comparison is not symmetric);
  * a decimal agreeing to 6 places with an irrational reference is accepted (math-verify's
    default `float_rounding=6`: `0.707107` for `\\frac{\\sqrt{2}}{2}`), but plain numbers
    are compared exactly (step 1);
  * letter case does not count in the symbolic check (math-verify lowercases: `(A)` is
    `(a)`), while answers that read as words compare as strings (`Monday` is not `monday`).
"""

from __future__ import annotations

import atexit
import collections
import importlib.util
import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time

from pavjax.tasks import answers

GRADERS = ("math_verify", "exact")  # config.task.grader values
DEFAULT_GRADER = "math_verify"
DEFAULT_TIMEOUT_S = 2.0
MAX_TIMEOUT_S = 600.0  # a larger per-answer limit is surely a typo
MAX_SYMBOLIC_CHARS = 2000  # longer answers are compared as strings only
WORKER_MEMORY_BYTES = 4 << 30  # address-space cap of the worker process (0 = none)
STARTUP_TIMEOUT_S = 120.0  # how long a worker may take to import math-verify
CACHE_SIZE = 1 << 16  # (reference, candidate, limit) results kept

# A run of three or more ASCII letters that is not the name of a \command or environment:
# the answer is words, which math-verify would read as a product of one-letter symbols.
_COMMAND_RE = re.compile(r"\\(?:begin|end)\s*\{[A-Za-z*]*\}|\\[A-Za-z]+")
_WORD_RE = re.compile(r"[A-Za-z]{3,}")


def validate(grader: str, timeout_s: float) -> None:
  """Raises ValueError naming the config field when `grader` or `timeout_s` is bad."""
  if grader not in GRADERS:
    raise ValueError(f"config.task.grader={grader!r} is not one of {GRADERS}")
  if (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
      or not math.isfinite(timeout_s) or not 0 < timeout_s <= MAX_TIMEOUT_S):
    raise ValueError(f"config.task.grade_timeout_s={timeout_s!r} must be a number of seconds "
                     f"in (0, {MAX_TIMEOUT_S:g}]")


def check_available(grader: str) -> None:
  """Raises ImportError when `grader` needs math-verify and it is not installed.

  Looks the package up without importing it (the worker process imports it).
  """
  if grader == "math_verify" and importlib.util.find_spec("math_verify") is None:
    raise ImportError("config.task.grader='math_verify' needs the math-verify package: "
                      "pip install 'math-verify>=0.8,<1' (or set config.task.grader='exact')")


def looks_like_words(answer: str) -> bool:
  """Whether the answer holds a run of 3+ letters outside a `\\command` (see the docstring)."""
  return _WORD_RE.search(_COMMAND_RE.sub(" ", answer)) is not None


def answers_equivalent(reference: str, candidate: str, *, grader: str = DEFAULT_GRADER,
                       timeout_s: float = DEFAULT_TIMEOUT_S,
                       max_chars: int = MAX_SYMBOLIC_CHARS) -> bool:
  """Whether `candidate` is the same answer as `reference` (see the module docstring).

  Args:
    reference: the reference's final answer (normalized, `answers.normalize_answer`).
    candidate: the response's final answer, normalized the same way.
    grader: 'math_verify' (symbolic, time-limited) or 'exact' (numbers and strings only).
    timeout_s: the most seconds the symbolic check may take; slower is wrong.
    max_chars: longer answers skip the symbolic check.

  Returns:
    True when the answers agree. A check that fails, crashes its worker or runs out of
    time is False: no answer text makes this raise. It raises RuntimeError only when the
    worker process cannot start at all (math-verify missing or broken).
  """
  p, r = answers.parse_number(candidate), answers.parse_number(reference)
  if p is not None and r is not None:
    return p == r
  if candidate == reference:
    return True
  if grader == "exact":
    return False
  if grader != "math_verify":
    raise ValueError(f"grader={grader!r} is not one of {GRADERS}")
  if (not candidate.strip() or not reference.strip()
      or len(candidate) > max_chars or len(reference) > max_chars
      or "$" in candidate or "$" in reference
      or looks_like_words(candidate) or looks_like_words(reference)):
    return False
  return symbolic_equivalent(reference, candidate, timeout_s)


# ----------------------------------------------------------------------------
# The cached, time-limited symbolic check.
# ----------------------------------------------------------------------------

_cache: collections.OrderedDict = collections.OrderedDict()
_cache_lock = threading.Lock()


def symbolic_equivalent(reference: str, candidate: str, timeout_s: float) -> bool:
  """math-verify's verdict on the pair, False past `timeout_s` seconds (cached)."""
  key = (reference, candidate, float(timeout_s))
  with _cache_lock:
    if key in _cache:
      _cache.move_to_end(key)
      return _cache[key]
  ok = _WORKER.check(reference, candidate, timeout_s)
  with _cache_lock:
    _cache[key] = ok
    while len(_cache) > CACHE_SIZE:
      _cache.popitem(last=False)
  return ok


def clear_cache() -> None:
  """Forgets cached verdicts (tests)."""
  with _cache_lock:
    _cache.clear()


# The worker's program. It reads {"ref", "cand", "secs"} JSON lines on stdin and writes
# one {"ok": bool} line per request; it first writes {"ready": true} (or {"error": ...}).
# Kept out of pavjax so that it imports math-verify alone.
_WORKER_SOURCE = r"""
import json, logging, os, sys
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
out = os.fdopen(os.dup(1), "w", encoding="ascii")
os.dup2(2, 1)  # anything a library prints goes to stderr, never into the replies


def reply(obj):
  out.write(json.dumps(obj) + "\n")
  out.flush()


try:
  memory = int(sys.argv[1])
  if memory > 0:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
  logging.disable(logging.CRITICAL)  # math-verify logs whole (hostile) inputs on timeouts
  import math_verify
  from math_verify.errors import TimeoutException
  config = [math_verify.LatexExtractionConfig()]
except BaseException as e:
  reply({"error": type(e).__name__ + ": " + str(e)})
  sys.exit(1)


def check(ref, cand, secs):
  opts = dict(extraction_config=config, fallback_mode="no_fallback", parsing_timeout=secs)
  gold = math_verify.parse("$" + ref + "$", **opts)
  pred = math_verify.parse("$" + cand + "$", **opts) if gold else []
  return bool(gold and pred and math_verify.verify(gold, pred, timeout_seconds=secs))


check("\\frac{1}{2}", "0.5", 5)  # loads what math-verify imports lazily
reply({"ready": True})
for line in sys.stdin:
  try:
    req = json.loads(line)
    ok = check(req["ref"], req["cand"], req["secs"])
  except (Exception, TimeoutException):
    ok = False
  reply({"ok": ok})
"""


class _Worker:
  """One math-verify worker process, used by one thread at a time (see the docstring)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._proc = None
    self._replies = None  # queue of parsed reply lines of the current process (None = EOF)
    self._ready = False
    self._pid = None  # the process that started the worker (a forked child starts its own)
    self.kills = 0  # workers killed for running past the limit (tests and logs)

  def _start(self) -> None:
    self._proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER_SOURCE, str(WORKER_MEMORY_BYTES)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, encoding="ascii", bufsize=1)
    self._replies = queue.Queue()
    self._ready = False
    self._pid = os.getpid()
    threading.Thread(target=_read_replies, args=(self._proc.stdout, self._replies),
                     daemon=True, name="math-verify-replies").start()

  def _stop(self) -> None:
    proc, self._proc, self._ready = self._proc, None, False
    if proc is None:
      return
    try:
      proc.kill()
      proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
      pass
    for f in (proc.stdin, proc.stdout):
      try:
        f.close()
      except OSError:
        pass

  def _ensure_ready(self) -> None:
    if self._proc is not None and self._pid != os.getpid():
      self._proc = None  # inherited through fork: the parent's worker, not ours
    if self._proc is None or self._proc.poll() is not None:
      self._stop()
      self._start()
    if self._ready:
      return
    try:
      msg = self._replies.get(timeout=STARTUP_TIMEOUT_S)
    except queue.Empty:
      msg = {"error": f"no reply within {STARTUP_TIMEOUT_S:g} s"}
    if not msg or not msg.get("ready"):
      self._stop()
      detail = (msg or {}).get("error", "the process exited")
      raise RuntimeError(f"the math-verify grader worker did not start: {detail}")
    self._ready = True

  def warm_up(self) -> None:
    """Starts the worker (if needed) and waits until it is ready."""
    with self._lock:
      self._ensure_ready()

  def check(self, reference: str, candidate: str, timeout_s: float) -> bool:
    """The worker's verdict, or False past `timeout_s` (the worker is then replaced)."""
    with self._lock:
      self._ensure_ready()
      request = json.dumps({"ref": reference, "cand": candidate,
                            "secs": max(1, int(timeout_s / 2))}) + "\n"
      deadline = time.monotonic() + timeout_s
      try:
        self._proc.stdin.write(request)
        self._proc.stdin.flush()
        msg = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
      except (OSError, ValueError, queue.Empty):
        msg = None
      if msg is not None and "ok" in msg:
        return bool(msg["ok"])
      # Out of time, or the worker died (a crash, the memory cap): replace it now, so its
      # start overlaps whatever the caller does next.
      self.kills += 1
      self._stop()
      try:
        self._start()
      except OSError:  # the next check tries again (and reports why if it cannot)
        self._proc = None
      return False

  def close(self) -> None:
    with self._lock:
      self._stop()


def _read_replies(stream, replies: queue.Queue) -> None:
  """Puts each JSON reply line of a worker on `replies`; None once the stream ends."""
  try:
    for line in stream:
      try:
        replies.put(json.loads(line))
      except ValueError:
        replies.put({})  # not a reply: the request counts as failed
  except (OSError, ValueError):
    pass
  replies.put(None)


_WORKER = _Worker()
atexit.register(_WORKER.close)


def warm_up() -> None:
  """Starts the math-verify worker now rather than on the first symbolic check."""
  _WORKER.warm_up()
