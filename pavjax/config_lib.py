"""Shared config pieces (model sizes, mesh, optimizer, train loop) and validation.

Files in `configs/` compose these into one `get_config(arg)` per job. `arg` is a
comma-separated list of `key=value` variants, e.g. `configs/sft.py:task=arith,size=tiny`.
`validate` runs before anything compiles and names the offending field.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Mapping

import ml_collections

from pavjax import models
from pavjax import sharding as shd
from pavjax import tasks
from pavjax import training
from pavjax.tasks import arith
from pavjax.tasks import hf_tokenizer

# name -> (embed_dim, num_layers, num_heads, num_kv_heads, head_dim, mlp_dim)
MODEL_SIZES = {
    "test": (64, 2, 4, 2, 16, 192),  # ~100k params: unit tests
    "tiny": (128, 4, 4, 2, 32, 384),  # ~0.8M: CPU runs in minutes
    "small": (256, 6, 8, 4, 32, 768),  # ~4.7M: one GPU, quick
    "25m": (512, 8, 8, 4, 64, 1536),
    "125m": (768, 12, 12, 4, 64, 3072),
    "350m": (1024, 24, 16, 8, 64, 2816),
    "1b": (2048, 20, 16, 8, 128, 5632),
}

# name -> hidden widths of the MADE-style masked MLP (pavjax.models.made). A size
# variant rather than a model.arch field on every preset: transformer configs keep
# exactly their old fields, so config hashes of existing runs (rollout manifests,
# search caches, pipeline stages) do not change.
MADE_SIZES = {
    "made": (128, 128, 128),  # the paper's didactic policy, "3x128" (Sec. 3.3, App. B)
}


# Per task: (model.max_len, sample.max_new_tokens) that fit its prompts and responses.
# FROM_TASK (0) follows the task built from the data (`resolve_task_lengths`).
TASK_LENGTHS = {
    "toy": (32, 16),
    "planted": (16, 10),
    "arith": (128, 64),
    # The user's data decides: jsonl_math derives its prompt and response limits from
    # the longest tokenized prompt and reference (pavjax.tasks.jsonl_math), the job
    # follows them.
    "jsonl_math": (0, 0),
}
FROM_TASK = 0  # a length field at 0 is filled in from the task (and so from the data)
# The length fields a job resolves from its task; `task.*` exist for text tasks only.
LENGTH_FIELDS = ("task.max_prompt_len", "task.max_response_len", "sample.max_new_tokens",
                 "model.max_len")
LENGTHS_FILE = "task_lengths.json"  # a job's resolved lengths, in its workdir


class ConfigError(ValueError):
  """A config value is invalid; the message starts with the field's dotted name."""

  def __init__(self, field: str, message: str | None = None):
    if message is None:  # re-raised by config_flags with the message alone
      super().__init__(field)
      self.field = None
    else:
      super().__init__(f"config.{field}: {message}")
      self.field = field
    self.message = message


