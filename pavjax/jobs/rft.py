"""RFT: fine-tune a policy on its own correct samples (the RL starting point, PAPER.md section 6).

Samples `rft.num_samples` responses per training problem from `config.init_from`
at `rft.temperature`, keeps the correct ones (each distinct response once per
problem), and trains on them with the SFT step. The sampled set is cached in
`rft_data.npz` (keyed by the config), so a resumed job does not sample again.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from pavjax import config_lib
from pavjax import metrics
from pavjax import rollout_data
from pavjax import tasks
from pavjax.jobs import common
from pavjax.jobs import sft
from pavjax.sampling import Sampler, Temperature, cached_lm, evaluate


def correct_samples(env: common.JobEnv, config) -> tuple[tasks.SFTArrays, dict]:
  """The policy's distinct correct (prompt, response) pairs as teacher-forcing arrays."""
  task, cfg = env.task, config.rft
  params = common.load_params(env, config.init_from, "init_from")
  problems = list(task.split("train"))
  if cfg.num_problems:
    problems = problems[:cfg.num_problems]
  groups = evaluate.sample_responses(
      task, Sampler(cached_lm(env.model), pad_id=task.pad_id), params, problems,
      rng=jax.random.PRNGKey(config.seed + 3), mesh=env.mesh, method=Temperature(cfg.temperature),
      max_new_tokens=config.sample.max_new_tokens, batch_size=config.sample.batch_size,
      num_samples=cfg.num_samples, progress=True)
  pairs, solved = [], 0
  for problem, group in zip(problems, groups):
    kept = {tuple(r.tokens) for r in group if r.outcome.reward > 0}
    solved += bool(kept)
    prompt = task.encode_prompt(problem)
    pairs += [(prompt, list(resp)) for resp in sorted(kept)]
  stats = {"problems": len(problems), "samples": len(problems) * cfg.num_samples,
           "correct": int(sum(r.outcome.reward > 0 for g in groups for r in g)),
           "distinct_correct": len(pairs), "problems_solved": solved}
  if not pairs:
    raise config_lib.ConfigError(
        "init_from", f"{config.init_from}: no correct sample among {stats['samples']}; "
        "RFT needs a policy that sometimes succeeds (train SFT longer or raise rft.num_samples)")
  return tasks.sequence_arrays(pairs, config.model.max_len, task.pad_id), stats


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  env = common.setup(config, workdir)
  t0 = time.time()
  path = os.path.join(env.workdir, "rft_data.npz")
  key = rollout_data.config_hash({k: config[k].to_dict() for k in ("rft", "task", "model")} |
                                 {"init_from": config.init_from, "seed": config.seed})
  data = stats = None
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as z:
      if str(z["key"]) == key:
        data = tasks.SFTArrays(z["inputs"], z["targets"], z["mask"])
        stats = {k[len("stat_"):]: int(z[k]) for k in z.files if k.startswith("stat_")}
  if data is None:
    data, stats = correct_samples(env, config)
    if metrics.is_lead_process():
      np.savez(path + ".tmp.npz", key=key, inputs=data.inputs, targets=data.targets,
               mask=data.mask, **{f"stat_{k}": v for k, v in stats.items()})
      os.replace(path + ".tmp.npz", path)
  return sft.train(env, data, job="rft", t0=t0, extra={"rft_data": stats})
