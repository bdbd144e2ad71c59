"""What every benchmark shares: ceilings, timing, flags, tables, checks, compile counts.

Conventions used by all benches:
  * one device (the default one); the issue's targets are for a single GPU;
  * timing = `warmup` untimed calls (compilation happens there), then the median of
    `runs` calls, each ended by `jax.block_until_ready` on its outputs;
  * correctness before speed: a bench whose check fails raises `CorrectnessError`
    and times nothing (`python -m ...` then exits with status 1);
  * on a CPU backend the flag defaults switch to small sizes (see `parse_flags`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pavjax import config_lib
from pavjax.models import Transformer, TransformerConfig


class CorrectnessError(RuntimeError):
  """A benchmark's correctness check failed; nothing was timed."""


class MissingDependency(RuntimeError):
  """A bench needs a package that is not installed (the message says which)."""


# ----------------------------------------------------------------------------- device

# Vendor datasheet numbers: (dense bf16 FLOP/s, memory bytes/s). Matched on
# substrings of `device.device_kind`; the first match wins. Only parts whose
# numbers are unambiguous are listed (an H100 PCIe or NVL card is not an SXM one).
DATASHEETS = (
    ("H200", "H200", 989e12, 4.8e12),
    ("H100 PCIe", None, None, None),
    ("H100 NVL", None, None, None),
    ("H100", "H100 SXM", 989e12, 3.35e12),
)


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
  backend: str  # cpu | gpu | tpu
  kind: str  # jax's device_kind
  name: str | None  # the datasheet entry it matched, None when unknown
  peak_flops: float | None  # datasheet dense bf16 FLOP/s
  peak_bandwidth: float | None  # datasheet memory bytes/s

  def describe(self) -> str:
    return f"{self.kind} ({self.backend}, jax {jax.__version__})"


def device_info(device=None) -> DeviceInfo:
  device = device or jax.devices()[0]
  kind = str(device.device_kind)
  for key, name, flops, bw in DATASHEETS:
    if key.lower() in kind.lower():
      return DeviceInfo(device.platform, kind, name, flops, bw)
  return DeviceInfo(device.platform, kind, None, None, None)


def on_cpu() -> bool:
  return jax.default_backend() == "cpu"


# Static and continuous batching draw every sampled item with the same key, so on a CPU in
# float32 they give the same tokens (the tests check it). In bfloat16, or on a GPU whose
# matmul kernels pick their summation order by batch shape, rounding may flip a sampled
# token now and then, and that item differs from there on; wrong keys make nearly every
# item differ. So elsewhere a share of items may differ, and the bench reports it.
DIFFER_ALLOWED = 0.25


def check_agreement(what: str, differ: int, total: int, dtype: str) -> float:
  """The share of `total` items (static vs continuous batching) that `differ`; raises
  CorrectnessError past what float rounding explains (none on a CPU in float32, else
  DIFFER_ALLOWED)."""
  allowed = 0.0 if on_cpu() and dtype == "float32" else DIFFER_ALLOWED
  share = differ / max(total, 1)
  if share > allowed:
    raise CorrectnessError(f"{what}: {differ} of {total} differ from static batching's "
                           f"({share:.0%}; at most {allowed:.0%} allowed on this backend and "
                           f"dtype)")
  return share


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Timing:
  median: float  # seconds
  times: tuple[float, ...]

  @property
  def spread(self) -> float:
    """(max - min) / median: how noisy the runs were."""
    return (max(self.times) - min(self.times)) / max(self.median, 1e-12)


def time_fn(fn: Callable, *args, warmup: int = 1, runs: int = 5,
            setup: Callable[[], tuple] | None = None,
            sync: Callable[[Any], Any] = jax.block_until_ready) -> Timing:
  """Median wall time of `fn(*args)`, synchronized on the device.

  `setup()`, when given, builds fresh arguments before each call (for functions
  that donate their inputs); it is not timed. Warm-up calls are not timed either.
  `sync(out)` must return only once the device has finished `out` (another
  framework's timings pass their own).
  """

  def one():
    call_args = setup() if setup is not None else args
    sync(call_args)
    t0 = time.perf_counter()
    sync(fn(*call_args))
    return time.perf_counter() - t0

  for _ in range(warmup):
    one()
  times = tuple(one() for _ in range(max(runs, 1)))
  return Timing(statistics.median(times), times)


# ----------------------------------------------------------------------------- ceilings


