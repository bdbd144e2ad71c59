"""Test-time search evaluation: best-of-N, votes, beam search and DVTS against compute.

Inputs: a policy checkpoint, a Q^pi verifier (`train_verifier` with kind=q) and an
ORM (kind=orm). For every problem of `search.split`:

* one pool of max(ns) sampled responses, scored once by both verifiers, gives
  every best-of-N rule at every N (`pavjax.search.best_of_n`);
* beam searches (`q_beam`, `pav_beam`, `orm_beam`) and DVTS run once per N in
  `beam_ns`;
* at `sweep_n`, PAV beam over `alphas` (K fixed) and over `bok_ks` (alpha fixed; only
  with the BoK prover).

The prover mu of PAV's A^mu (pav_beam, dvts, bon:pav) is `search.prover`:
  bok       Best-of-`bok_k` of pi, Q^mu = 1 - (1 - Q^pi)^K from the Q^pi verifier;
  verifier  a separate prover policy's Q^mu: `verifiers.prover`, a q verifier trained
            on mu's rollouts; it scores the pool once (cached in `pool_prover.npz`)
            and every beam candidate, and its tokens count as `prover_tokens`.

Each (method, N) result is one line of `rows.jsonl`, written when it finishes;
a restarted job skips the lines already there (same config hash) and the pool
is cached in `pool/` (a trajectory table with columns q_pi, orm, answer), so an
interrupted evaluation resumes. At the end:
`results.json` (curves and compute-efficiency ratios against ORM best-of-max(N); none,
with `efficiency_note` saying why, when the ORM curve stays at accuracy 0),
`results.md` (tables), `accuracy_vs_n.png`, `accuracy_vs_flops.png`, sweep plots.

Compute per problem is counted in tokens (policy generated, prefill, verifier
scored, prover verifier scored) and FLOPs = 2 x params x tokens
(`pavjax.search.compute`). Best-of-N wall time is the pool's sampling + scoring
time (+ the prover's scoring, for bon:pav) scaled by N / max(N) (the pool is
drawn once); beam wall time is measured per run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pavjax import artifacts
from pavjax import config_lib
from pavjax import metrics
from pavjax import models
from pavjax import rewards
from pavjax import verifiers
from pavjax import runtime
from pavjax import stats
from pavjax import trajectories
from pavjax import evaluation
from pavjax.sampling import Sampler, Temperature, cached_lm
from pavjax.sampling import sampler as sampler_lib
from pavjax.search import best_of_n, compute
from pavjax.search.beam import StepBeamSearch, run_dvts
from pavjax.tasks import base

BEAM_SCORES = {"q_beam": "q", "pav_beam": "pav", "orm_beam": "orm", "dvts": "pav"}
PROVERS = ("bok", "verifier")
# Beam search decodes every call's problems in lockstep (static) or through an arena of
# problem slots where each goes on at its own pace (continuous): the same results.
BATCHINGS = ("static", "continuous")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every field this job reads, checked before any compute; errors name the field."""
  config_lib.validate(config, num_devices)
  s = config.search
  config_lib.check_choice(s.prover, PROVERS, "search.prover")
  config_lib.check_set(config.policy.checkpoint, "policy.checkpoint", "needs the policy's "
                       "checkpoints dir")
  for kind in ("q", "orm"):
    config_lib.check_set(config.verifiers[kind], f"verifiers.{kind}",
                         f"needs the checkpoints dir of the {kind} verifier")
  if s.prover == "verifier":
    config_lib.check_set(config.verifiers.prover, "verifiers.prover",
                         "needs the checkpoints dir of the prover's q verifier (Q^mu) when "
                         "search.prover='verifier'")
  config_lib.check_choice(s.split, base.SPLITS, "search.split")
  for field in ("ns", "beam_ns", "bok_ks"):
    values = config_lib.parse_list(s[field], f"search.{field}")
    config_lib.check(all(v > 0 for v in values), f"search.{field}", f"{s[field]!r} must be > 0")
  config_lib.check(bool(config_lib.parse_list(s.ns, "search.ns")), "search.ns",
                   "needs at least one N")
  for m in config_lib.parse_list(s.beam_methods, "search.beam_methods", str):
    config_lib.check_choice(m, tuple(sorted(BEAM_SCORES)), "search.beam_methods")
  config_lib.check_finite(s.alpha, "search.alpha")
  for a in config_lib.parse_list(s.alphas, "search.alphas", float):
    config_lib.check_finite(a, "search.alphas")
  for field in ("expansions", "max_steps", "max_step_tokens", "dvts_width", "max_rows",
                "score_batch", "bok_k", "num_subsets"):
    config_lib.check(s[field] > 0, f"search.{field}", f"{s[field]} must be > 0")
  config_lib.check(s.num_problems >= 0, "search.num_problems", "must be >= 0 (0 = all)")
  config_lib.check_choice(s.get("batching", "static"), BATCHINGS, "search.batching")
  if s.get("batching", "static") == "continuous" and models.arch_of(config.model) == "made":
    raise config_lib.ConfigError("search.batching", "continuous batching needs a policy with "
                                 "a KV cache (a transformer), not a MADE policy")
  config_lib.check(s.sweep_n >= 0, "search.sweep_n", "must be >= 0 (0 = no sweep)")