def parse_arg(arg: str | None, defaults: dict[str, str]) -> dict[str, str]:
  """Parses `key=value,key=value` variants over `defaults`; unknown keys fail."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ConfigError("<arg>", f"variant {item!r} is not key=value (known: {sorted(out)})")
    key, value = item.split("=", 1)
    if key not in out:
      raise ConfigError("<arg>", f"unknown variant {key!r}; known: {sorted(out)}")
    out[key] = value
  return out


def task_config(name: str, difficulty: str = "") -> ml_collections.ConfigDict:
  """The task's default fields, then a named difficulty's overrides ('' = none).

  Difficulties are arith's (`pavjax.tasks.arith.DIFFICULTIES`); every stage config
  takes them as a variant (`configs/rl.py:task=arith,difficulty=easy`), so the
  stages of one experiment cannot disagree about the problems.
  """
  cfg = tasks.default_task_config(name)
  if not difficulty:
    return cfg
  if name != "arith":
    raise ConfigError("difficulty", f"only task=arith has difficulties, not {name!r}")
  try:
    cfg.update(arith.difficulty(difficulty))
  except ValueError as e:
    raise ConfigError("difficulty", str(e)) from None
  return cfg


def model_config(size: str) -> ml_collections.ConfigDict:
  """Model hyper-parameters for a named size (a MADE_SIZES name gives the MADE, `hf` a
  Hugging Face checkpoint whose `config.json` gives the sizes)."""
  if size in MADE_SIZES:
    return made_model_config(size)
  if size == HF_SIZE:
    return hf_model_config()
  if size not in MODEL_SIZES:
    raise ConfigError("model.size", f"unknown size {size!r}; known: "
                      f"{sorted(MODEL_SIZES) + sorted(MADE_SIZES) + [HF_SIZE]}")
  d, layers, heads, kv_heads, head_dim, mlp = MODEL_SIZES[size]
  cfg = ml_collections.ConfigDict()
  cfg.size = size  # the preset these numbers came from (informational)
  cfg.embed_dim = d  # residual width D
  cfg.num_layers = layers  # transformer blocks (scanned)
  cfg.num_heads = heads  # query heads N
  cfg.num_kv_heads = kv_heads  # key/value heads K (grouped-query attention; N % K == 0)
  cfg.head_dim = head_dim  # per-head width H (even, for RoPE)
  cfg.mlp_dim = mlp  # SwiGLU hidden width F
  cfg.max_len = 256  # longest sequence (prompt + response) the jobs build; 0 = from the task
  cfg.rope_base = 10_000.0  # RoPE wavelength base
  cfg.tie_embeddings = True  # share the input embedding with the LM head
  cfg.dtype = "float32"  # compute dtype: float32 or bfloat16 (params stay float32)
  cfg.remat = False  # rematerialize each block in the backward pass (saves memory)
  cfg.attn_block = ATTN_BLOCK  # decode reads the filled cache slots in blocks of this; 0 = all
  cfg.query_chunk = QUERY_CHUNK  # attention over longer inputs runs this many queries at a time
  return cfg


HF_SIZE = "hf"
# Decode attention reads the filled cache slots rounded up to a multiple of this many
# (one compiled branch per multiple); 0 reads every slot. The same numbers either way.
ATTN_BLOCK = 128
# Attention over more queries than this (a prefill, a long training or scoring input)
# runs this many at a time, each chunk reading keys only up to its last query; 0 = one
# chunk. The same numbers either way (up to float rounding).
QUERY_CHUNK = 256


def hf_model_config() -> ml_collections.ConfigDict:
  """A pretrained checkpoint's model (`size=hf`): set `model.path` to its directory."""
  cfg = ml_collections.ConfigDict()
  cfg.size = HF_SIZE  # sizes, family and vocabulary come from <path>/config.json
  cfg.source = "hf"  # the model is a Hugging Face checkpoint's architecture
  cfg.path = ""  # the checkpoint directory (config.json + model.safetensors[.index.json])
  cfg.max_len = 256  # longest sequence (prompt + response) the jobs build; 0 = from the task
  cfg.dtype = "float32"  # compute dtype: float32 or bfloat16
  cfg.param_dtype = "float32"  # parameter storage: float32 or bfloat16 (half the memory)
  cfg.remat = False  # rematerialize each block in the backward pass (saves memory)
  cfg.attn_block = ATTN_BLOCK  # decode reads the filled cache slots in blocks of this; 0 = all
  cfg.query_chunk = QUERY_CHUNK  # attention over longer inputs runs this many queries at a time
  return cfg


def use_pretrained(config: ml_collections.ConfigDict, path: str) -> None:
  """Points a job config at a Hugging Face checkpoint directory (the `hf=<dir>` variant).

  The model becomes the checkpoint's architecture (`size=hf`, keeping the job's
  `max_len`), training and sampling start from its weights (`init_from`, and a
  rollouts/search job's `policy.checkpoint`), and a text task (arith, jsonl_math)
  uses its tokenizer (`task.hf_tokenizer`). Each is an ordinary field afterwards:
  `--config.init_from=''` trains the architecture from random weights. A task with
  a fixed vocabulary of its own (toy, planted) keeps it; its ids must fit the
  checkpoint's embedding. '' leaves the config as it is.
  """
  if not path:
    return
  max_len = config.model.max_len
  config.model = hf_model_config()
  config.model.path = path
  config.model.max_len = max_len
  if "policy" in config and "checkpoint" in config.policy:  # rollouts, search
    config.policy.checkpoint = path
  else:  # the training jobs
    config.init_from = path
  if "hf_tokenizer" in config.task:
    config.task.hf_tokenizer = path


# `config.model` fields that say how a job runs a model, not what the model is: a
# checkpoint's model, run by a job, takes them from the job.
RUN_FIELDS = ("max_len", "dtype", "param_dtype", "remat", "attn_block", "query_chunk")


def is_hf_checkpoint(path: str) -> bool:
  """A Hugging Face checkpoint directory (config.json beside its weights), not orbax's."""
  names = set(os.listdir(path)) if os.path.isdir(path) else set()
  return "config.json" in names and bool(
      names & {"model.safetensors", "model.safetensors.index.json"}
      or any(n.endswith((".bin", ".pt", ".pth")) for n in names))


