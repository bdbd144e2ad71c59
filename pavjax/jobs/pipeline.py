"""The whole method in one job: SFT -> RFT -> rollouts -> verifiers -> search -> RL -> report.

Every stage is an ordinary job with its own config (`config.stages.<name>`, built
from configs/<job>.py) and its own sub-directory of the workdir. A stage's
inputs from earlier stages (checkpoints, rollout datasets) are filled in here,
and its identity is the hash of its resolved config plus its inputs' hashes:

* a stage whose `stage.json` records `complete` with the same hash is skipped;
* a stage that started with the same hash resumes (the jobs resume themselves);
* a stage whose hash changed (its config, or anything upstream) is moved aside
  to `<name>.stale-<time>` and rerun, and so is everything downstream of it.

Paths inside the workdir enter the hash relative to it, so a workdir copied or
moved elsewhere skips its finished stages (`stage.json` and the hash decide alone).

Three models (`config.models`): the policy (the stages' `model`, e.g. the `hf=<dir>`
variant), a prover (`models.prover`, '' = the policy) and the verifiers' starting
backbone (`models.verifier`, '' = the RFT policy). Each may be another family or size;
jobs read a checkpoint's architecture from the checkpoint (`runtime.load_model`). A
separate prover adds three stages: its rollouts from the policy's seeds, and the Q^mu
verifier trained on them, which PAV search and PAV-RL use as their prover.

At the end `report.md` gathers accuracies, compute and sample efficiency, the
prover diagnostics, plots, sampled solutions with per-step scores and timings.
Numbers come from the stages' own summaries.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections

from pavjax import artifacts
from pavjax import config_lib
from pavjax import jobs
from pavjax import metrics
from pavjax import run_record
from pavjax import tasks


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  # field in this stage's config -> (upstream stage, path inside its workdir)
  links: tuple[tuple[str, str, str], ...] = ()

  @property
  def deps(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(up for _, up, _ in self.links))


CKPT = artifacts.CHECKPOINTS
TRAIN_TABLE = artifacts.rollouts_dir("train")
VALIDATION_TABLE = artifacts.rollouts_dir("validation")
STAGES = (
    Stage("sft"),
    Stage("rft", (("init_from", "sft", CKPT),)),
    Stage("rollouts_train", (("policy.checkpoint", "rft", CKPT),)),
    Stage("rollouts_validation", (("policy.checkpoint", "rft", CKPT),)),
    Stage("verifier_q", (("init_from", "rft", CKPT),
                         ("verifier.train_data", "rollouts_train", TRAIN_TABLE),
                         ("verifier.eval_data", "rollouts_validation", VALIDATION_TABLE))),
    Stage("verifier_orm", (("init_from", "rft", CKPT),
                           ("verifier.train_data", "rollouts_train", TRAIN_TABLE),
                           ("verifier.eval_data", "rollouts_validation", VALIDATION_TABLE))),
    Stage("search", (("policy.checkpoint", "rft", CKPT), ("verifiers.q", "verifier_q", CKPT),
                     ("verifiers.orm", "verifier_orm", CKPT))),
    Stage("rl_pav", (("init_from", "rft", CKPT), ("rl.prover.verifier", "verifier_q", CKPT))),
    Stage("rl_outcome", (("init_from", "rft", CKPT),)),
)
# With a separate prover (models.prover): its rollouts and its Q^mu verifier, run
# before search; search and rl_pav then read that verifier as their prover.
PROVER_STAGES = (
    Stage("rollouts_prover_train", (("policy.checkpoint", "rft", CKPT),)),
    Stage("rollouts_prover_validation", (("policy.checkpoint", "rft", CKPT),)),
    Stage("verifier_prover", (("init_from", "rft", CKPT),
                              ("verifier.train_data", "rollouts_prover_train", TRAIN_TABLE),
                              ("verifier.eval_data", "rollouts_prover_validation",
                               VALIDATION_TABLE))),
)
VERIFIER_STAGES = ("verifier_q", "verifier_orm", "verifier_prover")
# How a stage's hash writes the pipeline workdir (`_relative_to`).
WORKDIR_PLACEHOLDER = "<workdir>"


def _without_rft(chain: tuple[Stage, ...]) -> tuple[Stage, ...]:
  """`chain` with RFT left out: every stage that read the RFT policy reads SFT's."""
  return tuple(Stage(st.name, tuple((f, "sft" if up == "rft" else up, sub)
                                    for f, up, sub in st.links))
               for st in chain if st.name != "rft")