@dataclasses.dataclass(frozen=True)
class Ceilings:
  device: DeviceInfo
  dtype: str
  matmul_flops: float  # measured FLOP/s of a large square matmul in `dtype`
  matmul_n: int
  copy_bandwidth: float  # measured bytes/s (read + write) of a large elementwise copy
  copy_bytes: int  # size of the copied array

  @property
  def bandwidth(self) -> float:
    """The bandwidth floors are computed with: datasheet if known, else measured."""
    return self.device.peak_bandwidth or self.copy_bandwidth

  def rows(self) -> list[list[str]]:
    d = self.device
    return [
        ["matmul FLOP/s", f"{self.dtype}, {self.matmul_n}^3", fmt_si(self.matmul_flops, "FLOP/s"),
         fmt_si(d.peak_flops, "FLOP/s") + (" (bf16 dense)" if d.peak_flops else ""),
         fmt_pct(self.matmul_flops / d.peak_flops) if d.peak_flops else "n/a"],
        ["copy bytes/s", f"{fmt_si(self.copy_bytes, 'B')} read + write",
         fmt_si(self.copy_bandwidth, "B/s"), fmt_si(d.peak_bandwidth, "B/s"),
         fmt_pct(self.copy_bandwidth / d.peak_bandwidth) if d.peak_bandwidth else "n/a"],
    ]

  def to_dict(self) -> dict:
    return {"device": self.device.kind, "backend": self.device.backend,
            "datasheet": self.device.name, "dtype": self.dtype,
            "matmul_flops": self.matmul_flops, "copy_bandwidth": self.copy_bandwidth,
            "peak_flops": self.device.peak_flops, "peak_bandwidth": self.device.peak_bandwidth}


def measure_matmul(dtype: str, n: int, reps: int = 8, runs: int = 3) -> float:
  """FLOP/s of `reps` chained [n, n] @ [n, n] matmuls in one program."""
  dt = jnp.dtype(dtype)
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
  # Orthogonal-ish scale keeps the chained products finite.
  b = (jax.random.normal(kb, (n, n), jnp.float32) * n**-0.5).astype(dt)

  @jax.jit
  def chain(a, b):
    return jax.lax.fori_loop(0, reps, lambda _, x: jnp.dot(x, b, preferred_element_type=dt), a)

  t = time_fn(chain, a, b, warmup=1, runs=runs)
  return 2.0 * n**3 * reps / t.median


def measure_copy(num_bytes: int, runs: int = 5) -> float:
  """Bytes/s of an elementwise `x + 1` over a float32 array (counts read + write)."""
  x = jnp.zeros((num_bytes // 4,), jnp.float32)
  add = jax.jit(lambda x: x + 1.0)
  t = time_fn(add, x, warmup=2, runs=runs)
  return 2.0 * x.size * 4 / t.median


def measure_ceilings(dtype: str) -> Ceilings:
  """Measured matmul and copy ceilings of the default device in the run's dtype."""
  cpu = on_cpu()
  n = 1024 if cpu else 8192
  copy_bytes = (64 if cpu else 2048) * 2**20
  return Ceilings(device_info(), dtype, measure_matmul(dtype, n, reps=4 if cpu else 16), n,
                  measure_copy(copy_bytes), copy_bytes)


# ----------------------------------------------------------------------------- tables


def fmt_si(x: float | None, unit: str = "", digits: int = 3) -> str:
  if x is None:
    return "n/a"
  for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.{digits}g} {prefix}{unit}"
  return f"{x:.{digits}g} {unit}".strip()


def fmt_pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.1f}%"


def fmt_ratio(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.2f}x"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table with padded columns (readable as plain text too)."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                notes: Sequence[str] = ()) -> None:
  print(f"\n### {title}\n", flush=True)
  print(format_table(headers, rows))
  for n in notes:
    print(f"\n{n}" if n is notes[0] else n)
  sys.stdout.flush()


def print_ceilings(c: Ceilings) -> None:
  print_table(f"Ceilings: {c.device.describe()}",
              ["what", "how", "measured", "datasheet", "measured / datasheet"], c.rows())


# ----------------------------------------------------------------------------- flags


def _csv(cast):
  return lambda s: tuple(cast(x) for x in str(s).split(",") if x)