def checkpoint_model_section(path: str, job_model: ml_collections.ConfigDict
                             ) -> ml_collections.ConfigDict:
  """The `config.model` section of the model that checkpoint `path` holds.

  A Hugging Face directory describes itself (its config.json); a pavjax
  workdir's `checkpoints/` has the run's `config.json` beside it. A checkpoint with
  neither (made by hand) is taken to hold `job_model`. The job's run fields
  (`RUN_FIELDS`: cache length, dtypes, remat, attention blocks) replace the
  checkpoint's where it has them, except the MADE's `max_len`, which is the width of
  its input layer.
  """
  if is_hf_checkpoint(path):
    section = hf_model_config()
    section.path = path
  else:
    record = os.path.join(os.path.dirname(os.path.normpath(path)), "config.json")
    try:
      with open(record, encoding="utf-8") as f:
        recorded = json.load(f).get("model")
    except (OSError, ValueError, AttributeError):
      recorded = None
    if not isinstance(recorded, dict):
      return job_model
    section = ml_collections.ConfigDict(recorded)
  made = models.arch_of(section) == "made"
  with section.unlocked():
    for name in RUN_FIELDS:
      if name in job_model and name in section and not (made and name == "max_len"):
        section[name] = job_model[name]
  return section


def use_checkpoint_model(config: ml_collections.ConfigDict, path: str) -> None:
  """A training job starts from checkpoint `path`, in the checkpoint's architecture.

  `model` becomes the checkpoint's (`checkpoint_model_section`, keeping the job's run
  fields) and `init_from` the path. The pipeline uses it for the verifiers'
  backbone (`models.verifier`); the task and its tokenizer stay the job's.
  """
  config.model = checkpoint_model_section(path, config.model)
  config.init_from = path


def made_model_config(size: str) -> ml_collections.ConfigDict:
  """MADE-style MLP hyper-parameters for a MADE_SIZES name (`size=made`)."""
  cfg = ml_collections.ConfigDict()
  cfg.size = size  # the preset these numbers came from (informational)
  cfg.arch = "made"  # network: made (transformer presets omit this field: absent = transformer)
  cfg.hidden_sizes = MADE_SIZES[size]  # widths of the masked ReLU hidden layers
  cfg.max_len = 256  # positions the one-hot input covers (prompt + response); set per task
  cfg.dtype = "float32"  # compute dtype: float32 or bfloat16 (params stay float32)
  return cfg


def base_config(job: str, size: str = "tiny") -> ml_collections.ConfigDict:
  """Fields every job shares. Jobs add their own sections."""
  c = ml_collections.ConfigDict()
  c.job = job  # runs pavjax/jobs/<job>.py
  c.seed = 0  # seeds parameters, data order and sampling
  c.init_from = ""  # checkpoint dir to take params from when the workdir has none
  c.model = model_config(size)
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel axis (-1 = the devices left over)
  c.mesh.fsdp = 1  # parameter + batch sharded axis
  c.mesh.tensor = 1  # tensor-parallel axis (heads, mlp, vocab)
  c.rules = shd.DEFAULT_RULES  # logical axis -> mesh axes, first free rule wins

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # adamw | sgd (plain gradient steps, no momentum)
  c.optim.lr = 1e-3  # peak learning rate
  c.optim.warmup_steps = 50  # linear warm-up steps, then cosine decay
  c.optim.end_lr_frac = 0.1  # final lr as a fraction of the peak
  c.optim.weight_decay = 0.0  # decoupled weight decay
  c.optim.b1 = 0.9  # Adam beta1
  c.optim.b2 = 0.95  # Adam beta2
  c.optim.grad_clip = 1.0  # global-norm clip (0 = off)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global batch (sequences); divisible by mesh data*fsdp
  c.train.num_steps = 1000  # optimizer steps
  c.train.log_every = 50  # steps between metric fetches / writes
  c.train.eval_every = 0  # steps between evaluations (0 = only at the end)
  c.train.nonfinite = "stop"  # on NaN/Inf loss or grads: 'stop' (raise) or 'skip' the step
  c.train.max_skips = 10  # with 'skip': stop after this many consecutive bad steps
  c.train.halt_at_step = 0  # stop (checkpointed) after this step, as if preempted; 0 = off
  # Finite divergence (training.DivergenceMonitor): a loss far above its running
  # median, or a gradient norm of exactly 0 for many steps in a row. 'stop' raises
  # naming the step (no checkpoint of it is written), 'warn' logs and goes on.
  c.train.divergence = "stop"  # 'stop' | 'warn' | 'off'
  c.train.divergence_factor = 10.0  # loss > median + factor * max(|median|, MAD) = diverged
  c.train.divergence_window = 100  # steps of history the median is taken over
  c.train.divergence_patience = 10  # ... for this many steps in a row (one bad batch is not)
  c.train.zero_grad_steps = 200  # consecutive steps with gradient norm exactly 0
  # Positions per chunk of the LM head + log-softmax in the SFT/RFT and RL losses: no
  # [batch, length, vocab] logits at a large vocabulary (0 = the whole length at once).
  c.train.logits_chunk = 256

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 200  # steps between checkpoints (0 = only at the end)
  c.checkpoint.keep = 3  # checkpoints kept
  c.checkpoint.async_save = True  # write in the background while training continues
  c.checkpoint.fallback_on_corrupt = False  # a damaged latest step: resume from an older one

  c.sample = ml_collections.ConfigDict()
  c.sample.method = "greedy"  # greedy | temperature | top_k | top_p
  c.sample.temperature = 1.0  # softmax temperature (non-greedy methods)
  c.sample.top_k = 0  # k for top_k
  c.sample.top_p = 1.0  # p for top_p
  c.sample.max_new_tokens = 64  # response budget in tokens; 0 = the task's max_response_len
  c.sample.batch_size = 64  # prompts per sampling call; divisible by mesh data*fsdp
  c.sample.num_eval = 128  # validation problems sampled at each evaluation
  c.sample.batching = "static"  # static | continuous (stopped rows take the next prompt)
  c.sample.continuous_blocks = 4  # continuous: sampling calls decoded through one arena
  return c


