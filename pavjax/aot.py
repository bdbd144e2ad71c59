"""Compile every step a job runs for a TPU slice, ahead of time, on any machine.

  python -m pavjax.aot --config=configs/pipeline.py:task=jsonl_math,size=pod,slice=v5p-16,\
hf=gemma2-9b,prover=gemma2-2b,verifier=gemma2-9b --topology=v5p:2x2x2

`--config` is any job or pipeline config, with `--config.<field>=...` overrides as
`pavjax.main` takes them; `--topology` a slice as `<generation>:<chips>` (v4:2x2x2,
v5e:4x4, v5p:2x2x2, v6e:8x8). With `jax[tpu]` installed (the `test` and `tpu`
extras), libtpu describes the slice's chips without any TPU present
(`jax.experimental.topologies`); each step is jitted with the config's mesh and
shardings over those chips, lowered for abstract inputs (`jax.ShapeDtypeStruct`:
no parameter is ever materialised) and compiled by the TPU compiler. XLA's buffer
assignment (`compiled.memory_analysis()`) then gives each chip's bytes:

  args      the program's inputs on one chip (parameters, optimizer state, batch)
  out       its outputs (a donated train state is written in place: `alias`)
  temp      scratch live while it runs (activations, logits chunks, the KV cache)
  resident  arrays the job keeps on the chip that this program does not take: e.g.
            during RL's update, the frozen reference policy and the prover's
            verifier; during its generation, the optimizer state. Measured the
            same way (the TPU layout of those arrays, padding included)
  total     args + out - alias + temp + resident, against the chip's HBM
            (v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB; `--hbm_gib` to reserve
            headroom)

The steps, each the job's own jitted function (shapes are the config's worst case:
prompts of `model.max_len - sample.max_new_tokens` tokens, responses of
`sample.max_new_tokens`, training sequences of `model.max_len`):

  sft, rft         train (`supervised.sft_train_step`, state donated), eval sampling
                   (the sampler's fused prefill + decode, `Sampler.generate`; with
                   `sample.batching=continuous`, `Sampler.generate_continuous`, as for
                   RFT's sampling, the rollouts' seeds and search's pool); RFT's
                   sampling of `rft.num_samples` per problem
  rollouts         seeds (the policy's `generate`, `n_cov` per problem), prefill
                   (`prefill_sequences` of `rollouts.seq_batch` seeds by the prover) and
                   fork (`fork_prefixes`: `rollouts.fork_batch` prefixes x `n_mc`); with
                   `rollouts.batching=continuous`, fork_continuous instead
                   (`Sampler.fork_continuous` over `continuous_blocks` stacked prefills)
  train_verifier   train (`verifier_train_step`), score (`verifiers.score`, evaluation)
  search           pool (`generate`, max(ns) per problem), score (each verifier), and
                   the step-wise beam at the widest `beam_ns`: beam_init (prefill),
                   beam_expand (decode of one step), beam_values, beam_prover_values,
                   beam_select
  rl               generate (`num_prompts` x `group_size`), score (the prover's
                   verifier), ref_logp (the reference policy's log-probs), update
                   (`rl_train_step`, state donated)
  pipeline         the steps of every stage it runs (`config.only` selects stages);
                   a step compiled for one stage is reused where another stage runs
                   the same program on the same model

Models: a config's `hf=<dir>` (`model.source='hf'`) and every checkpoint path
(`models.prover`, `models.verifier`, `rl.prover.verifier`, ...) may name a shape of
`pavjax.models.shapes` (gemma2-2b, gemma2-9b, gemma2-27b, llama3-8b, qwen2.5-7b) or a
checkpoint directory / `config.json` (weights are never read). In a pipeline, a path
an earlier stage fills in is that stage's model. pavjax's own presets (`size=...`) take
the task's vocabulary from `--vocab` (default: the task config's `vocab_size` or
`sp_vocab_size`).

Exit status: 0 when every step fits; 1 when one does not (each such step named on
stderr with its shortfall, also when the TPU compiler itself reports running out of
HBM); 2 for a bad config or flag.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import functools
import json
import math
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

if __name__ == "__main__":  # the command line compiles for a slice and runs nothing here
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import jax
from jax.experimental import topologies
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections
from ml_collections import config_flags

from pavjax import config_lib
from pavjax import jobs
from pavjax import models
from pavjax import sharding as shd
from pavjax import supervised
from pavjax import training
from pavjax import verifiers
from pavjax.bench import harness
from pavjax.jobs import pipeline
from pavjax.jobs import rl as rl_job
from pavjax.jobs import search as search_job
from pavjax.jobs import train_verifier
from pavjax.models import hf
from pavjax.models import shapes
from pavjax.sampling import Sampler, cached_lm
from pavjax.sampling import methods
from pavjax.sampling import sampler as sampler_lib
from pavjax.search import beam as beam_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

# Per-chip HBM (GiB) of each TPU generation.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# Cloud accelerator-type prefix of each generation (libtpu's TPU_ACCELERATOR_TYPE).
_CLOUD_NAME = {"v4": "v4", "v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}
GIB = 2**30
_NOT_COMPILED = "not compiled"

# Path fields of job configs that name a checkpoint (or data) another run made. AOT needs
# only their models, so empty ones are filled in for the jobs' own validation.
_PATH_FIELDS = ("policy.checkpoint", "prover.checkpoint", "verifiers.q", "verifiers.orm",
                "verifiers.prover", "rl.prover.verifier", "verifier.train_data")


class AotError(ValueError):
  """A flag AOT cannot act on (an unknown topology, libtpu missing)."""


# ------------------------------------------------------------------------------------------
# The slice
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # e.g. "v5e:4x4"
  generation: str  # v4 | v5e | v5p | v6e
  devices: tuple  # one per chip (v4 and v5p: megacore, one device per chip)
  hbm_bytes: int  # per device

  @property
  def num_chips(self) -> int:
    return len(self.devices)


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
  """'v5e:4x4' -> ('v5e', (4, 4)); AotError on anything else."""
  gen, _, dims = name.partition(":")
  if gen not in HBM_GIB or not re.fullmatch(r"\d+(x\d+){1,2}", dims):
    raise AotError(f"--topology={name!r}: expected <generation>:<chips>, e.g. v5e:4x4 or "
                   f"v5p:2x2x2, with a generation among {sorted(HBM_GIB)}")
  return gen, tuple(int(d) for d in dims.split("x"))


def _quiet_libtpu(generation: str, chips: int) -> None:
  """Environment for libtpu on a machine without TPUs (set only where unset).

  libtpu otherwise queries a cloud metadata server and warns that it cannot tell
  the accelerator type or the worker hostnames; neither matters for compiling. It
  also takes a machine-wide lock file that another process with libtpu loaded (any
  jax program started without JAX_PLATFORMS=cpu, once libtpu is installed) may
  hold; compiling touches no chip, so the lock is skipped.
  """
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  cores = chips * (2 if generation in ("v4", "v5p") else 1)  # Cloud counts their cores
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{_CLOUD_NAME[generation]}-{cores}")


def tpu_topology(name: str, hbm_gib: float = 0.0) -> Topology:
  """The devices of slice `name`, described by libtpu (no TPU needed)."""
  gen, dims = parse_topology(name)
  _quiet_libtpu(gen, math.prod(dims))
  try:
    # v4 and v5p chips have two TensorCores; jobs run them as one device (megacore).
    kwargs = {"chip_config_name": "megacore"} if gen == "v4" else {}
    topo = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
  except Exception as e:  # libtpu absent, or a shape it does not know
    raise AotError(f"--topology={name}: libtpu could not describe it ({type(e).__name__}: "
                   f"{e}); install it with `pip install -e .[tpu]` (or .[test])") from None
  hbm = int((hbm_gib or HBM_GIB[gen]) * GIB)
  return Topology(name, gen, tuple(topo.devices), hbm)


# ------------------------------------------------------------------------------------------
# Models of a job, by name, config.json or preset
# ------------------------------------------------------------------------------------------


def _is_hf_config(path: str) -> bool:
  """A named shape, or a config.json (or a dir with one) of a Hugging Face model."""
  if shapes.is_shape_name(path):
    return True
  file = os.path.join(path, "config.json") if os.path.isdir(path) else path
  if not (path and os.path.isfile(file) and file.endswith(".json")):
    return False
  try:
    with open(file, encoding="utf-8") as f:
      record = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(record, dict) and ("model_type" in record or "architectures" in record)


def task_vocab(config, override: int = 0) -> int:
  """Vocabulary of a pavjax preset model: `--vocab`, else what the task config says."""
  if override:
    return override
  task = config.get("task", {}) or {}
  for field in ("vocab_size", "sp_vocab_size"):
    if task.get(field):
      return int(task[field])
  return 256


def model_cfg(section, vocab: int):
  """The static model config of a `config.model` section (an HF path may be a shape name)."""
  if section.get("source", "") == "hf":
    try:
      cfg = hf.config_from_hf(shapes.config_dict(section.path), max_len=section.max_len,
                              dtype=section.dtype,
                              param_dtype=section.get("param_dtype", "float32"))
    except (ValueError, OSError) as e:
      raise config_lib.ConfigError("model.path", str(e)) from None
    return hf.with_run_choices(cfg, section)
  return models.model_config_from(section, vocab)


def checkpoint_section(path: str, job_model):
  """The `config.model` section of checkpoint `path` (or a named shape), run with the
  job's run fields; the job's own model when `path` says nothing about its model."""
  if not path:
    return job_model
  if _is_hf_config(path):
    section = ml_collections.ConfigDict(config_lib.hf_model_config().to_dict())
    section.path = path
    for name in config_lib.RUN_FIELDS:
      if name in job_model:
        section[name] = job_model[name]
    return section
  return config_lib.checkpoint_model_section(path, job_model)


def _with_run_fields(section, job_model):
  """A copy of model `section` run as the job runs its own (`config_lib.RUN_FIELDS`: cache
  length, dtypes, remat), as `runtime.load_model` runs a checkpoint's model."""
  section = copy.deepcopy(section)
  made = models.arch_of(section) == "made"
  with section.unlocked():
    for name in config_lib.RUN_FIELDS:
      if name in job_model and name in section and not (made and name == "max_len"):
        section[name] = job_model[name]
  return section