def stages(config: ml_collections.ConfigDict) -> tuple[Stage, ...]:
  """The stages `config` runs, in order, with their links."""
  if not config.models.prover:
    out = STAGES
  else:
    out = []
    for stage in STAGES:
      if stage.name == "search":
        out += PROVER_STAGES
        stage = Stage("search", stage.links + (("verifiers.prover", "verifier_prover", CKPT),))
      elif stage.name == "rl_pav":
        stage = Stage("rl_pav", (("init_from", "rft", CKPT),
                                 ("rl.prover.verifier", "verifier_prover", CKPT)))
      out.append(stage)
  if config.models.verifier:  # the verifiers start from models.verifier, not from RFT
    out = [Stage(st.name, tuple(l for l in st.links if l[0] != "init_from"))
           if st.name in VERIFIER_STAGES else st for st in out]
  if not config.get("use_rft", True):
    out = _without_rft(tuple(out))
  return tuple(out)


def _apply_models(name: str, cfg: ml_collections.ConfigDict,
                  models: ml_collections.ConfigDict) -> None:
  """Points stage `name` at the prover and verifier backbone of `config.models`."""
  if models.prover:
    if name.startswith("rollouts_prover_"):
      cfg.prover.kind, cfg.prover.checkpoint = "checkpoint", models.prover
    elif name == "search":
      cfg.search.prover = "verifier"
    elif name == "rl_pav":
      cfg.rl.prover.kind = "verifier"
  if models.verifier and name in VERIFIER_STAGES:
    config_lib.use_checkpoint_model(cfg, models.verifier)


