"""RFT: fine-tune a policy on its own correct samples (RL starts here; arXiv 2410.08146 Sec. 5).

Samples `rft.num_samples` responses per training problem from `config.init_from`
at `rft.temperature`, keeps the correct ones (each distinct response once per
problem), and trains on them with the SFT trainer (`pavjax.supervised`). The
sampled pool is a trajectory table in `rft_pool/`, keyed by the content hash of
what made it, so a resumed job does not sample again.

When no sample is correct, `rft.on_no_correct` decides: 'fallback' (default)
keeps the initial policy (its parameters become this job's checkpoint step 0,
its evaluation the job's, and summary.json says so under "fallback"); 'fail'
stops with a config error.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np

from pavjax import artifacts
from pavjax import config_lib
from pavjax import evaluation
from pavjax import runtime
from pavjax import supervised
from pavjax import tasks
from pavjax import trajectories
from pavjax.sampling import Sampler, Temperature, cached_lm


ON_NO_CORRECT = ("fallback", "fail")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every field this job reads, checked before any compute; errors name the field."""
  config_lib.validate(config, num_devices)
  cfg = config.rft
  config_lib.check_set(config.init_from, "init_from", "RFT samples from this policy checkpoint")
  config_lib.check(cfg.num_samples > 0, "rft.num_samples", f"{cfg.num_samples} must be > 0")
  config_lib.check(cfg.num_problems >= 0, "rft.num_problems", "must be >= 0 (0 = all)")
  config_lib.check_finite(cfg.temperature, "rft.temperature", minimum=1e-6)
  config_lib.check(cfg.get("on_no_correct", "fallback") in ON_NO_CORRECT, "rft.on_no_correct",
                   f"{cfg.get('on_no_correct')!r} must be one of {ON_NO_CORRECT}")


def sample_pool(env: runtime.JobEnv, config) -> trajectories.Trajectories:
  """`rft.num_samples` graded responses per training problem (rows problem-major)."""
  task, cfg = env.task, config.rft
  params = runtime.load_params(env, config.init_from, "init_from")
  problems = list(task.split("train"))
  if cfg.num_problems:
    problems = problems[:cfg.num_problems]
  groups = evaluation.sample_responses(
      task, Sampler(cached_lm(env.model), pad_id=task.pad_id), params, problems,
      rng=jax.random.PRNGKey(config.seed + 3), mesh=env.mesh, method=Temperature(cfg.temperature),
      max_new_tokens=config.sample.max_new_tokens, batch_size=config.sample.batch_size,
      num_samples=cfg.num_samples, progress=True,
      **evaluation.sampling_options(config.sample))
  prompts = [task.encode_prompt(p) for p in problems]
  rows = [(i, r.tokens) for i, group in enumerate(groups) for r in group]
  return trajectories.from_responses(
      task, [prompts[i] for i, _ in rows], [resp for _, resp in rows],
      [problems[i] for i, _ in rows], [i for i, _ in rows],
      max_steps=config.sample.max_new_tokens,
      width=max(len(p) for p in prompts) + config.sample.max_new_tokens)


def correct_pairs(pool: trajectories.Trajectories) -> tuple[list, dict]:
  """Each problem's distinct correct (prompt, response) pairs, and counts for the summary."""
  pairs, solved = [], 0
  for problem in np.unique(pool.problem):
    rows = np.flatnonzero((pool.problem == problem) & (pool.outcome > 0))
    kept = sorted({tuple(pool.response(i)) for i in rows})
    solved += bool(kept)
    if kept:
      prompt = pool.prompt(int(rows[0]))
      pairs += [(prompt, list(resp)) for resp in kept]
  stats = {"problems": len(np.unique(pool.problem)), "samples": len(pool),
           "correct": int((pool.outcome > 0).sum()), "distinct_correct": len(pairs),
           "problems_solved": solved}
  return pairs, stats


def pool_hash(config: ml_collections.ConfigDict) -> str:
  """The content hash of what the sampled pool depends on. on_no_correct and the
  speed-only fields do not change what is sampled: a pool made before they existed is
  reused."""
  made_by = {k: config[k].to_dict() for k in ("rft", "task", "model")}
  made_by["rft"].pop("on_no_correct", None)
  made_by = config_lib.without_speed_only(made_by)
  return artifacts.content_hash(made_by | {"init_from": config.init_from, "seed": config.seed})


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  env = runtime.setup(config, workdir)
  pool_dir = os.path.join(env.workdir, artifacts.RFT_POOL)
  key = pool_hash(config)
  pool = trajectories.load_if_complete(pool_dir, key)
  if pool is None:
    pool = sample_pool(env, config)
    trajectories.save(pool_dir, pool, key)
  pairs, stats = correct_pairs(pool)
  if not pairs:
    if config.rft.get("on_no_correct", "fallback") == "fail":
      raise config_lib.ConfigError(
          "rft.on_no_correct", f"'fail': no correct sample among {stats['samples']} from "
          f"init_from={config.init_from}; RFT needs a policy that sometimes succeeds (train "
          "SFT longer, raise rft.num_samples, or set rft.on_no_correct='fallback' to keep "
          "the initial policy)")
    note = f"no correct sample among {stats['samples']}: RFT kept the initial policy"
    logging.warning("%s (%s; rft.on_no_correct='fallback')", note, config.init_from)
    return supervised.train(env, None, job="rft",
                            extra={"rft_data": stats, "fallback": note})
  data = tasks.sequence_arrays(pairs, config.model.max_len, env.task.pad_id)
  return supervised.train(env, data, job="rft", extra={"rft_data": stats})