def _describe_model(section, cfg) -> str:
  name = section.get("path") if section.get("source", "") == "hf" else section.get("size")
  n = cfg.num_params()
  count = f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"
  return f"{os.path.basename(os.path.normpath(str(name)))} ({count})"


# ------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Step:
  """One program a job runs, ready to lower: `jitted.lower(*args, **static)`."""

  stage: str
  name: str
  model: str  # which model, for the table
  shapes: str  # the leading shapes, for the table
  jitted: Any  # a jax.jit-wrapped function
  args: tuple
  static: dict = dataclasses.field(default_factory=dict)
  held: tuple[str, ...] = ()  # the job's long-lived arrays among the arguments
  key: str = ""  # programs with equal keys are compiled once
  live: tuple[str, ...] | None = None  # the held arrays that exist then (None: all)


@dataclasses.dataclass
class Row:
  stage: str
  step: str
  model: str
  shapes: str
  args: int = 0
  out: int = 0
  alias: int = 0
  temp: int = 0
  resident: int = 0
  hbm: int = 0
  compile_s: float = 0.0
  error: str = ""  # the compiler's out-of-memory message, when it refused
  same_as: str = ""  # the stage/step whose compiled program this step reuses

  @property
  def total(self) -> int:
    return self.args + self.out - self.alias + self.temp + self.resident

  @property
  def fits(self) -> bool:
    return not self.error and self.total <= self.hbm

  @property
  def shortfall(self) -> int:
    if self.error:  # at least the compiler's own count, plus the resident arrays
      return _compiler_shortfall(self.error) + self.resident
    return max(self.total - self.hbm, 0)

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "total": self.total, "fits": self.fits,
            "shortfall": self.shortfall}