def check_made_fits(config: ml_collections.ConfigDict, prompt_len: int) -> None:
  """A MADE policy (a fixed number of input positions) must fit the longest beam prefix."""
  s = config.search
  if models.arch_of(config.model) != "made":
    return
  longest = prompt_len + s.max_steps * s.max_step_tokens
  if longest > config.model.max_len:
    raise config_lib.ConfigError(
        "search.max_steps", f"beam prefixes reach {longest} tokens (longest prompt {prompt_len} "
        f"+ max_steps {s.max_steps} x max_step_tokens {s.max_step_tokens}), past the MADE "
        f"policy's model.max_len={config.model.max_len} positions")


def value_fn(model):
  """Beam-search verifier: Q of each right-padded prefix, read at its last token."""
  def fn(vparams, tokens, lengths):
    return verifiers.score(model, vparams, tokens, (lengths - 1)[:, None])[:, 0]
  return fn


def pool_arrays(pool: trajectories.Trajectories, num_problems: int) -> dict[str, np.ndarray]:
  """The pool table's columns as [P, M, ...] arrays, problem by problem."""
  p = num_problems
  m = len(pool) // p

  def per(a):
    return a.reshape(p, m, *a.shape[1:])

  return {"positions": per(pool.prefix_ends), "q_pi": per(pool["q_pi"]), "orm": per(pool["orm"]),
          "correct": per(pool.outcome > 0), "answers": per(pool["answer"]),
          "policy_tokens": per((pool.length - pool.prompt_len).astype(np.int64)),
          "prompt_tokens": per(pool.prompt_len.astype(np.int64))[:, 0]}