def set_task_lengths(config: ml_collections.ConfigDict, task_name: str) -> None:
  """Sets model.max_len and sample.max_new_tokens from TASK_LENGTHS (0 = from the task)."""
  if task_name not in TASK_LENGTHS:
    raise ConfigError("task.name", f"no length defaults for {task_name!r}")
  config.model.max_len, config.sample.max_new_tokens = TASK_LENGTHS[task_name]


def _length_field(config: ml_collections.ConfigDict, dotted: str):
  """The value of a LENGTH_FIELDS entry, or None when the config has no such field."""
  section, name = dotted.split(".")
  if section not in config or name not in config[section]:
    return None
  return config[section][name]


def _length_origin(config: ml_collections.ConfigDict, dotted: str) -> str:
  """How a length came about, for error messages: set by the user, or derived."""
  value = _length_field(config, dotted)
  if value is None:
    return "the task's"
  return "derived from the data" if value == FROM_TASK else "set"


def check_lengths(config: ml_collections.ConfigDict, prompt_len: int | None = None,
                  response_len: int | None = None) -> None:
  """The length fields: ints >= 0 (0 = from the task), prompt + new tokens within max_len.

  A field left at 0 is filled in from the task (`resolve_task_lengths`) so that it
  fits, so only numbers the user set can conflict: with each other, or with a limit the
  task derived from the data. Without the task (`prompt_len` None) the task limits the
  user set stand in for it, so settings that cannot fit together fail before any data
  is prepared.

  Args:
    config: the job config.
    prompt_len: the task's prompt limit (`task.max_prompt_len`), when known.
    response_len: the task's response limit (`task.max_response_len`), when known.
  """
  for field in LENGTH_FIELDS:
    value = _length_field(config, field)
    if value is not None:
      _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, field,
             f"{value!r} must be an int >= 0 (0 = from the task's data)")
  max_len = config.model.max_len
  _check(max_len != 1, "model.max_len", "1 is too short")
  if prompt_len is None:
    prompt_len = _length_field(config, "task.max_prompt_len") or None
  if response_len is None:
    response_len = _length_field(config, "task.max_response_len") or None
  new_tokens = _length_field(config, "sample.max_new_tokens")
  new_origin = _length_origin(config, "sample.max_new_tokens")
  if new_tokens == FROM_TASK:
    new_tokens = response_len
    new_origin = f"= task.max_response_len, {_length_origin(config, 'task.max_response_len')}"
  if max_len == FROM_TASK or prompt_len is None:
    return
  prompt_origin = _length_origin(config, "task.max_prompt_len")
  _check(max_len > prompt_len, "model.max_len",
         f"{max_len} is not longer than the task's prompt limit ({prompt_len} tokens, "
         f"{prompt_origin}); set model.max_len=0 to follow the task")
  if new_tokens is not None:
    _check(max_len >= prompt_len + new_tokens, "model.max_len",
           f"{max_len} < {prompt_len + new_tokens} = task.max_prompt_len {prompt_len} "
           f"({prompt_origin}) + sample.max_new_tokens {new_tokens} ({new_origin}); set "
           "model.max_len=0 to follow them")