def _set(cfg: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  for p in parents:
    cfg = cfg[p]
  cfg[leaf] = value


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Runs every stage job's own `validate` on its resolved config, before any compute.

  Errors name the field as `stages.<name>.<field>`, so a typo in the last stage
  fails in seconds, not after the stages before it have run.
  """
  for name in ("prover", "verifier"):
    path = config.models[name]
    if path and not os.path.isdir(path):
      raise config_lib.ConfigError(f"models.{name}", f"{path} is not a directory")
  for name, (cfg, _) in resolve(config, WORKDIR_PLACEHOLDER).items():
    try:
      jobs.validate_job(cfg, num_devices)
    except config_lib.ConfigError as e:
      raise _stage_error(name, e) from None


def _stage_error(name: str, error: config_lib.ConfigError) -> config_lib.ConfigError:
  """A stage's error, named as the pipeline's field: `task.*` is the pipeline's own."""
  if error.field is not None and (error.field == "task" or error.field.startswith("task.")):
    return error
  return config_lib.prefixed(f"stages.{name}", error)


def resolve(config: ml_collections.ConfigDict, workdir: str, *, relative: bool = True
            ) -> dict[str, tuple[Any, str]]:
  """Each stage's config with its inputs filled in, and its hash (config + inputs).

  The hash sees paths inside `workdir` relative to it (`_relative_to`): a copied or
  moved workdir skips its finished stages. `relative=False` gives the hashes of
  before, which took the absolute paths (`run` still accepts those markers).

  Every stage shares one task cache (`<workdir>/task`): the tokenizer is trained
  and the data prepared once, then handed to every stage.
  """
  out: dict[str, tuple[Any, str]] = {}
  for stage in stages(config):
    cfg = copy.deepcopy(config.stages[stage.name])
    with cfg.unlocked():
      cfg.task = copy.deepcopy(config.task)  # one task for every stage
    if config.get("seed", 0):  # a whole run on another seed: each stage's own seed shifted
      cfg.seed = int(cfg.seed) + int(config.seed)
    _apply_models(stage.name, cfg, config.models)
    for field, up, sub in stage.links:
      _set(cfg, field, os.path.join(workdir, up, sub))
    if "cache_dir" in cfg.task:
      cfg.task.cache_dir = os.path.join(workdir, artifacts.TASK_CACHE)
    described = config_lib.without_speed_only(cfg.to_dict())
    ident = {"config": _relative_to(described, workdir) if relative else described,
             "inputs": {d: out[d][1] for d in stage.deps}}
    out[stage.name] = (cfg, artifacts.content_hash(ident))
  return out


def _relative_to(value: Any, workdir: str) -> Any:
  """`value` with every path inside `workdir` written relative to it (`<workdir>/...`).

  A stage's hash is taken of this form, so a pipeline workdir that is moved or copied
  elsewhere keeps its stages' identities and its finished stages are skipped; the
  configs handed to the jobs keep their absolute paths.
  """
  if isinstance(value, dict):
    return {k: _relative_to(v, workdir) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_relative_to(v, workdir) for v in value)
  if isinstance(value, str) and workdir and (
      value == workdir or value.startswith(workdir.rstrip(os.sep) + os.sep)):
    return WORKDIR_PLACEHOLDER + value[len(workdir.rstrip(os.sep)):]
  return value


def _from_workdir(value: Any, workdir: str) -> Any:
  """`_relative_to` undone: `<workdir>/...` paths made absolute under `workdir`."""
  if isinstance(value, dict):
    return {k: _from_workdir(v, workdir) for k, v in value.items()}
  if isinstance(value, list):
    return [_from_workdir(v, workdir) for v in value]
  if isinstance(value, str) and (value == WORKDIR_PLACEHOLDER
                                 or value.startswith(WORKDIR_PLACEHOLDER + os.sep)):
    return workdir.rstrip(os.sep) + value[len(WORKDIR_PLACEHOLDER):]
  return value


def check_task_lengths(resolved: dict[str, tuple[Any, str]], num_devices: int) -> None:
  """Builds each distinct task once (tokenizer included) and checks every stage's lengths."""
  built = {}
  for name, (cfg, _) in resolved.items():
    key = artifacts.content_hash(cfg.task.to_dict())
    if key not in built:
      built[key] = tasks.make_task(cfg.task, cfg.task.get("cache_dir") or None)
    try:
      config_lib.validate(cfg, num_devices, prompt_len=built[key].max_prompt_len,
                          response_len=built[key].max_response_len)
    except config_lib.ConfigError as e:
      raise _stage_error(name, e) from None


def run_stage(name: str, cfg, chash: str, workdir: str, legacy_hash: str | None = None
              ) -> tuple[dict, float, str]:
  """Runs (or skips, or resumes) one stage. Returns its summary, seconds and what happened.

  `legacy_hash` is the stage's hash as taken before hashes were relative to the
  workdir: a marker that records it counts as recording `chash` (and is rewritten so).
  """
  sdir = os.path.join(workdir, name)
  state = artifacts.read_marker(sdir)
  if state is not None and legacy_hash is not None and state["hash"] == legacy_hash:
    state = {**state, "hash": chash}
    artifacts.write_marker(sdir, state)
  if state is not None and state["hash"] == chash and state.get("complete"):
    return _from_workdir(state["summary"], workdir), state["seconds"], "skipped (complete)"
  # The new config must pass its job's checks before a finished stage is moved aside
  # for it: a bad override leaves the stage directory as it was.
  try:
    jobs.validate_job(cfg, jax.device_count())
  except config_lib.ConfigError as e:
    raise _stage_error(name, e) from None
  action = "ran"
  before = 0.0  # seconds of earlier attempts at this stage (killed ones included)
  if state is not None and state["hash"] != chash:
    stale = f"{sdir}.stale-{int(time.time())}"
    logging.warning("stage %s: its config or an input changed; moving %s to %s", name, sdir,
                    stale)
    if metrics.is_lead_process():
      os.rename(sdir, stale)
    state = None
    action = "reran (changed)"
  elif state is not None:
    action = "resumed"
    # A killed attempt ran until the newest file it left in the stage directory.
    before = state.get("seconds", 0.0) + run_record.attempt_seconds(
        sdir, state.get("started"), exclude=(os.path.join(sdir, artifacts.STAGE_STATE),))
  t0 = time.time()
  artifacts.write_marker(sdir, {"hash": chash, "complete": False, "started": t0,
                                "seconds": before})
  summary = jobs.run_job(cfg, sdir)
  seconds = time.time() - t0 + before
  # Kept relative to the workdir (a copied workdir's report names its own paths), and
  # handed on in its JSON form, as a skipped stage's summary is.
  kept = json.loads(json.dumps(_relative_to(summary, workdir), sort_keys=True, default=float))
  artifacts.write_marker(sdir, {"hash": chash, "complete": True, "seconds": seconds,
                                "summary": kept})
  return _from_workdir(kept, workdir), seconds, action


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  from pavjax import report  # pylint: disable=g-import-not-at-top
  workdir = config_lib.check_workdir(workdir)
  resolved = resolve(config, workdir)
  legacy = resolve(config, workdir, relative=False)
  check_task_lengths(resolved, jax.device_count())
  only = [s for s in str(config.only).split(",") if s]
  summaries, timings, actions = {}, {}, {}
  for stage in stages(config):
    if only and stage.name not in only:
      continue
    cfg, chash = resolved[stage.name]
    logging.info("pipeline stage %s (%s)", stage.name, chash)
    summaries[stage.name], timings[stage.name], actions[stage.name] = run_stage(
        stage.name, cfg, chash, workdir, legacy_hash=legacy[stage.name][1])
    logging.info("pipeline stage %s: %s in %.0f s", stage.name, actions[stage.name],
                 timings[stage.name])
  out = {"job": "pipeline", "stages": actions, "seconds": timings}
  if not only:
    out["report"] = report.write(workdir, summaries, timings, actions, models=config.models)
  artifacts.write_json(os.path.join(workdir, "pipeline.json"), out)
  return out