def parse_flags(argv: Sequence[str] | None, *, description: str,
                gpu: Mapping[str, Any], cpu: Mapping[str, Any],
                add_flags: Callable[[argparse.ArgumentParser], None] | None = None
                ) -> argparse.Namespace:
  """Common flags plus a bench's own; unset flags take the backend's defaults.

  `gpu` / `cpu` map flag names to defaults; the CPU set is used when
  `jax.default_backend() == 'cpu'`. Every flag a bench uses must have a default
  in both maps (or in `add_flags`).
  """
  p = argparse.ArgumentParser(
      description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Unset flags take the backend's defaults: GPU " + _describe(gpu) + "; CPU " +
      _describe(cpu) + ".")
  p.add_argument("--size", type=_csv(str), default=None,
                 help=f"comma-separated model sizes from {sorted(config_lib.MODEL_SIZES)}")
  p.add_argument("--batch", type=_csv(int), default=None, help="comma-separated batch sizes")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype (and ceilings dtype)")
  p.add_argument("--vocab", type=int, default=None, help="vocabulary size of the synthetic model")
  p.add_argument("--runs", type=int, default=None, help="timed runs (the median is reported)")
  p.add_argument("--warmup", type=int, default=None, help="untimed runs first (compilation)")
  p.add_argument("--check_rows", type=int, default=None,
                 help="rows checked against the uncached reference")
  p.add_argument("--json", default="", help="also write the results to this JSON file")
  p.add_argument("--skip_ceilings", action="store_true",
                 help="skip measuring matmul / copy ceilings (tests)")
  # Test hook: breaks the workload on purpose so that the correctness check must fail.
  p.add_argument("--fault", default="", help=argparse.SUPPRESS)
  if add_flags is not None:
    add_flags(p)
  args = p.parse_args(list(argv) if argv is not None else None)
  defaults = dict(cpu if on_cpu() else gpu)
  defaults.setdefault("runs", 3 if on_cpu() else 5)
  defaults.setdefault("warmup", 1)
  defaults.setdefault("check_rows", 8)
  defaults.setdefault("batch", ())  # benches whose batch is set by their own flags
  defaults.setdefault("size", ())  # benches whose model comes from elsewhere (a checkpoint)
  defaults.setdefault("vocab", 0)
  for key, value in defaults.items():
    if getattr(args, key, None) is None:
      setattr(args, key, value)
  for key, value in vars(args).items():
    if value is None:
      raise ValueError(f"--{key} has no default for backend {jax.default_backend()}")
  for size in getattr(args, "size", ()):
    if size not in config_lib.MODEL_SIZES:
      raise ValueError(f"--size: unknown size {size!r}; known: {sorted(config_lib.MODEL_SIZES)}")
  return args


def start(argv: Sequence[str] | None, *, description: str, gpu: Mapping[str, Any],
          cpu: Mapping[str, Any], add_flags=None) -> tuple[argparse.Namespace, Ceilings | None]:
  """Every bench's opening: parse the flags, then measure and print the ceilings."""
  args = parse_flags(argv, description=description, gpu=gpu, cpu=cpu, add_flags=add_flags)
  ceilings = None if args.skip_ceilings else measure_ceilings(args.dtype)
  if ceilings:
    print_ceilings(ceilings)
  return args, ceilings


def spread_note(results: Sequence[Mapping[str, Any]]) -> str:
  """The table note on timing noise: the largest (max - min) / median of any result."""
  return f"largest (max - min) / median over timed runs: {max(r['spread'] for r in results):.0%}"


def _describe(defaults: Mapping[str, Any]) -> str:
  show = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
  return " ".join(f"--{k}={show(v)}" for k, v in defaults.items())


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  if not path:
    return
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
    f.write("\n")