def resolve_task_lengths(config: ml_collections.ConfigDict, task,
                         workdir: str | None = None) -> dict:
  """Fills `sample.max_new_tokens` and `model.max_len` left at 0 from the task, in place.

  `sample.max_new_tokens` = the task's `max_response_len`; `model.max_len` = its
  `max_prompt_len` + `sample.max_new_tokens`. A text task's own limits at 0 were
  derived when it was built (jsonl_math: from the longest tokenized prompt and
  reference). `config.json` keeps the zeros (the config the user gave: a resume
  compares like with like); the numbers go to `<workdir>/task_lengths.json`. When
  the workdir holds checkpoints, a length that is derived (now, or in that record)
  must equal the recorded one: a job resumes with the lengths it was trained with.

  Args:
    config: the job config (its length fields are changed in place).
    task: the job's task.
    workdir: where the record is kept and checked (None: neither).

  Returns:
    The record: each length field's value, and under "derived" the fields that were 0.

  Raises:
    ConfigError: naming a length the user set that the task's cannot fit with
      (`check_lengths`, before anything is filled in), or the first derived length that
      differs from the resumed run's.
  """
  check_lengths(config, int(task.max_prompt_len), int(task.max_response_len))
  derived = [f for f in LENGTH_FIELDS if _length_field(config, f) == FROM_TASK]
  record = {"task.max_prompt_len": int(task.max_prompt_len),
            "task.max_response_len": int(task.max_response_len)}
  new_tokens = int(task.max_response_len)
  if "sample" in config:
    if config.sample.max_new_tokens == FROM_TASK:
      config.sample.max_new_tokens = new_tokens
    new_tokens = int(config.sample.max_new_tokens)
    record["sample.max_new_tokens"] = new_tokens
  if config.model.max_len == FROM_TASK:
    config.model.max_len = int(task.max_prompt_len) + new_tokens
  record["model.max_len"] = int(config.model.max_len)
  record["derived"] = derived
  if workdir:
    _keep_lengths(workdir, record)
  return record


def _keep_lengths(workdir: str, record: dict) -> None:
  """Writes the lengths record, after checking it against a resumed run's."""
  from pavjax import artifacts  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, LENGTHS_FILE)
  before = artifacts.read_json(path)
  if isinstance(before, dict) and has_checkpoints(workdir):
    extra = [a.strip() for a in os.environ.get(RESUME_ALLOW_ENV, "").split(",") if a.strip()]
    for field in LENGTH_FIELDS:
      if field not in record or field not in before or _allowed(field, extra):
        continue
      was_derived = field in before.get("derived", ())
      if (field in record["derived"] or was_derived) and record[field] != before[field]:
        now = "derived from the data" if field in record["derived"] else "set"
        raise ConfigError(field, (
            f"{record[field]} now ({now}), {before[field]} in {path}, the record of the run "
            f"whose checkpoints {workdir} holds: the data or its tokenizer changed. Use a new "
            f"workdir, set config.{field}={before[field]}, or set {RESUME_ALLOW_ENV}={field}"))
  artifacts.write_json(path, record)


def read_task_lengths(workdir: str) -> dict | None:
  """The lengths record `resolve_task_lengths` kept in `workdir` (None when absent)."""
  from pavjax import artifacts  # pylint: disable=g-import-not-at-top
  return artifacts.read_json(os.path.join(workdir, LENGTHS_FILE))


def check(cond: bool, field: str, message: str) -> None:
  """Raises ConfigError naming `field` unless `cond`."""
  if not cond:
    raise ConfigError(field, message)


_check = check


def check_choice(value, allowed, field: str) -> None:
  """`value` must be one of `allowed`; the error names the field and the allowed values."""
  check(value in allowed, field, f"{value!r} is not one of {tuple(allowed)}")


def check_set(path: str, field: str, why: str) -> None:
  """A path field the job will read must be given."""
  check(bool(path), field, f"is empty; {why}")


def check_finite(value, field: str, minimum: float | None = None) -> None:
  """A float field must be finite (and at least `minimum`)."""
  check(isinstance(value, (int, float)) and math.isfinite(value), field,
        f"{value!r} is not a finite number")
  if minimum is not None:
    check(value >= minimum, field, f"{value} is below {minimum}")


def parse_list(text: str, field: str, kind=int) -> list:
  """'2,4,8' -> [2, 4, 8]; names the config field on a bad entry."""
  try:
    return [kind(x) for x in str(text).split(",") if x.strip()]
  except ValueError as e:
    raise ConfigError(field, f"{text!r} is not a comma-separated list: {e}") from e


def prefixed(prefix: str, error: ConfigError) -> ConfigError:
  """The same error with its field under `prefix` (e.g. a pipeline stage's `stages.rl_pav`)."""
  if error.field is None:
    return error
  return ConfigError(f"{prefix}.{error.field}", error.message)


def _mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """`config.mesh` resolved for `num_devices` (-1 filled in); ConfigError when it cannot be."""
  try:
    return shd.resolve_mesh_shape(dict(config.mesh), num_devices)
  except ValueError as e:
    raise ConfigError("mesh", str(e)) from None


def _batch_devices(mesh: dict[str, int]) -> int:
  return math.prod(mesh[a] for a in shd.BATCH_AXES if a in mesh)