class _Job:
  """Abstract state and step builders for one job config on one mesh."""

  def __init__(self, stage: str, config, mesh, rules, vocab: int, models: dict):
    self.stage, self.config, self.mesh, self.rules = stage, config, mesh, rules
    self.vocab = vocab
    self.models = models  # path field -> model section (pipeline links); else resolved here
    self.held: dict[str, Any] = {}  # long-lived arrays: name -> abstract pytree
    self.steps: list[Step] = []

  # --- models and their arrays ---------------------------------------------------------

  def section(self, field: str | None):
    """The model section of the job (`None`) or of the checkpoint a path field names."""
    if field is None:
      return self.config.model
    if field in self.models:  # an earlier stage's model, run with this job's run fields
      return _with_run_fields(self.models[field], self.config.model)
    return checkpoint_section(_get(self.config, field), self.config.model)

  def model(self, field: str | None = None):
    section = self.section(field)
    cfg = model_cfg(section, self.vocab)
    return models.build_model(cfg), cfg, _describe_model(section, cfg)

  def train_state(self, model, wrap_tx=None):
    tx = training.make_optimizer(self.config.optim, self.config.train.num_steps)
    if wrap_tx is not None:
      tx = wrap_tx(tx)
    dp = shd.data_parallel_size(self.mesh)
    spec = training.train_state_spec(model, tx, self.config.seed, jnp.zeros((dp, 8), jnp.int32),
                                     self.mesh, self.rules)
    return spec, tx

  def optim_key(self) -> str:
    """What the optimizer of `train_state` is made from."""
    return json.dumps([self.config.optim.to_dict(), int(self.config.train.num_steps)],
                      sort_keys=True, default=str)

  def frozen_params(self, model):
    dp = shd.data_parallel_size(self.mesh)
    return training.params_spec(model, jnp.zeros((dp, 8), jnp.int32), self.mesh, self.rules)

  def hold_state(self, spec) -> tuple[str, ...]:
    """The train state, held as parameters + the rest (optimizer state, step, key).

    RL's separate value network (params {'policy', 'value'}) is held apart from
    the policy's parameters, which the sampling steps read. Returns the names.
    """
    params = spec.abstract.params
    self.held["optimizer state"] = spec.abstract.replace(params=None)
    if isinstance(params, dict) and set(params) == {"policy", "value"}:
      self.held["params"], self.held["value params"] = params["policy"], params["value"]
      return ("params", "value params", "optimizer state")
    self.held["params"] = params
    return ("params", "optimizer state")

  # --- abstract inputs ----------------------------------------------------------------

  def batch(self, shape, dtype="int32"):
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=shd.batch_sharding(
        self.mesh, len(shape)))

  def rows(self, shape, dtype="int32"):
    """Batch-sharded when the rows divide over the data-parallel devices, else replicated."""
    if shape[0] % shd.data_parallel_size(self.mesh) == 0:
      return self.batch(shape, dtype)
    return self.replicated(shape, dtype)

  def replicated(self, shape, dtype="int32"):
    return jax.ShapeDtypeStruct(tuple(shape), dtype,
                                sharding=NamedSharding(self.mesh, PartitionSpec()))

  def key(self):
    return self.replicated((2,), "uint32")

  def dp_round(self, rows: int) -> int:
    return shd.round_to_data_parallel(max(int(rows), 1), self.mesh)

  # --- lengths -----------------------------------------------------------------------

  @property
  def new_tokens(self) -> int:
    return int(self.config.sample.max_new_tokens)

  @property
  def prompt_len(self) -> int:
    """The longest prompt a job accepts: `model.max_len - sample.max_new_tokens`."""
    return max(int(self.config.model.max_len) - self.new_tokens, 1)

  # --- step makers ---------------------------------------------------------------------

  def add(self, name, model_desc, shapes, jitted, args, static=None, held=(), key=None):
    self.steps.append(Step(self.stage, name, model_desc, shapes, jitted, tuple(args),
                           dict(static or {}), tuple(held), key or ""))

  def train_step(self, name, fn, spec, batch, model_desc, cfg,
                 held=("params", "optimizer state")):
    jitted = jax.jit(fn, in_shardings=(spec.shardings, jax.tree.map(lambda x: x.sharding, batch)),
                     out_shardings=(spec.shardings, None), donate_argnums=(0,))
    first = next(iter(batch.values())).shape
    self.add(name, model_desc, f"B={first[0]} T={first[1]}", jitted, (spec.abstract, batch),
             held=held, key=_key(name, fn, (cfg, self.optim_key()), (spec.abstract, batch)))

  def generate(self, name, model, cfg, desc, params_name, *, rows, num_samples, prompt,
               new, method, responses=True, arena=0):
    """A sampling call of `rows` prompts x `num_samples`. `responses`: the job samples
    through `evaluation.sample_responses`, so `sample.batching=continuous` makes it
    `Sampler.generate_continuous` over `sample.continuous_blocks` calls' prompts.
    `arena` > 0: `generate_continuous` of the `rows` prompts through that many rows (RL)."""
    sampler = Sampler(cached_lm(model))
    sample = self.config.get("sample", {})
    continuous = responses and sample.get("batching", "static") == "continuous"
    if continuous or arena:
      blocks = max(int(sample.get("continuous_blocks", 1)), 1) if continuous else 1
      items = rows * blocks * num_samples
      args = (self.held[params_name], self.batch((rows * blocks, prompt)),
              self.batch((rows * blocks,)), self.replicated((), "int32"),
              self.replicated((items, 2), "uint32"))
      static = dict(num_samples=num_samples, max_new_tokens=new,
                    slots=arena or rows * num_samples, method=method, stop_tokens=(1,))
      shape = f"blocks={blocks}" if continuous else f"arena={arena}"
      self.add(name, desc, f"B={rows}x{num_samples} {shape} P={prompt} N={new}",
               sampler._generate_continuous, args, static, held=(params_name,),
               key=_key("generate_continuous", None, cfg, args, static))
      return
    args = (self.held[params_name], self.batch((rows, prompt)), self.batch((rows,)), self.key())
    static = dict(num_samples=num_samples, max_new_tokens=new, method=method, stop_tokens=(1,))
    self.add(name, desc, f"B={rows}x{num_samples} P={prompt} N={new}", sampler._generate, args,
             static, held=(params_name,), key=_key("generate", None, cfg, args, static))

  def score(self, name, model, cfg, desc, params_name, *, rows, width, prefixes):
    args = (model, self.held[params_name], self.batch((rows, width)),
            self.batch((rows, prefixes)))
    self.add(name, desc, f"B={rows} T={width}", verifiers.score, args, held=(params_name,),
             key=_key("score", None, cfg, args[1:]))


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return ""
    node = node[part]
  return node


def _key(name, fn, cfg, args, static=None) -> str:
  """What makes two steps the same program: function, model, shapes, shardings, statics."""
  leaves = [(tuple(x.shape), str(x.dtype), str(getattr(x, "sharding", None)))
            for x in jax.tree.leaves(args) if hasattr(x, "shape")]
  # A train step's optimizer and model are objects without a stable repr: the model is
  # `cfg` already, the optimizer is named by the config it is made from (`optim_key`).
  keywords = {k: v for k, v in (getattr(fn, "keywords", None) or {}).items()
              if k not in ("model", "tx")}
  fn_id = (getattr(fn, "func", fn), sorted(keywords.items(), key=lambda kv: kv[0]))
  return repr((name, repr(fn_id) if fn is not None else "", repr(cfg), leaves,
               sorted((static or {}).items(), key=lambda kv: kv[0])))


# --- per job ---------------------------------------------------------------------------