class SearchRunner:
  """Loads policy and verifiers once; runs the pool and the beams on a problem set."""

  def __init__(self, env: runtime.JobEnv, config: ml_collections.ConfigDict):
    self.env, self.config, self.cfg = env, config, config.search
    task = env.task
    # Each model is its checkpoint's own family and size (runtime.load_model).
    self.policy = runtime.load_model(env, config.policy.checkpoint, "policy.checkpoint")
    self.verifiers = {k: runtime.load_model(env, getattr(config.verifiers, k), f"verifiers.{k}")
                      for k in ("q", "orm")}
    self.prover = (runtime.load_model(env, config.verifiers.prover, "verifiers.prover")
                   if self.cfg.prover == "verifier" else None)
    self.params = self.policy.params
    self.vparams = {k: v.params for k, v in self.verifiers.items()}
    self.pparams = None if self.prover is None else self.prover.params
    self.sampler = Sampler(cached_lm(self.policy.model), pad_id=task.pad_id)
    self.problems = list(task.split(self.cfg.split))
    if self.cfg.num_problems:
      self.problems = self.problems[:self.cfg.num_problems]
    self.prompts = [task.encode_prompt(p) for p in self.problems]
    self.num_params = self.policy.num_params
    self.max_steps = self.cfg.max_steps or task.max_response_len

  # --- best-of-N pool ------------------------------------------------------------

  def sample_pool(self, m: int, rng) -> tuple[trajectories.Trajectories, dict[str, float]]:
    """m responses per problem (rows problem-major) with both verifiers' prefix Q.

    Columns: `q_pi` and `orm` [B, H+1] (the Q^pi verifier's and the ORM's value of
    every prefix), `answer` [B] (the vote key's id within its problem). Also returns
    the seconds spent sampling (`sample_s`) and in all (`wall_s`).
    """
    env, task = self.env, self.env.task
    t0 = time.time()
    groups = evaluation.sample_responses(
        task, self.sampler, self.params, self.problems, rng=rng, mesh=env.mesh,
        method=Temperature(self.config.sample.temperature), max_new_tokens=task.max_response_len,
        batch_size=self.config.sample.batch_size, num_samples=m, progress=True,
        **evaluation.sampling_options(self.config.sample))
    keys = [[task.answer_key(r.tokens) for r in group] for group in groups]
    rows = [(i, r) for i, group in enumerate(groups) for r in group]
    table = trajectories.from_responses(
        task, [self.prompts[i] for i, _ in rows], [r.tokens for _, r in rows],
        [self.problems[i] for i, _ in rows], [i for i, _ in rows], max_steps=self.max_steps,
        width=max(len(pr) for pr in self.prompts) + task.max_response_len,
        columns={"answer": best_of_n.answer_ids(keys).reshape(-1)})
    sample_s = time.time() - t0
    table = table.with_columns(**{
        name: verifiers.predict_table(v.model, v.params, table, env.mesh, self.cfg.score_batch)
        for name, v in (("q_pi", self.verifiers["q"]), ("orm", self.verifiers["orm"]))})
    return table, {"sample_s": sample_s, "wall_s": time.time() - t0}

  def prover_pool_values(self, pool: trajectories.Trajectories) -> dict[str, np.ndarray]:
    """The prover verifier's Q^mu of every pool prefix ([P, M, H + 1]) and its seconds."""
    t0 = time.time()
    q = verifiers.predict_table(self.prover.model, self.pparams, pool, self.env.mesh,
                                self.cfg.score_batch)
    return {"q_mu": q.reshape(len(self.problems), -1, q.shape[-1]),
            "wall_s": np.float64(time.time() - t0)}

  def pool_scores(self, pool: dict[str, np.ndarray], q_mu: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """Response scores: orm, prm_min / prm_last / prm_prod, and pav (PAV-as-ORM).

    pav's prover is Best-of-K of Q^pi, or the prover verifier's `q_mu` ([P, M, H + 1])
    when given.
    """
    mask = pool["positions"] >= 0  # [P, M, H + 1]; column 0 is the question
    steps = mask[..., 1:]
    last = np.maximum(mask.sum(-1) - 1, 0)
    orm = np.take_along_axis(pool["orm"], last[..., None], -1)[..., 0]
    out = {"orm": orm}
    for how in best_of_n.AGGREGATES:
      out[f"prm_{how}"] = best_of_n.aggregate_steps(pool["q_pi"][..., 1:], steps, how)
    q_pi = pool["q_pi"].reshape(-1, mask.shape[-1])
    m2 = mask.reshape(-1, mask.shape[-1])
    q_mu = (rewards.bok_q(jnp.asarray(q_pi), self.cfg.bok_k) if q_mu is None
            else jnp.asarray(q_mu.reshape(q_pi.shape)))
    eff = np.asarray(verifiers.pav_step_scores(
        jnp.asarray(q_pi), q_mu, jnp.asarray(m2), self.cfg.alpha)).reshape(steps.shape)
    out["pav"] = best_of_n.aggregate_steps(eff, steps, "min")
    return out

  # --- beams ---------------------------------------------------------------------

  def beam(self, method: str, n: int, rng, *, alpha=None, bok_k=None) -> dict[str, Any]:
    """One beam method at budget n over every problem: accuracy and per-problem compute."""
    cfg, task = self.cfg, self.env.task
    score = BEAM_SCORES[method]
    verifier = self.verifiers["orm" if score == "orm" else "q"]
    subtrees = max(n // cfg.dvts_width, 1) if method == "dvts" else 1
    width = n // subtrees
    # Only the pav score has a prover; a verifier prover replaces its closed-form BoK.
    use_prover = score == "pav" and cfg.prover == "verifier"
    # Problems per call: max_rows candidate rows, N x C per problem.
    per_call = min(max(cfg.max_rows // (n * cfg.expansions), 1), len(self.prompts))
    continuous = cfg.get("batching", "static") == "continuous"
    search = StepBeamSearch(
        cached_lm(self.policy.model), value_fn(verifier.model), beam_width=width,
        expansions=cfg.expansions,
        max_steps=self.max_steps, max_step_tokens=cfg.max_step_tokens,
        boundary=task.step_boundary, eos_id=task.eos_id, score=score,
        alpha=cfg.alpha if alpha is None else alpha,
        bok_k=cfg.bok_k if bok_k is None else bok_k,
        method=Temperature(self.config.sample.temperature), pad_id=task.pad_id,
        prover_fn=value_fn(self.prover.model) if use_prover else None,
        # Continuous: the same rows as a static call, problems (or DVTS subtrees) flowing
        # through them; every problem in one run.
        slots=per_call * subtrees if continuous else 0)
    pparams = self.pparams if use_prover else None
    vparams = verifier.params
    # Problem i draws with fold_in(rng, i), however the problems are split into calls:
    # results depend neither on max_rows nor on search.batching.
    keys = sampler_lib.row_keys_for(rng, len(self.prompts))
    t0 = time.time()
    results, per_problem, row_steps = [], {}, 0
    calls = ([(self.prompts, keys)] if continuous else
             [(self.prompts[i:i + per_call], keys[i:i + per_call])
              for i in range(0, len(self.prompts), per_call)])
    for chunk, chunk_keys in calls:
      pad = per_call - len(chunk) if not continuous else 0  # fixed rows: one compile
      padded = chunk + [chunk[0]] * pad
      padded_keys = jnp.concatenate([chunk_keys] + [chunk_keys[:1]] * pad)
      if method == "dvts":
        res = run_dvts(search, self.params, vparams, padded, None, subtrees,
                       prover_params=pparams, problem_keys=padded_keys)
      else:
        res = search.run(self.params, vparams, padded, None, prover_params=pparams,
                         problem_keys=padded_keys)
      results.extend(res.answers[:len(chunk)])
      row_steps += res.decode.get("row_steps", 0)
      for k, v in res.per_problem.items():
        per_problem.setdefault(k, []).extend(v[:len(chunk)].tolist())
    wall = time.time() - t0
    logging.info("%s N=%d: %.0f%% of the policy's decode row-steps generated a token (%s "
                 "batching)", method, n, 100 * sum(per_problem["policy_tokens"]) /
                 max(row_steps, 1), "continuous" if continuous else "static")
    hits = [task.is_correct(a, p).reward for a, p in zip(results, self.problems)]
    return {"accuracy": float(np.mean(hits)), "per_problem": hits, "wall_s": wall,
            **{k: float(np.mean(v)) for k, v in per_problem.items()}}


  def model_sizes(self) -> dict[str, int]:
    """Parameters of each model: policy, the q and orm verifiers, the prover verifier."""
    sizes = {"policy": self.policy.num_params,
             **{k: v.num_params for k, v in self.verifiers.items()}}
    if self.prover is not None:
      sizes["prover"] = self.prover.num_params
    return sizes

  def models(self) -> dict[str, dict[str, Any]]:
    """Which checkpoint each role ran, with its parameter count (results.json, report)."""
    roles = {"policy": self.policy, "verifier_q": self.verifiers["q"],
             "verifier_orm": self.verifiers["orm"], "prover_verifier": self.prover}
    return {role: {"checkpoint": m.path, "params": m.num_params}
            for role, m in roles.items() if m is not None}


def _with_flops(row: dict, sizes: dict[str, int]) -> dict:
  """Adds `flops`, charging each model at its own size: the policy for prefill and
  generated tokens, the method's verifier (the ORM for orm-scored methods, else the
  Q^pi verifier) for the tokens it scores, the prover verifier for its tokens."""
  method = str(row.get("method", ""))
  by_orm = BEAM_SCORES.get(method) == "orm" or method.endswith(":orm")
  verifier = sizes["orm"] if by_orm else sizes["q"]
  return {**row, "flops": compute.flops(row, sizes["policy"], verifier,
                                        sizes.get("prover", verifier))}


# Fields that only choose which (method, N) rows run: changing them keeps finished rows.
SELECTION_FIELDS = ("ns", "beam_ns", "beam_methods", "sweep_n", "alphas", "bok_ks", "max_rows",
                    "num_subsets", "score_batch")


def result_hashes(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(hash a finished row must match, hash the cached pool must match).

  A row depends on everything but the selection fields; the pool on the policy,
  the Q^pi and ORM verifiers (it stores their scores), task, model, seed,
  sampling settings, problems and the pool size max(ns).

  The prover fields change PAV rows, so they are in the row hash, except under
  the default BoK prover, where `verifiers.prover` is never read: both are then
  left out, which also keeps rows written before these fields existed valid
  (the BoK path computes what it did then). The pool's Q^mu is cached apart
  (`prover_hash`), so a prover change never resamples the pool.
  """
  d = config_lib.without_speed_only(config.to_dict())
  s = d["search"]
  search = {k: v for k, v in s.items() if k not in SELECTION_FIELDS}
  verifiers_used = dict(d["verifiers"])
  if s["prover"] == "bok":
    del search["prover"], verifiers_used["prover"]
  rows = {**d, "search": search, "verifiers": verifiers_used}
  pool = {k: d[k] for k in ("policy", "task", "model", "seed", "sample")}
  pool["verifiers"] = {k: v for k, v in d["verifiers"].items() if k != "prover"}
  pool.update(split=s["split"], num_problems=s["num_problems"], max_steps=s["max_steps"],
              pool_size=max(config_lib.parse_list(s["ns"], "search.ns")))
  return artifacts.content_hash(rows), artifacts.content_hash(pool)


def prover_hash(config: ml_collections.ConfigDict) -> str:
  """Hash the cached Q^mu of the pool must match: the pool's and the prover checkpoint."""
  return artifacts.content_hash({"pool": result_hashes(config)[1],
                                   "prover": config.verifiers.prover})


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates every search method of `config.search` and writes curves and tables."""
  env = runtime.setup(config, workdir)
  cfg = config.search
  check_made_fits(config, prompt_len=env.task.max_prompt_len)
  ns = config_lib.parse_list(cfg.ns, "search.ns")
  beam_ns = config_lib.parse_list(cfg.beam_ns, "search.beam_ns")
  beam_methods = config_lib.parse_list(cfg.beam_methods, "search.beam_methods", str)
  alphas = config_lib.parse_list(cfg.alphas, "search.alphas", float)
  bok_ks = config_lib.parse_list(cfg.bok_ks, "search.bok_ks")
  runner = SearchRunner(env, config)
  rng = jax.random.PRNGKey(config.seed)
  out_dir = env.workdir
  chash, pool_hash = result_hashes(config)
  rows_path = os.path.join(out_dir, artifacts.SEARCH_ROWS)
  done = {}
  if os.path.exists(rows_path):
    # A torn last line (a kill mid-write) is dropped, and the file rewritten without
    # it, before new rows are appended after it.
    for r in metrics.repair_jsonl(rows_path):
      if r.get("config_hash") == chash:
        done[(r["method"], r["n"], r.get("variant", ""))] = r

  def record(row: dict) -> dict:
    row = {**row, "config_hash": chash}
    done[(row["method"], row["n"], row.get("variant", ""))] = row
    if metrics.is_lead_process():
      with open(rows_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return row

  # Best-of-N family from one pool.
  m = max(ns)
  pool_dir = os.path.join(out_dir, artifacts.SEARCH_POOL)
  table = trajectories.load_if_complete(pool_dir, pool_hash)
  if table is None:
    table, seconds = runner.sample_pool(m, jax.random.fold_in(rng, 0))
    trajectories.save(pool_dir, table, pool_hash, seconds=seconds)
  else:
    seconds = trajectories.read_manifest(pool_dir)["seconds"]
  pool = pool_arrays(table, len(runner.problems))
  prover_pool = None
  if cfg.prover == "verifier":  # Q^mu of the pool's prefixes, cached beside the pool
    prover_path = os.path.join(out_dir, artifacts.SEARCH_PROVER_POOL)
    phash = prover_hash(config)
    prover_pool = artifacts.load_cached(prover_path, phash)
    if prover_pool is None:
      prover_pool = runner.prover_pool_values(table)
      artifacts.save_cached(prover_path, phash, prover_pool)
  scores = runner.pool_scores(pool, None if prover_pool is None else prover_pool["q_mu"])
  bon_pool = best_of_n.Pool(correct=pool["correct"], answers=pool["answers"], scores=scores,
                            policy_tokens=pool["policy_tokens"], prompt_tokens=pool["prompt_tokens"])
  methods = ["pass", "majority", "weighted:orm", "bon:orm", "bon:prm_min", "bon:prm_last",
             "bon:prm_prod", "bon:pav"]
  for name, curve in best_of_n.accuracy_curves(bon_pool, ns, num_subsets=cfg.num_subsets,
                                        seed=config.seed, methods=methods).items():
    # PAV-as-ORM with a prover verifier also has it read every sample (prompt + response).
    by_prover = name == "bon:pav" and prover_pool is not None
    wall = seconds["wall_s"] + (float(prover_pool["wall_s"]) if by_prover else 0.0)
    for row in curve:
      if (name, row["n"], "") not in done:
        record(_with_flops({"method": name, **row, "wall_s": wall * row["n"] / m,
                            "prover_tokens": row["verifier_tokens"] if by_prover else 0.0},
                           runner.model_sizes()))

  # Beams, then the alpha and K sweeps at sweep_n.
  jobs = [(meth, n, {}) for meth in beam_methods for n in beam_ns]
  if cfg.sweep_n:
    jobs += [("pav_beam", cfg.sweep_n, {"alpha": a}) for a in alphas]
    if cfg.prover == "bok":  # K means nothing to a verifier prover
      jobs += [("pav_beam", cfg.sweep_n, {"bok_k": k}) for k in bok_ks]
  bar = metrics.progress(len(jobs), desc="search")
  for j, (meth, n, kw) in enumerate(jobs):
    variant = ",".join(f"{k}={v}" for k, v in kw.items())
    if (meth, n, variant) not in done:
      res = runner.beam(meth, n, jax.random.fold_in(rng, 1 + j), **kw)
      record(_with_flops({"method": meth, "n": n, "variant": variant, **res},
                         runner.model_sizes()))
    bar.update(1)
  bar.close()

  results = summarize(done, ns, beam_ns, cfg, runner.num_params,
                      prover_checkpoint=config.verifiers.prover)
  results.update({"job": "search", "problems": len(runner.problems), "params": runner.num_params,
                  "models": runner.models(), "seconds": env.record.seconds()})
  artifacts.write_json(os.path.join(out_dir, "results.json"), results)
  if metrics.is_lead_process():
    write_report(results, out_dir)
  return results


ORM_AT_ZERO_NOTE = ("the ORM best-of-N curve stays at accuracy 0 at every N, so no compute "
                    "efficiency ratio is given (any method reaches 0 at its cheapest point)")


def summarize(done: dict, ns: Sequence[int], beam_ns: Sequence[int], cfg, num_params: int,
              prover_checkpoint: str = "") -> dict[str, Any]:
  """Curves per method, efficiency vs ORM best-of-max(N), the sweeps, and the settings.

  `settings.prover` names PAV's prover: 'bok' (with `bok_k`) or 'verifier' (with
  `prover_checkpoint`, the prover's Q^mu verifier).

  When ORM best-of-N is right on no problem at any N, its largest N's accuracy (0) is
  reached by any method at its cheapest point, so every ratio would only compare the
  cheapest compute of two curves: `efficiency_vs_orm` is then empty and
  `efficiency_note` (else None) says why.
  """
  curves: dict[str, list[dict]] = {}
  sweeps: dict[str, list[dict]] = {"alpha": [], "bok_k": []}
  for (method, n, variant), row in sorted(done.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    slim = {k: v for k, v in row.items() if k not in ("per_problem", "config_hash")}
    if row.get("per_problem"):  # n problems and the accuracy's 95% interval over them
      ci = stats.mean_interval(row["per_problem"])
      slim.update(problems=ci.n, low=ci.low, high=ci.high)
    if variant:
      key, _, value = variant.partition("=")
      sweeps[key].append({**slim, key: float(value)})
    elif n in (ns if ":" in method or method in ("pass", "majority") else beam_ns):
      curves.setdefault(method, []).append(slim)
  ref = [(r["flops"], r["accuracy"]) for r in curves.get("bon:orm", [])]
  eff, note = {}, None
  if ref and max(acc for _, acc in ref) <= 0.0:
    note = ORM_AT_ZERO_NOTE
  elif ref:
    for method, rows in curves.items():
      if method not in ("bon:orm", "pass"):
        eff[method] = compute.efficiency(ref, [(r["flops"], r["accuracy"]) for r in rows])
  return {"curves": curves, "efficiency_vs_orm": eff, "efficiency_note": note, "sweeps": sweeps,
          "vs_orm": paired_with(done, "bon:orm"),
          "vs_q_beam": paired_with(done, "q_beam", ("pav_beam", "dvts")),
          "settings": {"alpha": cfg.alpha, "bok_k": cfg.bok_k, "expansions": cfg.expansions,
                       "dvts_width": cfg.dvts_width, "prover": cfg.prover,
                       "prover_checkpoint": prover_checkpoint if cfg.prover == "verifier" else "",
                       "sweep_n": cfg.sweep_n, "flops_per_token": 2 * num_params}}


def paired_with(done: dict, reference: str, methods: Sequence[str] | None = None
                ) -> list[dict]:
  """Each method (all but `reference` and Pass@N, an oracle, by default) at each N
  against `reference` at the same N, paired on the same problems: the mean per-problem
  difference, its 95% interval and the verdict (`pavjax.stats`). Rows without
  per-problem scores, and sweep variants, are left out."""
  ref_rows = {n: row.get("per_problem") for (method, n, variant), row in done.items()
              if method == reference and not variant}
  out = []
  for (method, n, variant), row in sorted(done.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    ref, per = ref_rows.get(n), row.get("per_problem")
    chosen = method in methods if methods is not None else method not in (reference, "pass")
    if variant or not chosen or not ref or not per or len(ref) != len(per):
      continue
    diff = stats.paired_difference(per, ref)
    out.append({"method": method, "n": n, "difference": diff.estimate, "low": diff.low,
                "high": diff.high, "problems": diff.n, "verdict": stats.verdict(diff)})
  return out


def _paired_table(title: str, rows: Sequence[dict], reference: str) -> list[str]:
  if not rows:
    return []
  return (["", f"## {title}", "",
           f"Accuracy minus {reference}'s, with the 95% score interval of the paired "
           "difference; *ahead* or *behind* only where the interval excludes 0.", "",
           "| method | N | difference [95%] | problems | verdict |", "|---|---|---|---|---|"]
          + [f"| {r['method']} | {r['n']} | {r['difference']:+.3f} [{r['low']:+.3f}, "
             f"{r['high']:+.3f}] | {r['problems']} | {r['verdict']} |" for r in rows])


def _acc(row: dict) -> str:
  """A row's accuracy, with its 95% interval where the row has one."""
  if "low" in row:
    return f"{row['accuracy']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"
  return f"{row['accuracy']:.3f}"


def _fmt(x, digits=3):
  return "n/a" if x is None else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))


def prover_label(settings: dict) -> str:
  """One line naming PAV's prover, for reports."""
  if settings.get("prover", "bok") == "verifier":
    return (f"a separate prover policy's Q^mu verifier ({settings['prover_checkpoint']}); "
            f"its tokens are `prover tokens`")
  k = settings["bok_k"]
  return f"Best-of-{k} of pi, Q^mu = 1 - (1 - Q^pi)^{k} from the Q^pi verifier (no model call)"


def write_report(results: dict, out_dir: str) -> None:
  """results.md with the accuracy tables and plots of the curves and sweeps."""
  curves = results["curves"]
  settings = results["settings"]
  ns = sorted({r["n"] for rows in curves.values() for r in rows})
  lines = ["# Search results", "",
           f"{results['problems']} problems, policy/verifier {results['params']:,} params; "
           f"FLOPs = 2 x params x tokens per problem.", "",
           f"PAV prover (pav_beam, dvts, bon:pav; alpha={settings['alpha']:g}): "
           f"{prover_label(settings)}.", "",
           "Accuracies carry their 95% interval over the problems (Wilson's for a beam's 0/1 "
           "answers, the score interval of a mean for best-of-N's averages over random "
           "subsets of the pool; `pavjax.stats`).", "",
           "## Accuracy by N", "", "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
           "|---|" + "---|" * len(ns)]
  for method, rows in curves.items():
    by_n = {r["n"]: r for r in rows}
    lines.append(f"| {method} | " + " | ".join(_acc(by_n[n]) if n in by_n else "n/a"
                                               for n in ns) + " |")
  lines += _paired_table("Against ORM best-of-N at the same N (paired on the problems)",
                         results.get("vs_orm") or [], "ORM best-of-N")
  lines += _paired_table("PAV beams against the Q^pi-only beam at the same N (paired)",
                         results.get("vs_q_beam") or [], "the Q^pi beam")
  lines += ["", "## Compute at the largest N (per problem)", "",
            "| method | N | accuracy | policy tokens | verifier tokens | prover tokens | FLOPs "
            "| wall s (all problems) | no finished response |",
            "|---|---|---|---|---|---|---|---|---|"]
  for method, rows in curves.items():
    r = max(rows, key=lambda r: r["n"])
    # Beams answer from finished responses only; best-of-N rows have no such count.
    none_finished = (f"{r['no_finished']:.1%} of problems" if "no_finished" in r else "-")
    lines.append(f"| {method} | {r['n']} | {_acc(r)} | {r['policy_tokens']:.0f} | "
                 f"{r['verifier_tokens']:.0f} | {r.get('prover_tokens', 0):.0f} | "
                 f"{r['flops']:.3g} | {r['wall_s']:.1f} | {none_finished} |")
  eff = results["efficiency_vs_orm"]
  lines += ["", "## Compute efficiency vs ORM best-of-N at its largest N", ""]
  if results.get("efficiency_note"):
    lines += [f"No ratios: {results['efficiency_note']}.", ""]
  if eff and not next(iter(eff.values()))["reference_rises"]:
    lines += ["**The ORM best-of-N curve does not rise to its largest N** (a cheaper N already "
              "reaches its final accuracy), so these ratios do not measure efficiency.", ""]
  if eff:
    lines += ["| method | target accuracy | FLOPs needed / ORM's | speed-up |",
              "|---|---|---|---|"]
  for method, e in eff.items():
    lines.append(f"| {method} | {e['target_accuracy']:.3f} | {_fmt(e['compute_ratio'])} | "
                 f"{_fmt(e['speedup'])} |")
  # A workdir keeps the sweep rows of every sweep_n it ran: one table row and one
  # curve per (N, value).
  sweep_ns = {key: sorted({r["n"] for r in rows}) for key, rows in results["sweeps"].items()}
  for key, rows in results["sweeps"].items():
    if rows:
      lines += ["", f"## PAV beam sweep over {key} (N={', '.join(map(str, sweep_ns[key]))})",
                "", f"| N | {key} | accuracy | FLOPs |", "|---|---|---|---|"]
      lines += [f"| {r['n']} | {r[key]:g} | {_acc(r)} | {r['flops']:.3g} |"
                for r in sorted(rows, key=lambda r: (r["n"], r[key]))]
  series_n = {m: [(r["n"], r["accuracy"]) for r in rows] for m, rows in curves.items()}
  series_f = {m: [(r["flops"], r["accuracy"]) for r in rows] for m, rows in curves.items()
              if m != "pass"}
  bands_n = {m: [(r["n"], r["low"], r["high"]) for r in rows if "low" in r]
             for m, rows in curves.items()}
  bands_f = {m: [(r["flops"], r["low"], r["high"]) for r in rows if "low" in r]
             for m, rows in curves.items() if m != "pass"}
  metrics.plot_series(series_n, os.path.join(out_dir, "accuracy_vs_n.png"), xlabel="N",
                      ylabel="accuracy", log_base=2, title="accuracy vs N (95% bands)",
                      bands=bands_n)
  metrics.plot_series(series_f, os.path.join(out_dir, "accuracy_vs_flops.png"),
                      xlabel="FLOPs per problem", ylabel="accuracy", log_base=10,
                      title="accuracy vs compute (95% bands)", bands=bands_f)
  for key, rows in results["sweeps"].items():
    if rows:
      metrics.plot_series({f"pav_beam, N={n}": [(r[key], r["accuracy"]) for r in rows
                                                 if r["n"] == n] for n in sweep_ns[key]},
                          os.path.join(out_dir, f"sweep_{key}.png"), xlabel=key,
                          ylabel="accuracy", log_base=2 if key == "bok_k" else None,
                          title=f"PAV beam sweep over {key}",
                          bands={f"pav_beam, N={n}": [(r[key], r["low"], r["high"])
                                                       for r in rows
                                                       if r["n"] == n and "low" in r]
                                 for n in sweep_ns[key]})
  lines += ["", "![accuracy vs N](accuracy_vs_n.png)", "",
            "![accuracy vs FLOPs](accuracy_vs_flops.png)", ""]
  with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