def data_parallel_size(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """Devices a batch is split over (mesh data * fsdp) for `config.mesh` on `num_devices`."""
  return _batch_devices(_mesh_shape(config, num_devices))


def check_all_finite(config: ml_collections.ConfigDict, prefix: str = "") -> None:
  """Every float field is finite: `rl.alpha=nan` fails here, naming the field, not
  later as a non-finite loss that names nothing."""
  for key, value in config.items():
    field = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      check_all_finite(value, field + ".")
    elif isinstance(value, float):
      _check(math.isfinite(value), field, f"{value} is not a finite number")


def validate(config: ml_collections.ConfigDict, num_devices: int,
             prompt_len: int | None = None, response_len: int | None = None) -> dict[str, int]:
  """Checks values before any compile. Returns the resolved mesh shape.

  Args:
    config: the job config.
    num_devices: devices the mesh must cover (jax.device_count()).
    prompt_len: the task's prompt limit (`task.max_prompt_len`), when known; checked
      against max_len (`check_lengths`).
    response_len: the task's response limit, when known: what a `sample.max_new_tokens`
      of 0 becomes.
  """
  check_all_finite(config)
  mesh = _mesh_shape(config, num_devices)
  _check(set(config.mesh.keys()) <= set(shd.MESH_AXES), "mesh",
         f"axes must be among {shd.MESH_AXES}, got {list(config.mesh.keys())}")
  dp = _batch_devices(mesh)
  m = config.model
  arch = models.arch_of(m)
  _check(arch in models.ARCHS, "model.arch", f"{arch!r} is not one of {models.ARCHS}")
  if m.get("source", "") == "hf":
    _check(bool(m.path), "model.path", "is empty; size=hf needs a Hugging Face checkpoint dir")
    _check(m.param_dtype in ("float32", "bfloat16"), "model.param_dtype",
           f"{m.param_dtype!r} is not float32 or bfloat16")
    try:  # reads config.json only: a refused family or field fails here, before any work
      models.model_config_from(m, 0)
    except (ValueError, OSError) as e:
      raise ConfigError("model.path", str(e)) from None
  tokenizer_dir = config.task.get("hf_tokenizer", "") if "task" in config else ""
  if tokenizer_dir:
    try:
      hf_tokenizer.load_tokenizer(tokenizer_dir)
    except (ValueError, OSError) as e:
      raise ConfigError("task.hf_tokenizer", str(e)) from None
  elif arch == "made":
    hidden = m.hidden_sizes
    _check(isinstance(hidden, (tuple, list)) and len(hidden) >= 1
           and all(isinstance(h, int) and h >= 1 for h in hidden), "model.hidden_sizes",
           f"{hidden!r} is not a non-empty sequence of positive ints")
  else:
    _check("num_layers" in m, "model.arch",
           f"{arch!r} needs a transformer size preset ({sorted(MODEL_SIZES)}), not "
           f"size={m.get('size')!r}")
    _check(m.num_layers >= 1, "model.num_layers", "must be >= 1")
    _check(m.num_heads % m.num_kv_heads == 0, "model.num_heads",
           f"{m.num_heads} heads are not a multiple of model.num_kv_heads={m.num_kv_heads}")
    _check(m.head_dim % 2 == 0, "model.head_dim", f"{m.head_dim} must be even (RoPE)")
  _check(m.dtype in ("float32", "bfloat16"), "model.dtype",
         f"{m.dtype!r} is not float32 or bfloat16")
  check_lengths(config, prompt_len, response_len)
  if "optim" in config:
    _check(config.optim.lr > 0, "optim.lr", f"{config.optim.lr} must be > 0")
    name = config.optim.get("name", "adamw")  # configs written before the field: AdamW
    _check(name in training.OPTIMIZERS, "optim.name",
           f"{name!r} is not one of {sorted(training.OPTIMIZERS)}")
    _check(config.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
  if "train" in config:
    t = config.train
    _check(t.batch_size > 0 and t.batch_size % dp == 0, "train.batch_size",
           f"{t.batch_size} is not a positive multiple of the data-parallel size {dp} "
           f"(mesh data*fsdp)")
    _check(t.num_steps > 0, "train.num_steps", "must be > 0")
    _check(t.log_every > 0, "train.log_every", "must be > 0")
    _check(t.nonfinite in ("stop", "skip"), "train.nonfinite",
           f"{t.nonfinite!r} is not 'stop' or 'skip'")
    divergence = t.get("divergence", "off")  # configs written before the monitor: off
    _check(divergence in training.DIVERGENCE_ACTIONS, "train.divergence",
           f"{divergence!r} is not one of {training.DIVERGENCE_ACTIONS}")
    if divergence != "off":
      _check(t.divergence_factor > 0, "train.divergence_factor", "must be > 0")
      _check(t.divergence_window >= 2, "train.divergence_window", "must be >= 2")
      _check(t.zero_grad_steps >= 1, "train.zero_grad_steps", "must be >= 1")
      _check(t.get("divergence_patience", 1) >= 1, "train.divergence_patience", "must be >= 1")
    chunk = t.get("logits_chunk", 0)  # LM-head chunking (training.token_stats)
    _check(isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0,
           "train.logits_chunk", f"{chunk!r} must be an int >= 0 (0 = no chunking)")
  if "sample" in config:
    s = config.sample
    from pavjax.sampling import methods  # pylint: disable=g-import-not-at-top
    _check(s.method in methods.METHODS, "sample.method",
           f"{s.method!r} is not one of {methods.METHODS}")
    _check(s.temperature > 0, "sample.temperature", "must be > 0")
    _check(s.get("batching", "static") in ("static", "continuous"), "sample.batching",
           f"{s.get('batching')!r} is not one of ('static', 'continuous')")
    _check(s.get("continuous_blocks", 1) > 0, "sample.continuous_blocks",
           f"{s.get('continuous_blocks')} must be > 0")
    _check(not (s.get("batching", "static") == "continuous" and "model" in config
                and models.arch_of(config.model) == "made"), "sample.batching",
           "continuous batching needs a policy with a KV cache (a transformer), not a MADE "
           "policy: set 'static'")
    _check(s.batch_size > 0 and s.batch_size % dp == 0, "sample.batch_size",
           f"{s.batch_size} is not a positive multiple of the data-parallel size {dp}")
    if s.method == "top_k":
      _check(s.top_k > 0, "sample.top_k", "must be > 0 for method top_k")
    if s.method == "top_p":
      _check(0 < s.top_p <= 1, "sample.top_p", "must be in (0, 1]")
  return mesh


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` the way `--config` does (for checking overrides)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_pavjax_config", path)
  if module_spec is None or not os.path.exists(path):
    raise ConfigError("<file>", f"config file {path!r} not found")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_override_paths(config: ml_collections.ConfigDict, argv: list[str]) -> None:
  """Names the first `--config.a.b=v` override whose field does not exist."""
  for item in argv:
    if not item.startswith("--config."):
      continue
    dotted = item[len("--config."):].split("=", 1)[0]
    node = config
    for depth, key in enumerate(dotted.split(".")):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        parent = ".".join(dotted.split(".")[:depth]) or "<root>"
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(dotted, f"no such field (in {parent}; known: {known})")
      node = node[key]


def check_workdir(workdir: str) -> str:
  """Rejects workdirs that climb out of their parent with `..`; returns the abs path."""
  parts = os.path.normpath(workdir).split(os.sep)
  if ".." in parts or ".." in workdir.split("/"):
    raise ConfigError("workdir", f"{workdir!r} contains '..'; give a plain path")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError("workdir", f"{path} exists and is not a directory")
  return path


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def write_config(config: ml_collections.ConfigDict, workdir: str, name: str = "config.json"):
  """Writes the resolved config into the workdir (the run's record of itself)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
    f.write(to_json(config) + "\n")


# Fields that decide how fast a job computes and never what: a resume may change them,
# and a pipeline stage's hash leaves them out, so a workdir recorded before one was
# added keeps its finished stages.
SPEED_ONLY_FIELDS = ("model.attn_block", "model.query_chunk", "sample.batching",
                     "sample.continuous_blocks", "search.batching")


def without_speed_only(tree: Mapping) -> dict:
  """A config (as a dict, or a dict of some of its sections) without SPEED_ONLY_FIELDS:
  what the content hashes of stages and cached data are taken of."""
  tree = copy.deepcopy(dict(tree))
  for dotted in SPEED_ONLY_FIELDS:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
      node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.pop(leaf, None)
  return tree


# Fields a resume may change: they decide how a run is logged, checkpointed, laid
# out on the devices or cut short, not what it computes. Checkpoint cadence and
# retention, metric logging, the halt points, the mesh and sharding rules (the
# same math on another layout), rematerialization and LM-head chunking (memory
# only), SPEED_ONLY_FIELDS, and `init_from` (read only when the workdir has no
# checkpoint).
RESUME_SAFE_FIELDS = SPEED_ONLY_FIELDS + (
    "checkpoint.every", "checkpoint.keep", "checkpoint.async_save",
    "checkpoint.fallback_on_corrupt", "train.log_every", "train.halt_at_step",
    "rollouts.halt_after_shards", "mesh", "rules", "model.remat", "train.logits_chunk",
    "init_from", "train.divergence", "train.divergence_factor", "train.divergence_window",
    "train.zero_grad_steps", "train.divergence_patience",
)
# Paths inside the workdir's parent directory that only moved with it (a copied or
# moved pipeline workdir) count as unchanged too (`_moved_along`).
# Comma-separated dotted fields (or whole sections) a resume may change besides
# RESUME_SAFE_FIELDS, e.g. PAVJAX_RESUME_ALLOW=train.num_steps to train on for longer.
RESUME_ALLOW_ENV = "PAVJAX_RESUME_ALLOW"


class _Absent:
  def __repr__(self) -> str:
    return "absent"


_ABSENT = _Absent()  # a field one of the two configs lacks


def _flat(tree, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(_flat(value, dotted + "."))
    else:
      out[dotted] = value
  return out


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> dict:
  """dotted field -> (value in `saved`, value in `config`) where the two differ.

  Values are compared as `config.json` holds them (tuples as lists); a field only
  one side has is `_ABSENT` on the other.
  """
  before, now = _flat(saved), _flat(json.loads(to_json(config)))
  return {k: (before.get(k, _ABSENT), now.get(k, _ABSENT))
          for k in sorted(set(before) | set(now))
          if before.get(k, _ABSENT) != now.get(k, _ABSENT)}


def _allowed(field: str, allow) -> bool:
  return any(field == a or field.startswith(a + ".") for a in allow)


def _moved_along(before, now, root: str) -> bool:
  """True iff path `now`, inside `root` (the workdir's parent), is path `before` moved.

  A pipeline's stages (and runs side by side in one directory) name each other by
  absolute path; when the whole directory is moved or copied, those paths change
  while what they name does not. `before` must end with `now`'s path below `root`.
  """
  if not (isinstance(before, str) and isinstance(now, str) and os.path.isabs(before)
          and now.startswith(root.rstrip(os.sep) + os.sep)):
    return False
  below = os.path.relpath(now, root)
  return os.path.normpath(before).endswith(os.sep + below)


def _length_from_task(field: str, before, now) -> bool:
  """A length field at 0 (from the task) on one side and a number on the other is not a
  change by itself: `resolve_task_lengths` fills the 0 in and checks the number against
  the resumed run's record (`task_lengths.json`)."""
  ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (before, now))
  return field in LENGTH_FIELDS and ints and FROM_TASK in (before, now)


# Fields added after runs were recorded, with the value that behaves as their absence
# did: a recorded config without the field resumes under that value.
ADDED_FIELDS = {"rl.value_model": "head"}


def _added_as_before(field: str, before, now) -> bool:
  return field in ADDED_FIELDS and before is _ABSENT and now == ADDED_FIELDS[field]


def has_checkpoints(workdir: str) -> bool:
  """True iff `<workdir>/checkpoints` holds a step directory (finalized or not)."""
  from pavjax import checkpoint  # pylint: disable=g-import-not-at-top
  return bool(checkpoint.step_dirs(os.path.join(workdir, "checkpoints")))


def check_resume(config: ml_collections.ConfigDict, workdir: str,
                 name: str = "config.json") -> dict:
  """A workdir with checkpoints resumes only the run its `config.json` describes.

  Raises ConfigError naming every field that differs from the recorded config,
  other than RESUME_SAFE_FIELDS and those listed in $PAVJAX_RESUME_ALLOW. Returns
  the differences that only $PAVJAX_RESUME_ALLOW let through (empty when nothing
  else differs or nothing is resumed).
  """
  path = os.path.join(workdir, name)
  if not os.path.exists(path) or not has_checkpoints(workdir):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except ValueError as e:
    raise ConfigError("workdir", f"{path} is not valid JSON ({e}); it records the run "
                      "whose checkpoints are in this workdir") from None
  if not isinstance(saved, dict):
    raise ConfigError("workdir", f"{path} does not hold a config")
  extra = [a.strip() for a in os.environ.get(RESUME_ALLOW_ENV, "").split(",") if a.strip()]
  root = os.path.dirname(os.path.abspath(workdir))
  changes = {k: v for k, v in config_changes(saved, config).items()
             if not _allowed(k, RESUME_SAFE_FIELDS) and not _moved_along(*v, root)
             and not _length_from_task(k, *v) and not _added_as_before(k, *v)}
  refused = {k: v for k, v in changes.items() if not _allowed(k, extra)}
  if refused:
    show = lambda v: repr(v) if v is _ABSENT else json.dumps(v)
    parts = [f"config.{k}: {show(a)} in the workdir's {name}, {show(b)} now"
             for k, (a, b) in refused.items()]
    first, _ = next(iter(refused.items()))
    message = "; ".join(parts)[len(f"config.{first}: "):]
    raise ConfigError(first, (
        f"{message}. {workdir} holds checkpoints of the recorded config; use a new workdir, "
        f"or set {RESUME_ALLOW_ENV}={','.join(refused)} to resume with the new values"))
  return changes


def sibling_config(this_file: str, name: str):
  """The `configs/<name>.py` module beside `this_file` (configs build on each other).

  Loaded by path, so it works wherever the config file is and whatever the cwd.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"pavjax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