def run_main(main: Callable[[Sequence[str] | None], Any]) -> None:
  """`python -m` entry point: a failed correctness check exits with status 1."""
  try:
    main(None)
  except CorrectnessError as e:
    print(f"\nCORRECTNESS CHECK FAILED: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  except MissingDependency as e:
    print(f"\n{e}", file=sys.stderr, flush=True)
    sys.exit(2)


# ----------------------------------------------------------------------------- compiles


class CompileCounter:
  """Counts jit lowerings and backend compilations inside a `with` block.

  Uses `jax.monitoring` duration events, which jax records each time it lowers a
  jaxpr to an MLIR module (a jit cache miss: a new shape, dtype or static
  argument) and each time XLA compiles one (lowerings served by the persistent
  compilation cache skip the latter, never the former). Zero lowerings after
  warm-up means zero recompiles.
  """

  _counts: collections.Counter = collections.Counter()
  _installed = False
  LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
  COMPILE = "/jax/core/compile/backend_compile_duration"

  @classmethod
  def _install(cls):
    if not cls._installed:
      def listen(event, duration, **kwargs):
        del duration, kwargs
        cls._counts[event] += 1
      jax.monitoring.register_event_duration_secs_listener(listen)
      cls._installed = True

  def __init__(self):
    self._install()
    self.lowerings = self.compiles = 0
    self._start = None

  def __enter__(self):
    self._start = dict(self._counts)
    return self

  def __exit__(self, *exc):
    self.lowerings = self._counts[self.LOWER] - self._start.get(self.LOWER, 0)
    self.compiles = self._counts[self.COMPILE] - self._start.get(self.COMPILE, 0)
    return False


# ----------------------------------------------------------------------------- models


def model_config(size: str, vocab: int, dtype: str, max_len: int) -> TransformerConfig:
  d, layers, heads, kv_heads, head_dim, mlp = config_lib.MODEL_SIZES[size]
  return TransformerConfig(vocab_size=vocab, embed_dim=d, num_layers=layers, num_heads=heads,
                           num_kv_heads=kv_heads, head_dim=head_dim, mlp_dim=mlp,
                           max_len=max_len, dtype=dtype)


def init_params(model: Transformer, seed: int = 0) -> Any:
  """Freshly initialized float32 parameters (unboxed), on the default device."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  init = jax.jit(lambda r: nn.unbox(model.init(r, tokens)["params"]))
  return init(jax.random.PRNGKey(seed))


def cast_params(params: Any, dtype: str) -> Any:
  """Floating parameters in `dtype` (one pass, before timing)."""
  dt = jnp.dtype(dtype)
  return jax.jit(lambda p: jax.tree.map(
      lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, p))(params)


def tree_bytes(tree: Any) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def kv_bytes_per_sequence(cfg: TransformerConfig, slots: int) -> int:
  """Bytes of keys + values one sequence holds in a cache of `slots` slots."""
  return 2 * cfg.num_layers * slots * cfg.num_kv_heads * cfg.head_dim * cfg.compute_dtype.itemsize


def random_tokens(seed: int, shape: tuple[int, ...], vocab: int) -> np.ndarray:
  """Token ids in [1, vocab) (0 is the pad id)."""
  return np.random.default_rng(seed).integers(1, vocab, size=shape, dtype=np.int32)


def perturbed(params: Any, seed: int = 1) -> Any:
  """Parameters of another initialization: the `--fault` hook's wrong model."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      x + jax.random.normal(k, x.shape, x.dtype) * (jnp.std(x) + 0.1)
      if jnp.issubdtype(x.dtype, jnp.floating) else x for k, x in zip(keys, leaves)])


# ----------------------------------------------------------------------------- checks

# Largest accepted shortfall of a chosen token's reference logit below the
# reference maximum: a near-tie the two computation orders may break either way.
TIE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25}


@functools.partial(jax.jit, static_argnums=(0, 4))
def reference_greedy(model: Transformer, params, buf: jax.Array, context_len: jax.Array,
                     num_new: int) -> jax.Array:
  """Uncached greedy decoding: the full forward is re-run for every new token.

  `buf` [B, W] holds each row's context first (right-padded); token t of row b is
  written at `context_len[b] + t`. Returns the buffer with `num_new` tokens added.
  """
  rows = jnp.arange(buf.shape[0])

  def body(t, buf):
    logits = model.apply({"params": params}, buf).logits  # [B, W, V], no cache
    pos = context_len + t - 1
    nxt = jnp.argmax(logits[rows, pos], axis=-1).astype(buf.dtype)
    return buf.at[rows, pos + 1].set(nxt)

  return jax.lax.fori_loop(0, num_new, body, buf)


@functools.partial(jax.jit, static_argnums=(0,))
def greedy_shortfall(model: Transformer, params, buf: jax.Array, context_len: jax.Array,
                     gen_len: jax.Array) -> jax.Array:
  """Per generated token: reference max logit minus the reference logit of that token.

  One uncached forward over context + generated tokens ([B, W], right-padded).
  By causality the logits at position p depend only on tokens <= p, so a zero
  shortfall everywhere means the uncached model re-run step by step would have
  produced exactly these tokens (up to exact ties). Entries past `gen_len` are 0.
  """
  logits = model.apply({"params": params}, buf).logits.astype(jnp.float32)  # [B, W, V]
  w = buf.shape[1]
  nxt = jnp.concatenate([buf[:, 1:], jnp.zeros_like(buf[:, :1])], axis=1)  # token after p
  chosen = jnp.take_along_axis(logits, nxt[..., None], axis=-1)[..., 0]
  short = jnp.max(logits, axis=-1) - chosen  # [B, W]: at p, the token at p + 1
  pos = jnp.arange(w)[None, :]
  gen = (pos >= context_len[:, None] - 1) & (pos < (context_len + gen_len)[:, None] - 1)
  return jnp.where(gen, short, 0.0)