def _sft_steps(job: _Job, prefixes: int) -> None:
  del prefixes
  c = job.config
  model, cfg, desc = job.model()
  if c.job == "rft":  # samples from its init before the train state exists
    job.held["params"] = job.frozen_params(model)
    r = c.rft
    job.generate("rft_sample", model, cfg, desc, "params",
                 rows=job.dp_round(max(c.sample.batch_size // r.num_samples, 1)),
                 num_samples=r.num_samples, prompt=job.prompt_len, new=job.new_tokens,
                 method=methods.Temperature(r.temperature))
    job.steps[-1].live = ("params",)
  spec, tx = job.train_state(model)
  job.hold_state(spec)
  t = int(c.model.max_len)
  b = int(c.train.batch_size)
  batch = {"inputs": job.batch((b, t)), "targets": job.batch((b, t)),
           "mask": job.batch((b, t), jnp.float32)}
  fn = functools.partial(supervised.sft_train_step, model=model, tx=tx,
                         nonfinite=c.train.nonfinite,
                         logits_chunk=c.train.get("logits_chunk", 0))
  job.train_step("train", fn, spec, batch, desc, cfg)
  job.generate("eval_sample", model, cfg, desc, "params", rows=job.dp_round(c.sample.batch_size),
               num_samples=1, prompt=job.prompt_len, new=job.new_tokens,
               method=methods.from_config(c.sample))


def _rollouts_steps(job: _Job, prefixes: int) -> None:
  c, r = job.config, job.config.rollouts
  if c.policy.kind != "checkpoint":
    return  # a procedural policy runs on the host
  model, cfg, desc = job.model("policy.checkpoint")
  job.held["policy params"] = job.frozen_params(model)
  method = methods.Temperature(r.temperature)
  new = job.new_tokens
  job.generate("seeds", model, cfg, desc, "policy params",
               rows=job.dp_round(max(c.sample.batch_size // r.n_cov, 1)), num_samples=r.n_cov,
               prompt=job.prompt_len, new=new, method=method)
  if c.prover.kind == "procedural":
    return
  if c.prover.kind == "checkpoint":
    pmodel, pcfg, pdesc = job.model("prover.checkpoint")
    job.held["prover params"] = job.frozen_params(pmodel)
    pname = "prover params"
  else:
    pmodel, pcfg, pdesc, pname = model, cfg, desc, "policy params"
  width = sampler_lib.bucket_length(job.prompt_len + new,
                                    (*sampler_lib.DEFAULT_BUCKETS, job.prompt_len + new))
  seq_rows, fork_rows = job.dp_round(r.seq_batch), job.dp_round(r.fork_batch)
  sampler = sampler_lib.Sampler(sampler_lib.cached_lm(pmodel))
  slots = min(prefixes, width)
  args = (job.held[pname], job.batch((seq_rows, width)), job.batch((seq_rows,)),
          job.batch((seq_rows, slots)))
  static = {"cache_size": width + new}
  job.add("prefill", pdesc, f"B={seq_rows} W={width}", sampler.prefill_sequences,
          (args[0], args[1], args[2]), {**static, "logits_at": args[3]}, held=(pname,),
          key=_key("prefill_sequences", None, pcfg, args, static))
  # fork_prefixes continues from the prefill's cache and logits: their abstract values
  # (with the shardings the compiler chose) come from compiling the prefill first.
  if r.get("batching", "static") == "continuous":
    _continuous_fork_step(job, sampler, pname, pdesc, pcfg, seq_rows=seq_rows,
                          fork_rows=fork_rows, slots=slots, width=width, method=method)
    return
  fork_args = ("<prefill>", (fork_rows,), (fork_rows,), (fork_rows,))
  job.steps.append(Step(job.stage, "fork", pdesc, f"B={fork_rows}x{r.n_mc} N={new}",
                        sampler._fork, (job.held[pname], *fork_args, job.key()),
                        dict(width=width, num_samples=r.n_mc, max_new_tokens=new,
                             method=method, stop_tokens=(1,)), (pname,),
                        _key("fork", None, pcfg, (job.held[pname],),
                             dict(w=width, n=r.n_mc, new=new, rows=fork_rows,
                                  seq=seq_rows, slots=slots))))


def _continuous_fork_step(job: _Job, sampler, pname, pdesc, pcfg, *, seq_rows, fork_rows,
                          slots, width, method) -> None:
  """`rollouts.batching=continuous`: `Sampler.fork_continuous` over the caches of
  `continuous_blocks` prefilled blocks stacked into one, with the static path's decode
  rows (fork_batch x n_mc), at its largest prefix list (every logits slot of every
  sequence, padded to a power of two as the job pads it)."""
  r, new = job.config.rollouts, job.new_tokens
  group = max(1, int(r.get("continuous_blocks", 1)))
  padded = 1 << max(0, (group * seq_rows * slots - 1).bit_length())
  count, keys = job.replicated((), "int32"), job.replicated((padded * r.n_mc, 2), "uint32")
  static = dict(width=width, num_samples=r.n_mc, max_new_tokens=new,
                slots=fork_rows * r.n_mc, method=method, stop_tokens=(1,))
  job.steps.append(Step(
      job.stage, "fork_continuous", pdesc,
      f"B={fork_rows}x{r.n_mc} blocks={group} items={padded}x{r.n_mc} N={new}",
      sampler._continuous, (job.held[pname], "<prefill>", group, (padded,), (padded,),
                            (padded,), count, keys), static, (pname,),
      _key("fork_continuous", None, pcfg, (job.held[pname],),
           dict(w=width, n=r.n_mc, new=new, rows=fork_rows, seq=seq_rows, slots=slots,
                group=group))))


def _verifier_steps(job: _Job, prefixes: int) -> None:
  c, v = job.config, job.config.verifier
  model, cfg, desc = job.model()
  spec, tx = job.train_state(model)
  job.hold_state(spec)
  t, b = int(c.model.max_len), int(c.train.batch_size)
  batch = {"tokens": job.batch((b, t)), "positions": job.batch((b, prefixes)),
           "mask": job.batch((b, prefixes), jnp.bool_),
           "targets": job.batch((b, prefixes), jnp.float32)}
  fn = functools.partial(train_verifier.verifier_train_step, model=model, tx=tx, loss=v.loss,
                         balance=v.balance, nonfinite=c.train.nonfinite)
  job.train_step("train", fn, spec, batch, desc, cfg)
  job.score("eval_score", model, cfg, desc, "params", rows=job.dp_round(v.eval_batch_size),
            width=t, prefixes=prefixes)


def _search_steps(job: _Job, prefixes: int) -> None:
  c, s = job.config, job.config.search
  model, cfg, desc = job.model("policy.checkpoint")
  job.held["policy params"] = job.frozen_params(model)
  verifiers = {}
  for kind in ("q", "orm") + (("prover",) if s.prover == "verifier" else ()):
    vmodel, vcfg, vdesc = job.model(f"verifiers.{kind}")
    job.held[f"{kind} verifier params"] = job.frozen_params(vmodel)
    verifiers[kind] = (vmodel, vcfg, vdesc)
  width = job.prompt_len + job.new_tokens
  ns = config_lib.parse_list(s.ns, "search.ns")
  job.generate("pool", model, cfg, desc, "policy params",
               rows=job.dp_round(max(c.sample.batch_size // max(ns), 1)), num_samples=max(ns),
               prompt=job.prompt_len, new=job.new_tokens,
               method=methods.Temperature(c.sample.temperature))
  for kind, (vmodel, vcfg, vdesc) in verifiers.items():
    job.score(f"score_{kind}", vmodel, vcfg, vdesc, f"{kind} verifier params",
              rows=job.dp_round(s.score_batch), width=width, prefixes=prefixes)
  beam_ns = config_lib.parse_list(s.beam_ns, "search.beam_ns")
  methods_ = config_lib.parse_list(s.beam_methods, "search.beam_methods", str)
  if not beam_ns or not methods_:
    return
  n = max(beam_ns)
  scores = {search_job.BEAM_SCORES[m] for m in methods_}
  score = "pav" if "pav" in scores else "q"  # pav's steps are a superset of q's and orm's
  use_prover = score == "pav" and s.prover == "verifier"
  vmodel, vcfg, vdesc = verifiers["q"]
  problems = max(s.max_rows // (n * s.expansions), 1)
  if s.num_problems:
    problems = min(problems, int(s.num_problems))
  search = beam_lib.StepBeamSearch(
      cached_lm(model), search_job.value_fn(vmodel), beam_width=n, expansions=s.expansions,
      max_steps=s.max_steps, max_step_tokens=s.max_step_tokens, step_end_ids=(2,), eos_id=1,
      score=score, alpha=s.alpha, bok_k=s.bok_k,
      method=methods.Temperature(c.sample.temperature),
      prover_fn=search_job.value_fn(verifiers["prover"][0]) if use_prover else None)
  cache_size = job.prompt_len + s.max_steps * s.max_step_tokens
  held = ("policy params", "q verifier params") + (
      ("prover verifier params",) if use_prover else ())
  init_args = (job.held["policy params"], job.held["q verifier params"],
               job.rows((problems, job.prompt_len)), job.rows((problems,)),
               job.held["prover verifier params"] if use_prover else None)
  rows = problems * n
  cands = rows * s.expansions
  # Chained steps: the placeholders are filled from the earlier steps' compiled outputs.
  beam_key = lambda name: _key(name, None, (cfg, vcfg, use_prover), init_args,
                               dict(n=n, c=s.expansions, steps=s.max_steps,
                                    tokens=s.max_step_tokens))
  job.steps += [
      Step(job.stage, "beam_init", desc, f"B={problems}x{n} P={job.prompt_len}", search._init,
           init_args, {"cache_size": cache_size}, held, beam_key("beam_init")),
      Step(job.stage, "beam_expand", desc, f"B={cands} N={s.max_step_tokens}", search._expand,
           (job.held["policy params"], "<beam>", job.rows((cands, 2), "uint32")), {},
           ("policy params",),
           beam_key("beam_expand")),
      Step(job.stage, "beam_values", vdesc, f"B={cands} T={cache_size}", search._values,
           (job.held["q verifier params"], "<cand>"), {}, ("q verifier params",),
           beam_key("beam_values"))]
  if use_prover:
    job.steps.append(Step(job.stage, "beam_prover_values", verifiers["prover"][2],
                          f"B={cands} T={cache_size}", search._prover_values,
                          (job.held["prover verifier params"], "<cand>"), {},
                          ("prover verifier params",), beam_key("beam_prover_values")))
  job.steps.append(Step(job.stage, "beam_select", desc, f"B={cands}", search._select,
                        ("<select>",), {}, (), beam_key("beam_select")))


def _rl_steps(job: _Job, prefixes: int) -> None:
  del prefixes
  c, r = job.config, job.config.rl
  model, cfg, desc = job.model()
  separate = r.get("value_model", "head") == "separate"
  if separate:  # policy and value network in one state, an optimizer each
    spec, tx = job.train_state(models.PolicyAndValue(cfg), rl_job.per_network_optimizer)
  else:
    spec, tx = job.train_state(model)
  state_held = job.hold_state(spec)
  if r.kl_coef:
    job.held["reference params"] = job.frozen_params(model)
  scored = r.reward != "outcome" and r.prover.kind in ("bok", "verifier")
  if scored:
    vmodel, vcfg, vdesc = job.model("rl.prover.verifier")
    job.held["prover verifier params"] = job.frozen_params(vmodel)
  rows = int(r.num_prompts * r.group_size)
  width = job.prompt_len + job.new_tokens
  job.generate("generate", model, cfg, desc, "params", rows=int(r.num_prompts),
               num_samples=int(r.group_size), prompt=job.prompt_len, new=job.new_tokens,
               method=methods.Temperature(r.temperature), responses=False,
               arena=rl_job.continuous_arena(c, job.mesh))
  if scored:
    job.score("score", vmodel, vcfg, vdesc, "prover verifier params", rows=rows, width=width,
              prefixes=(r.max_steps or job.new_tokens) + 1)
  chunk = c.train.get("logits_chunk", 0)
  if r.kl_coef:
    logp = jax.jit(functools.partial(rl_job.token_logprobs, model, logits_chunk=chunk))
    args = (job.held["reference params"], job.batch((rows, width)))
    job.add("ref_logp", desc, f"B={rows} T={width}", logp, args, held=("reference params",),
            key=_key("ref_logp", None, (cfg, chunk), args))
  f32 = jnp.float32
  batch = {"tokens": job.batch((rows, width)), "mask": job.batch((rows, width), f32),
           "returns": job.batch((rows, width), f32), "outcome": job.batch((rows, 1), f32),
           "dense": job.batch((rows, 1), f32), "ref_logp": job.batch((rows, width), f32)}
  fn = functools.partial(rl_job.rl_train_step, model=model, tx=tx, nonfinite=c.train.nonfinite,
                         estimator=r.estimator, group_size=r.group_size, kl_coef=r.kl_coef,
                         value_coef=r.value_coef, log_ratio_clamp=r.log_ratio_clamp,
                         logits_chunk=chunk, separate_value=separate)
  job.train_step("update", fn, spec, batch, desc, cfg, held=state_held)


BUILDERS: dict[str, Callable[[_Job, int], None]] = {
    "sft": _sft_steps, "rft": _sft_steps, "rollouts": _rollouts_steps,
    "train_verifier": _verifier_steps, "search": _search_steps, "rl": _rl_steps,
}


# ------------------------------------------------------------------------------------------
# Configs -> jobs
# ------------------------------------------------------------------------------------------


def _validation_copy(config, vocab: int):
  """`config` as its job's `validate` can read it without the files a run needs: HF
  models (possibly named shapes) as the equivalent plain sizes, no tokenizer directory,
  and placeholder paths where the job only checks a path is set."""
  c = copy.deepcopy(config)
  with c.unlocked():
    if c.model.get("source", "") == "hf":
      cfg = model_cfg(c.model, vocab)
      c.model = ml_collections.ConfigDict({
          "size": "aot", "embed_dim": cfg.embed_dim, "num_layers": cfg.num_layers,
          "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads,
          "head_dim": cfg.head_dim, "mlp_dim": cfg.mlp_dim, "max_len": cfg.max_len,
          "dtype": cfg.dtype, "remat": cfg.remat})
    if "task" in c and c.task.get("hf_tokenizer", ""):
      c.task.hf_tokenizer = ""
    for field in _PATH_FIELDS:
      *parents, leaf = field.split(".")
      node = c
      for p in parents:
        node = node[p] if p in node else None
        if node is None:
          break
      if node is not None and leaf in node and not node[leaf]:
        node[leaf] = "<aot>"
  return c


def fill_lengths(config, prompt_len: int, response_len: int) -> None:
  """Sets the lengths a job takes from its task's data (fields at 0), in place.

  Without data the task cannot say how long its prompts and responses are:
  `sample.max_new_tokens` becomes `task.max_response_len`, else `response_len`;
  `model.max_len` becomes `task.max_prompt_len` (else `prompt_len`) + that.
  """
  task = config.get("task", None) or {}
  prompt = int(task.get("max_prompt_len", 0) or prompt_len)
  if "sample" in config and not config.sample.max_new_tokens:
    config.sample.max_new_tokens = int(task.get("max_response_len", 0) or response_len)
  new = int(config.sample.max_new_tokens) if "sample" in config else response_len
  if not config.model.max_len:
    config.model.max_len = prompt + new


def _validate(config, num_devices: int, vocab: int) -> None:
  jobs.validate_job(_validation_copy(config, vocab), num_devices)


def jobs_of(config, mesh_devices: Sequence[Any], vocab: int, lengths: tuple[int, int] = (512, 1024)
            ) -> list[tuple[str, Any, dict]]:
  """(stage name, stage config, path field -> model section) of every job `config` runs.

  A pipeline's stages read earlier stages' checkpoints; the model at such a path is the
  model that stage trains (the policy, or `models.verifier` for the verifiers).
  Lengths left to the data are filled in (`fill_lengths`) on copies.
  """
  if config.job != "pipeline":
    config = copy.deepcopy(config)
    with config.unlocked():
      fill_lengths(config, *lengths)
    _validate(config, len(mesh_devices), vocab)
    return [(config.job, config, {})]
  only = [s for s in str(config.get("only", "")).split(",") if s]
  resolved = pipeline.resolve(config, pipeline.WORKDIR_PLACEHOLDER)
  trained: dict[str, Any] = {}  # stage -> the model its checkpoints hold
  out = []
  for stage in pipeline.stages(config):
    cfg = resolved[stage.name][0]
    with cfg.unlocked():
      fill_lengths(cfg, *lengths)
      if config.models.verifier and stage.name in pipeline.VERIFIER_STAGES:
        cfg.model = checkpoint_section(config.models.verifier, cfg.model)
    links = {field: trained[up] for field, up, sub in stage.links
             if sub == pipeline.CKPT and up in trained}
    if "model" in cfg:
      trained[stage.name] = cfg.model
    if only and stage.name not in only:
      continue
    try:
      _validate(cfg, len(mesh_devices), vocab)
    except config_lib.ConfigError as e:
      raise config_lib.prefixed(f"stages.{stage.name}", e) from None
    out.append((stage.name, cfg, links))
  return out


# ------------------------------------------------------------------------------------------
# Compiling
# ------------------------------------------------------------------------------------------


def _abstract_outputs(lowered, compiled):
  return jax.tree.map(lambda info, s: jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=s),
                      lowered.out_info, compiled.output_shardings)


class Compiler:
  """Compiles steps for one mesh, once per distinct program, and measures held arrays."""

  def __init__(self, mesh, rules, hbm: int, log=print):
    self.mesh, self.rules, self.hbm, self.log = mesh, rules, hbm, log
    self._stats: dict[str, tuple] = {}
    self._first: dict[str, str] = {}  # program key -> the stage/step that compiled it
    self._layout: dict[str, int] = {}

  def layout_bytes(self, tree) -> int:
    """Bytes one device holds of `tree` in the TPU layout (padding included).

    Each distinct leaf (shape, dtype, sharding) is compiled once as the argument of an
    empty program, whose argument size is that leaf's padded size on one chip; a leaf
    the compiler will not place (larger than the chip) counts its unpadded shard.
    """
    total = 0
    for x in jax.tree.leaves(tree):
      if not hasattr(x, "shape"):
        continue
      key = repr((tuple(x.shape), str(x.dtype), str(x.sharding)))
      if key not in self._layout:
        try:
          with _no_cache_writes():
            compiled = jax.jit(lambda a: None, keep_unused=True).lower(x).compile()
          self._layout[key] = int(compiled.memory_analysis().argument_size_in_bytes)
        except Exception as e:  # pylint: disable=broad-except
          if not _out_of_memory(str(e)):
            raise
          shard = x.sharding.shard_shape(tuple(x.shape))
          self._layout[key] = math.prod(shard) * x.dtype.itemsize
      total += self._layout[key]
    return total

  def compile(self, step: Step, args: tuple) -> tuple[dict, Any, str, str]:
    """(memory stats, abstract outputs, compiler error, the stage/step compiled first) of
    `step` at `args`; the last is '' when this call compiled it."""
    key = step.key or None
    if key and key in self._stats:
      stats, outputs, error = self._stats[key]
      return {**stats, "compile_s": 0.0}, outputs, error, self._first[key]
    t0 = time.time()
    error, outputs = "", None
    stats = {"args": 0, "out": 0, "alias": 0, "temp": 0}
    try:
      with _no_cache_writes(), shd.activate(self.mesh, self.rules):
        lowered = step.jitted.lower(*args, **step.static)
        compiled = lowered.compile()
      m = compiled.memory_analysis()
      stats = {"args": int(m.argument_size_in_bytes), "out": int(m.output_size_in_bytes),
               "alias": int(m.alias_size_in_bytes), "temp": int(m.temp_size_in_bytes)}
      outputs = _abstract_outputs(lowered, compiled)
    except Exception as e:  # XLA's out-of-memory refusal is a result, not a crash
      text = str(e)
      if not _out_of_memory(text):
        raise
      error = " ".join(text.split())[:400]
    stats["compile_s"] = time.time() - t0
    if key:
      self._stats[key] = (stats, outputs, error)
      self._first[key] = f"{step.stage}/{step.name}"
    return stats, outputs, error, ""


@contextlib.contextmanager
def _no_cache_writes():
  """Keeps TPU programs out of a persistent compilation cache (the test suite keeps
  one): this process has no TPU client to load them back, and every later read of
  such an entry would fail with a warning."""
  name = "jax_persistent_cache_min_compile_time_secs"
  before = getattr(jax.config, name)
  jax.config.update(name, 1e12)
  try:
    yield
  finally:
    jax.config.update(name, before)


def _out_of_memory(text: str) -> bool:
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit])


def _compiler_shortfall(text: str) -> int:
  """How far past the HBM the TPU compiler's out-of-memory message says a program goes
  (its own accounting; 0 when the message gives no numbers)."""
  m = re.search(r"Exceeded hbm capacity by ([\d.]+)([KMG]?)", text)
  if m:
    return _bytes(*m.groups())
  m = re.search(r"\(([\d.]+)([KMG]?)\) exceeds available HBM \(([\d.]+)([KMG]?)\)", text)
  if m:
    return max(_bytes(m.group(1), m.group(2)) - _bytes(m.group(3), m.group(4)), 0)
  return 0


def _resolve_args(step: Step, previous: dict[str, Any]) -> tuple | None:
  """Fills the placeholders of chained steps from earlier outputs (None: unavailable)."""
  args = list(step.args)
  if step.name == "fork":
    pre = previous.get("prefill")
    if pre is None:
      return None
    cache, logits = pre
    params, rows, ends, picks, key = args[0], args[2], args[3], args[4], args[5]
    mk = lambda shape: _like(cache.start, shape)
    return (params, cache, logits, mk(rows), mk(ends), mk(picks), key)
  if step.name == "fork_continuous":
    pre = previous.get("prefill")
    if pre is None:
      return None
    params, group, count, keys = args[0], args[2], args[6], args[7]
    # The blocks' caches and logits stacked as the job stacks them, laid out like one
    # block's (the same partition of a longer batch axis).
    stacked = jax.eval_shape(
        lambda c, lg: (models.KVCache.concatenate([c] * group),
                       jnp.concatenate([lg] * group)), *pre)
    stacked = jax.tree.map(lambda s, ref: _like(ref, s.shape, s.dtype), stacked, pre)
    rows, ends, picks = (_like(count, shape) for shape in args[3:6])
    return (params, *stacked, rows, ends, picks, count, keys)
  if step.name == "beam_expand":
    beam = previous.get("beam_init")
    return None if beam is None else (args[0], beam, args[2])
  if step.name in ("beam_values", "beam_prover_values"):
    out = previous.get("beam_expand")
    if out is None:
      return None
    cand = out[0]
    return (args[0], cand.hist, cand.cache.start, cand.cache.index)
  if step.name == "beam_select":
    out, q = previous.get("beam_expand"), previous.get("beam_values")
    if out is None or q is None:
      return None
    cand = out[0]
    qmu = previous.get("beam_prover_values")
    cand = cand.replace(q=q, qmu=qmu if cand.qmu is not None else None)
    keep = _like(q, q.shape, jnp.bool_)
    return (cand, q, keep)
  return tuple(args)


def _like(ref, shape, dtype="int32"):
  """An abstract array of `shape` laid out like `ref` (batch-sharded or replicated)."""
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=ref.sharding)


def plan(config, topology: Topology, *, vocab: int = 0, prefixes: int = 16,
         steps: Sequence[str] = (), lengths: tuple[int, int] = (512, 1024)
         ) -> tuple[Any, list[_Job]]:
  """The mesh over the slice and every job's steps (nothing compiled yet)."""
  vocab = task_vocab(config, vocab)
  out, meshes = [], {}
  for stage, cfg, links in jobs_of(config, topology.devices, vocab, lengths):
    if cfg.job not in BUILDERS:
      raise config_lib.ConfigError("job", f"pavjax.aot does not know job {cfg.job!r}")
    key = json.dumps(dict(cfg.mesh), sort_keys=True)
    if key not in meshes:
      try:
        meshes[key] = shd.make_mesh(dict(cfg.mesh), devices=topology.devices)
      except ValueError as e:
        raise config_lib.ConfigError("mesh", str(e)) from None
    job = _Job(stage, cfg, meshes[key], shd.rules_from_config(cfg.rules), vocab, links)
    try:
      BUILDERS[cfg.job](job, prefixes)
    except ValueError as e:  # a dimension the mesh does not divide, named by its path
      raise config_lib.ConfigError(f"stages.{stage}" if config.job == "pipeline" else "mesh",
                                   str(e)) from None
    if steps:
      job.steps = [s for s in job.steps
                   if any(fnmatch.fnmatch(f"{s.stage}/{s.name}", p) for p in steps)]
    out.append(job)
  return meshes, out


def run(config, topology: Topology, *, vocab: int = 0, prefixes: int = 16,
        steps: Sequence[str] = (), lengths: tuple[int, int] = (512, 1024),
        log: Callable[[str], None] = print) -> list[Row]:
  """Compiles every step of `config` for `topology`; one Row per step."""
  _, jobs = plan(config, topology, vocab=vocab, prefixes=prefixes, lengths=lengths)
  compilers: dict[int, Compiler] = {}
  rows = []
  for job in jobs:
    comp = compilers.setdefault(id(job.mesh), Compiler(job.mesh, job.rules, topology.hbm_bytes))
    held_bytes = {name: comp.layout_bytes(tree) for name, tree in job.held.items()}
    previous: dict[str, Any] = {}
    for step in job.steps:
      wanted = not steps or any(fnmatch.fnmatch(f"{step.stage}/{step.name}", p) for p in steps)
      # A chained step needs its predecessors' outputs: those are compiled even when
      # only the later step was asked for (and then not reported).
      needed = wanted or any(fnmatch.fnmatch(f"{s.stage}/{s.name}", p) for p in steps
                             for s in job.steps[job.steps.index(step) + 1:]
                             if _chains(step.name, s.name))
      if not needed:
        continue
      args = _resolve_args(step, previous)
      if args is None:  # an earlier step it continues from did not compile
        if wanted:
          rows.append(Row(step.stage, step.name, step.model,
                          step.shapes, hbm=topology.hbm_bytes,
                          error=f"{_NOT_COMPILED}: a step it continues from did not compile"))
        continue
      stats, outputs, error, same_as = comp.compile(step, args)
      previous[step.name] = outputs
      if not wanted:
        continue
      resident = sum(b for name, b in held_bytes.items() if name not in step.held
                     and (step.live is None or name in step.live))
      row = Row(step.stage, step.name, step.model, step.shapes, stats["args"], stats["out"],
                stats["alias"], stats["temp"], resident, topology.hbm_bytes,
                stats["compile_s"], error, same_as)
      how = f"as {same_as}" if same_as else f"compiled in {row.compile_s:.1f} s"
      need = "the TPU compiler ran out of HBM" if error else (
          f"{_gib(row.total)} of {_gib(row.hbm)}{'' if row.fits else ' (does not fit)'}")
      log(f"pavjax.aot: {row.stage}/{row.step}: {need}, {how}")
      rows.append(row)
  return rows


def _chains(earlier: str, later: str) -> bool:
  chains = {"prefill": ("fork", "fork_continuous"), "beam_init": ("beam_expand", "beam_values",
                                                "beam_prover_values", "beam_select"),
            "beam_expand": ("beam_values", "beam_prover_values", "beam_select"),
            "beam_values": ("beam_select",), "beam_prover_values": ("beam_select",)}
  return later in chains.get(earlier, ())


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------


def _gib(n: int) -> str:
  """Bytes as GiB (two decimals), or MiB below a tenth of a GiB."""
  return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def table(rows: Sequence[Row], topology: Topology) -> str:
  headers = ["stage", "step", "model", "shapes", "args", "out", "temp", "resident", "total",
             "HBM", "fits", "compile s"]
  body = []
  for r in rows:
    if r.fits:
      fits = "yes"
    elif r.error.startswith(_NOT_COMPILED):
      fits = "no: not compiled"
    elif r.error:
      fits = f"no: >= {_gib(r.shortfall)} short (compiler)" if r.shortfall else "no (compiler)"
    else:
      fits = f"no: {_gib(r.shortfall)} short"
    if r.error:  # the compiler refused: only the resident arrays and the shortfall are known
      sizes = ["-", "-", "-", _gib(r.resident),
               f">= {_gib(r.hbm + r.shortfall)}" if r.shortfall else "-"]
    else:
      sizes = [_gib(r.args), _gib(r.out - r.alias), _gib(r.temp), _gib(r.resident),
               _gib(r.total)]
    body.append([r.stage, r.step, r.model, r.shapes, *sizes, _gib(r.hbm), fits,
                 f"= {r.same_as}" if r.same_as else f"{r.compile_s:.1f}"])
  title = (f"{topology.name}: {topology.num_chips} chips, {_gib(topology.hbm_bytes)} HBM each; "
           "bytes per chip")
  return f"### {title}\n\n" + harness.format_table(headers, body)


def failures(rows: Sequence[Row], topology: Topology) -> list[str]:
  """One line per step that does not fit."""
  out = []
  for r in rows:
    if r.fits:
      continue
    if r.error.startswith(_NOT_COMPILED):
      out.append(f"{r.stage}/{r.step} was {r.error} on {topology.name}")
    elif r.error:
      short = f", at least {_gib(r.shortfall)} short" if r.shortfall else ""
      out.append(f"{r.stage}/{r.step} does not fit on {topology.name}: the TPU compiler ran "
                 f"out of HBM{short} ({r.error})")
    else:
      out.append(f"{r.stage}/{r.step} does not fit on {topology.name}: needs "
                 f"{_gib(r.total)} per chip of {_gib(r.hbm)} HBM, {_gib(r.shortfall)} short")
  return out


def _flags(argv: Sequence[str]):
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Job or pipeline config (with :variants).",
                                  flag_values=fv, lock_config=True, sys_argv=list(argv))
  flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:4x4 or v5p:2x2x2.", flag_values=fv)
  flags.DEFINE_float("hbm_gib", 0.0, "HBM per chip to compare with (0 = the chip's).",
                     flag_values=fv)
  flags.DEFINE_integer("vocab", 0, "Vocabulary of pavjax preset models (0 = the task's).",
                       flag_values=fv)
  flags.DEFINE_integer("prefixes", 16, "Prefix ends per sequence (verifier labels, fork "
                       "logits).", flag_values=fv)
  flags.DEFINE_integer("prompt_len", 512, "Prompt tokens where the config leaves them to the "
                       "task's data (lengths at 0).", flag_values=fv)
  flags.DEFINE_integer("response_len", 1024, "Response tokens where the config leaves them to "
                       "the task's data.", flag_values=fv)
  flags.DEFINE_list("steps", [], "Only these steps: stage/step patterns, e.g. 'rl*/update'.",
                    flag_values=fv)
  flags.DEFINE_string("json", "", "Also write the rows to this JSON file.", flag_values=fv)
  fv(list(argv))
  return fv


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status (0 fits, 1 does not, 2 bad config/flags)."""
  argv = list(sys.argv if argv is None else argv)
  try:
    fv = _flags(argv)
    if fv.config is None or not fv.topology:
      raise AotError("--config and --topology are required")
    topology = tpu_topology(fv.topology, fv.hbm_gib)
    log = lambda m: print(m, file=sys.stderr, flush=True)
    rows = run(fv.config, topology, vocab=fv.vocab, prefixes=fv.prefixes, steps=fv.steps,
               lengths=(fv.prompt_len, fv.response_len), log=log)
  except config_lib.ConfigError as e:
    print(f"pavjax.aot: bad config: {e}", file=sys.stderr)
    return 2
  except (AotError, flags.Error, ValueError) as e:
    print(f"pavjax.aot: bad flags: {e}", file=sys.stderr)
    return 2
  print(table(rows, topology))
  if fv.json:
    with open(fv.json, "w", encoding="utf-8") as f:
      json.dump({"topology": topology.name, "chips": topology.num_chips,
                 "hbm_bytes": topology.hbm_bytes, "rows": [r.to_dict() for r in rows]}, f,
                indent=2)
  bad = failures(rows, topology)
  for line in bad:
    print(f"pavjax.aot: {line}", file=sys.stderr)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