def build_sequences(contexts: Sequence[Sequence[int]], generated: np.ndarray,
                    gen_len: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Right-padded [B, W] buffers of context + generated tokens, context and generated lengths."""
  generated = np.asarray(generated)
  b, n = generated.shape
  gen_len = np.full((b,), n, np.int32) if gen_len is None else np.asarray(gen_len, np.int32)
  ctx_len = np.array([len(c) for c in contexts], np.int32)
  buf = np.zeros((b, int(ctx_len.max()) + n), np.int32)
  for i, c in enumerate(contexts):
    buf[i, :len(c)] = c
    buf[i, len(c):len(c) + gen_len[i]] = generated[i, :gen_len[i]]
  return buf, ctx_len, gen_len


def check_greedy(model: Transformer, params, contexts: Sequence[Sequence[int]],
                 generated: np.ndarray, *, dtype: str, what: str, literal_rows: int = 4,
                 gen_len: np.ndarray | None = None) -> str:
  """Checks greedy tokens from a cached sampler against the uncached model.

  Two references, both from the uncached full forward (`cache=None`):
    * the check, every row: each generated token's reference logit must be within
      the dtype's tie tolerance of the reference maximum (`greedy_shortfall`);
    * reported beside it, the first `literal_rows` rows: greedy decoding that
      re-runs the full forward for each new token (`reference_greedy`), compared
      token for token. Given the check, a row can only differ from it after a
      near-tie (in bfloat16 these happen; in float32 all rows match in practice).

  Raises `CorrectnessError` on failure; returns a one-line summary.
  """
  tol = TIE_TOLERANCE[dtype]
  buf, ctx_len, gen_len = build_sequences(contexts, generated, gen_len)
  chunk = 16  # rows per uncached forward: its [rows, W, V] logits must fit in memory
  short = np.concatenate([np.asarray(greedy_shortfall(
      model, params, jnp.asarray(_pad_rows(buf[i:i + chunk], chunk)),
      jnp.asarray(_pad_rows(ctx_len[i:i + chunk], chunk, 1)),
      jnp.asarray(_pad_rows(gen_len[i:i + chunk], chunk))))[:len(buf[i:i + chunk])]
      for i in range(0, len(buf), chunk)])
  worst = float(short.max(initial=0.0))
  exact = int((short == 0).all(axis=1).sum())
  if worst > tol:
    bad = short > tol
    row = int(np.argmax(bad.any(axis=1)))
    pos = int(np.argmax(bad[row]))
    raise CorrectnessError(
        f"{what}: {int(bad.sum())} of {int(gen_len.sum())} tokens are not the uncached model's "
        f"argmax, the first in row {row} at token {pos - ctx_len[row] + 1} (its logit is "
        f"{short[row, pos]:.4g} below the max; worst {worst:.4g}; tolerance {tol} for {dtype})")
  k = min(literal_rows, len(buf))
  same = 0
  if k:
    ref_buf = buf[:k].copy()
    for i in range(k):
      ref_buf[i, ctx_len[i]:] = 0
    ref = np.asarray(reference_greedy(model, params, jnp.asarray(ref_buf),
                                      jnp.asarray(ctx_len[:k]), int(gen_len[:k].max())))
    # Rows can only differ at a near-tie (the check above bounds every token's
    # shortfall); after one, the two continuations are different texts.
    same = sum(np.array_equal(buf[i, ctx_len[i]:ctx_len[i] + gen_len[i]],
                              ref[i, ctx_len[i]:ctx_len[i] + gen_len[i]]) for i in range(k))
  out = (f"{what}: {len(buf)} rows x {int(gen_len.max())} tokens vs the uncached forward: "
         f"{exact} rows exact argmax, max shortfall {worst:.2g} (tol {tol})")
  if k:
    out += f"; greedy re-running the full forward per token: {same}/{k} rows identical"
  return out


def _pad_rows(x: np.ndarray, rows: int, fill: int = 0) -> np.ndarray:
  """Pads the leading axis to `rows` (one compile for every chunk)."""
  if len(x) == rows:
    return x
  pad = np.full((rows - len(x),) + x.shape[1:], fill, x.dtype)
  return np.concatenate([x, pad])
