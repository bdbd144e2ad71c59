"""Online RL with dense PAV rewards or outcome rewards (arXiv 2410.08146, Sec. 5, App. E).

Each iteration:
  1. `rl.num_prompts` training problems (a pure function of seed and step, so a
     resume is exact), `rl.group_size` samples each from the current policy
     (one prefill per prompt, forked; `sample.batching=continuous` decodes the rows
     through an arena of rows / `sample.continuous_blocks`, a stopped row taking the
     next (prompt, sample) with the key its static row has: the same responses);
  2. on the host, the batch as a trajectory table (`trajectories.from_responses`):
     outcome Rex, steps, prefix ends; token step ids and the loss mask are its views;
  3. the frozen prover scores every prefix -> Q^mu, and step advantages
     A^mu_h = Q^mu(after step h) - Q^mu(before it), the question-only prefix
     being step 1's baseline;
  4. per-token returns, Eq. 5: Rex + alpha * (step h's own term), shared by
     every token of step h (`rewards.token_rewards`), never summed over later
     steps;
  5. one policy-gradient step with the named estimator (`pavjax.rl.estimators`),
     an optional KL penalty to the initial policy and the learned value baseline.

The value baseline (`rl.value_model`):
  head      a scalar head on the policy's trunk, fitted on detached features, so
            the baseline never changes the policy (cheap: one network);
  separate  a second network of the policy's architecture, initialised from the
            same checkpoint as the policy (the paper's choice, Sec. 5 / App. E),
            whose whole trunk fits the returns. Both live in one train state
            (`models.PolicyAndValue`: params {'policy', 'value'}) with an
            optimizer each (own clipping and moments); samplers, evaluations,
            the KL reference and later jobs read `params['policy']`. It costs a
            second network's memory and a second forward/backward per update.

Reward variants (`rl.reward`):
  outcome   alpha * 0: Rex only
  pav       Rex + alpha * A^mu(s_h, a_h)
  q_bonus   Rex + alpha * Q^mu(s_h, a_h), the paper's negative control (App. G)
Provers (`rl.prover.kind`): bok (Best-of-K of a Q^pi verifier, closed form),
verifier (a separate prover's Q verifier), procedural (planted's exact mu_gamma).

Logs every step: outcome accuracy next to the dense verifier reward; a monitor
warns when the dense reward rises over a window while accuracy does not (reward
hacking). Evaluates greedy accuracy and Pass@N on validation problems: scalars in
eval.jsonl, each evaluation's per-problem outcomes in eval_outcomes.jsonl.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pavjax import artifacts
from pavjax import config_lib
from pavjax import metrics
from pavjax import models
from pavjax import rewards
from pavjax import sharding as shd
from pavjax import training
from pavjax import verifiers
from pavjax import runtime
from pavjax import trajectories
from pavjax.rl import estimators
from pavjax import evaluation
from pavjax.sampling import Sampler, Temperature, cached_lm, left_pad
from pavjax.sampling import methods as sampling_methods
from pavjax.search import best_of_n

REWARDS = ("outcome", "pav", "q_bonus")
PROVERS = ("bok", "verifier", "procedural")
VALUE_MODELS = ("head", "separate")
# Estimators that subtract the learned value (the others never read it).
VALUE_ESTIMATORS = ("reinforce_value",)


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every field this job reads, checked before any compute; errors name the field."""
  config_lib.validate(config, num_devices)
  cfg = config.rl
  config_lib.check_choice(cfg.reward, REWARDS, "rl.reward")
  config_lib.check_choice(cfg.estimator, tuple(sorted(estimators.ESTIMATORS)), "rl.estimator")
  value_model = cfg.get("value_model", "head")
  config_lib.check_choice(value_model, VALUE_MODELS, "rl.value_model")
  if value_model == "separate":
    config_lib.check(cfg.estimator in VALUE_ESTIMATORS, "rl.value_model",
                     f"'separate' trains a value network that rl.estimator={cfg.estimator!r} "
                     f"never reads; use it with {VALUE_ESTIMATORS} or set 'head'")
  config_lib.check_finite(cfg.alpha, "rl.alpha")
  for field in ("temperature",):
    config_lib.check_finite(cfg[field], f"rl.{field}", minimum=1e-6)
  for field in ("kl_coef", "value_coef", "log_ratio_clamp", "monitor_min_rise"):
    config_lib.check_finite(cfg[field], f"rl.{field}", minimum=0.0)
  for field in ("num_prompts", "group_size"):
    config_lib.check(cfg[field] > 0, f"rl.{field}", f"{cfg[field]} must be > 0")
  config_lib.check(cfg.max_steps >= 0, "rl.max_steps", "must be >= 0 (0 = max_new_tokens)")
  dp = config_lib.data_parallel_size(config, num_devices)
  config_lib.check(cfg.num_prompts % dp == 0, "rl.num_prompts",
                   f"{cfg.num_prompts} is not a multiple of the data-parallel size {dp} (mesh "
                   "data*fsdp): the prompts of a batch are split over those devices")
  rows = cfg.num_prompts * cfg.group_size
  config_lib.check(rows == config.train.batch_size, "train.batch_size",
                   f"{config.train.batch_size} must equal rl.num_prompts * rl.group_size = {rows}")
  pass_ns = config_lib.parse_list(cfg.eval_pass_ns, "rl.eval_pass_ns")
  config_lib.check(all(n > 0 for n in pass_ns), "rl.eval_pass_ns", "every N must be > 0")
  if cfg.reward != "outcome":
    config_lib.check_choice(cfg.prover.kind, PROVERS, "rl.prover.kind")
    if cfg.prover.kind in ("bok", "verifier"):
      config_lib.check_set(cfg.prover.verifier, "rl.prover.verifier",
                           f"rl.prover.kind={cfg.prover.kind!r} needs a q verifier's checkpoints")
    if cfg.prover.kind == "bok":
      config_lib.check(cfg.prover.bok_k >= 1, "rl.prover.bok_k", "must be >= 1")


def rl_train_step(state: training.TrainState, batch, *, model, tx, nonfinite: str,
                  estimator: str, group_size: int, kl_coef: float, value_coef: float,
                  log_ratio_clamp: float, logits_chunk: int = 0, separate_value: bool = False):
  """One policy-gradient step on a [B, W] batch of sampled responses.

  Position t of the arrays describes token t: its return, whether the loss
  covers it, and its log-prob under the reference policy. The policy's log-prob
  of token t comes from the logits at t - 1, and so does its value baseline.
  The LM head runs `logits_chunk` positions at a time (`train.logits_chunk`; 0 =
  all at once): only the chosen tokens' log-probs and the entropies leave it.

  With `separate_value`, `state.params` is {'policy', 'value'} (both trees of
  `model`): the baseline comes from the value network, whose gradient is the
  value loss's alone, and the policy's from the policy loss alone.
  """
  est = estimators.get(estimator)

  def loss_fn(params):
    tokens, targets = batch["tokens"], batch["tokens"][:, 1:]
    if separate_value:
      head, _ = training.token_stats(model, params["policy"], tokens, targets,
                                     chunk=logits_chunk, entropy=True)
      all_values = model.apply({"params": params["value"]}, tokens, logits=False,
                               values=True).values
    else:
      head, all_values = training.token_stats(
          model, params, tokens, targets, chunk=logits_chunk, entropy=True,
          values=True, detach_values=True)
    logp = head.logp  # [B, W - 1]
    mask = batch["mask"][:, 1:]
    returns = batch["returns"][:, 1:]
    values = all_values[:, :-1]
    adv = est(returns, mask, batch["outcome"][:, 0], values, group_size)
    loss, stats = estimators.policy_loss(
        logp, adv, mask, ref_logp=batch["ref_logp"][:, 1:], kl_coef=kl_coef,
        log_ratio_clamp=log_ratio_clamp)
    value_loss = estimators.masked_mean(jnp.square(values - returns), mask)
    entropy = estimators.masked_mean(head.entropy, mask)
    stats.update({"rl/value_loss": value_loss, "rl/entropy": entropy,
                  "rl/advantage": estimators.masked_mean(adv, mask)})
    return loss + value_coef * value_loss, stats

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state, grad_norm = training.apply_update(state, grads, tx, loss=loss, nonfinite=nonfinite)
  stats.update({"train/loss": loss, "train/grad_norm": grad_norm,
                "rl/accuracy": jnp.mean(batch["outcome"]),
                "rl/dense_reward": jnp.mean(batch["dense"]),
                "rl/response_tokens": jnp.sum(batch["mask"]) / batch["mask"].shape[0]})
  return new_state, stats


def token_logprobs(model, params, tokens: jax.Array, logits_chunk: int = 0) -> jax.Array:
  """[B, W] log-prob of token t given tokens < t (0 at t = 0); LM head in chunks."""
  stats, _ = training.token_stats(model, params, tokens, tokens[:, 1:], chunk=logits_chunk)
  return jnp.pad(stats.logp, ((0, 0), (1, 0)))


class ProverValues:
  """Q^mu of every prefix of a batch: from a verifier (BoK of Q^pi, or another policy's Q^mu)
  or exactly, from the task's procedural prover (`rl.prover.kind`)."""

  def __init__(self, env: runtime.JobEnv, cfg):
    self.kind, self.k = cfg.kind, cfg.bok_k
    self.env = env
    if cfg.kind == "procedural":  # arith's line prover, planted's mu_gamma
      try:
        self.prefix_values = env.task.procedural_prover(cfg)
      except NotImplementedError as e:
        raise config_lib.ConfigError("rl.prover.kind", f"'procedural': {e}") from None
    else:
      # Its own family and size: e.g. a small prover's Q^mu verifier for a large policy.
      self.verifier = runtime.load_model(env, cfg.verifier, "rl.prover.verifier")
      self.params = self.verifier.params

  def q_values(self, table: trajectories.Trajectories, problems) -> np.ndarray:
    """[B, H + 1] Q^mu after the question (column 0) and after each step (0 where absent).

    `problems`: the Problem of each row (the procedural provers read them).
    """
    mask = trajectories.prefix_mask(table)
    if self.kind == "procedural":
      responses = [table.response(i) for i in range(len(table))]
      values = self.prefix_values(problems, responses, mask.shape[1])
      # A response that emitted EOS is complete: its value after the last step is
      # its outcome, whatever the prover would have written (arith's line prover
      # compares lines only, so without this an early EOS after right lines kept
      # p^(L-h), and a right answer after a wrong line got 0).
      rows = np.flatnonzero(table.finished & (mask.sum(1) > 1))
      values[rows, mask[rows].sum(1) - 1] = table.outcome[rows]
      return np.where(mask, values, 0.0)
    batch = shd.shard_batch({"tokens": table.tokens, "positions": table.prefix_ends},
                            self.env.mesh)
    q = np.asarray(shd.to_host(verifiers.score(self.verifier.model, self.params, batch["tokens"],
                                                  batch["positions"])))
    if self.kind == "bok":
      q = np.asarray(rewards.bok_q(jnp.asarray(q), self.k))
    return np.where(mask, q, 0.0)


def policy_and_value(policy_params):
  """{'policy', 'value'} parameters with the value network a copy of the policy."""
  return {"policy": policy_params, "value": jax.tree.map(jnp.copy, policy_params)}


def per_network_optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` applied to the 'policy' and the 'value' parameters apart: each network
  clips its own gradient and keeps its own moments."""
  return optax.multi_transform({"policy": tx, "value": tx},
                               lambda params: {k: k for k in params})  # a prefix of the tree


def separate_value_model(env: runtime.JobEnv) -> dict:
  """`runtime.make_trainer`'s keywords for `rl.value_model='separate'`: the state
  holds `models.PolicyAndValue`, `init_from` fills both networks, and each network
  has its own optimizer (`per_network_optimizer`)."""
  return {"state_model": models.PolicyAndValue(env.model_cfg), "wrap_init": policy_and_value,
          "wrap_tx": per_network_optimizer}


def dense_terms(kind: str, q_mu: np.ndarray, step_mask: np.ndarray) -> np.ndarray:
  """[B, H] the per-step term alpha multiplies: A^mu (pav), Q^mu (q_bonus) or 0 (outcome)."""
  if kind == "outcome":
    return np.zeros(step_mask.shape, np.float32)
  if kind == "q_bonus":
    return np.where(step_mask, q_mu[:, 1:], 0.0).astype(np.float32)
  return np.asarray(rewards.step_advantages(jnp.asarray(q_mu[:, 1:]), jnp.asarray(q_mu[:, 0]),
                                            jnp.asarray(step_mask)), np.float32)


class HackingMonitor:
  """Warns when the dense reward rises over a window while outcome accuracy does not.

  With `path`, each step's (accuracy, dense reward) is also written to a JSONL file
  (`metrics.MetricWriter`, idempotent per step), and `resume(step)` replays the
  steps up to a resumed checkpoint, so a resumed run keeps the alerts and the
  windows an uninterrupted one has.
  """

  def __init__(self, window: int, min_rise: float, path: str | None = None):
    self.window, self.min_rise = window, min_rise
    self.acc: list[float] = []
    self.dense: list[float] = []
    self.alerts: list[int] = []
    self._writer = (metrics.MetricWriter(os.path.dirname(path),
                                         os.path.basename(path).removesuffix(".jsonl"),
                                         tensorboard=False) if path else None)

  def resume(self, step: int) -> None:
    """Replays the recorded steps 1..`step` (quietly): the history of the checkpoint."""
    if self._writer is None or not self._writer.enabled:
      return
    for row in metrics.read_jsonl(self._writer.path):
      if int(row["step"]) <= step:
        self._judge(int(row["step"]), row["accuracy"], row["dense"], log=False)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()

  def update(self, step: int, accuracy: float, dense: float) -> bool:
    if self._writer is not None:
      self._writer.write(step, {"accuracy": accuracy, "dense": dense})
    return self._judge(step, accuracy, dense)

  def _judge(self, step: int, accuracy: float, dense: float, log: bool = True) -> bool:
    self.acc.append(accuracy)
    self.dense.append(dense)
    w = self.window
    if w <= 0 or len(self.acc) < 2 * w or step % w:
      return False
    d_now, d_before = np.mean(self.dense[-w:]), np.mean(self.dense[-2 * w:-w])
    a_now, a_before = np.mean(self.acc[-w:]), np.mean(self.acc[-2 * w:-w])
    if d_now - d_before > self.min_rise and a_now <= a_before:
      if log:
        logging.warning("step %d: dense verifier reward rose %.4f -> %.4f while outcome "
                        "accuracy went %.3f -> %.3f: the policy may be exploiting the verifier",
                        step, d_before, d_now, a_before, a_now)
      self.alerts.append(step)
      return True
    return False


def continuous_arena(config: ml_collections.ConfigDict, mesh) -> int:
  """Decode rows of the per-iteration sampling (0 = static batching): with
  `sample.batching=continuous`, rows / `sample.continuous_blocks`."""
  return evaluation.one_call_arena(config.rl.num_prompts * config.rl.group_size,
                                   config.sample, mesh)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """RL from `config.init_from` (an SFT / RFT checkpoint) with the configured reward."""
  env = runtime.setup(config, workdir)
  cfg, task, mesh, rules, model = config.rl, env.task, env.mesh, env.rules, env.model
  rows = cfg.num_prompts * cfg.group_size
  prover = ProverValues(env, cfg.prover) if cfg.reward != "outcome" else None
  separate = cfg.get("value_model", "head") == "separate"
  trainer = runtime.make_trainer(env, functools.partial(
      rl_train_step, estimator=cfg.estimator, group_size=cfg.group_size, kl_coef=cfg.kl_coef,
      value_coef=cfg.value_coef, log_ratio_clamp=cfg.log_ratio_clamp,
      logits_chunk=config.train.get("logits_chunk", 0), separate_value=separate),
      **(separate_value_model(env) if separate else {}))
  state, checkpointer, origin = trainer.state, trainer.checkpointer, trainer.origin
  if origin == "scratch":
    logging.warning("RL starts from random weights: set config.init_from to an SFT checkpoint")
    if separate:  # the value network starts as a copy of the policy, as from a checkpoint
      state = state.replace(params=policy_and_value(state.params["policy"]))
  policy = (lambda params: params["policy"]) if separate else (lambda params: params)
  ref_params = None
  if cfg.kl_coef:  # the reference is the initial policy, also when a run resumes
    ref_params = (runtime.load_params(env, config.init_from, "init_from") if config.init_from
                  else jax.tree.map(jnp.copy, policy(state.params)))
  logp_fn = jax.jit(functools.partial(token_logprobs, model,
                                      logits_chunk=config.train.get("logits_chunk", 0)))

  sampler = Sampler(cached_lm(model), pad_id=task.pad_id)
  train_problems = list(task.split("train"))
  max_new = config.sample.max_new_tokens
  prompt_width = max(len(task.encode_prompt(p)) for p in train_problems[:4096])
  width = prompt_width + max_new
  max_steps = cfg.max_steps or max_new
  monitor = HackingMonitor(cfg.monitor_window, cfg.monitor_min_rise,
                           path=os.path.join(env.workdir, "rl_steps.jsonl"))
  monitor.resume(int(jax.device_get(state.step)))
  method = Temperature(cfg.temperature)
  arena = continuous_arena(config, mesh)
  useful = []  # (row-steps decoding a live response, row-steps run) per continuous batch

  def batch_fn(step, st):
    rng = np.random.default_rng([config.seed, step])
    idx = rng.choice(len(train_problems), cfg.num_prompts, replace=False)
    problems = [train_problems[i] for i in idx]
    prompts = [task.encode_prompt(p) for p in problems]
    tokens, lengths = left_pad(prompts, task.pad_id, buckets=(prompt_width,))
    tokens = jax.device_put(tokens, shd.batch_sharding(mesh, 2))
    lengths = jax.device_put(lengths, shd.batch_sharding(mesh, 1))
    out = evaluation.generate_in_one_call(
        sampler, policy(st.params), tokens, lengths,
        jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step), arena=arena,
        num_samples=cfg.group_size, max_new_tokens=max_new, method=method,
        stop_tokens=(task.eos_id,))
    if arena:
      useful.append((int(out.busy), int(out.steps) * arena))
    out = shd.to_host(out)
    g = cfg.group_size
    responses = [[int(t) for t in out.tokens[r, :int(out.lengths[r])]] for r in range(rows)]
    row_problems = [problems[r // g] for r in range(rows)]
    table = trajectories.from_responses(
        task, [prompts[r // g] for r in range(rows)], responses, row_problems,
        [idx[r // g] for r in range(rows)], max_steps=max_steps, width=width)
    steps = trajectories.step_mask(table)
    if prover is not None:
      terms = dense_terms(cfg.reward, prover.q_values(table, row_problems), steps)
    else:
      terms = np.zeros(steps.shape, np.float32)
    alpha = cfg.alpha if cfg.reward != "outcome" else 0.0
    returns = np.asarray(rewards.token_rewards(table.outcome, terms,
                                               trajectories.token_step_ids(table), alpha))
    dense = alpha * terms.sum(1)
    arrays = {"tokens": table.tokens,
              "mask": trajectories.loss_mask(table, mask_unfinished=cfg.mask_truncated),
              "returns": returns.astype(np.float32), "outcome": table.outcome[:, None],
              "dense": dense[:, None].astype(np.float32)}
    arrays = shd.shard_batch(arrays, mesh)
    arrays["ref_logp"] = (logp_fn(ref_params, arrays["tokens"]) if ref_params is not None
                          else jnp.zeros_like(arrays["returns"]))
    monitor.update(step + 1, float(table.outcome.mean()), float(dense.mean()))
    return arrays

  eval_problems = list(task.split("validation"))[:config.sample.num_eval]
  eval_writer = metrics.MetricWriter(env.workdir, "eval")
  # Every evaluation's per-problem outcomes, so that the report can pair two RL runs over
  # their whole curves (sample efficiency), not only at their last step.
  outcomes_writer = metrics.MetricWriter(
      env.workdir, os.path.splitext(artifacts.EVAL_OUTCOMES_LOG)[0], tensorboard=False)
  pass_ns = config_lib.parse_list(cfg.eval_pass_ns, "rl.eval_pass_ns")

  evaluated = {}  # step -> result: the loop's evaluation of the last step is the final one
  options = evaluation.sampling_options(config.sample)

  def eval_fn(st, step):
    t0 = time.time()
    key = jax.random.PRNGKey(config.seed + 17)
    greedy = evaluation.sample_responses(
        task, sampler, policy(st.params), eval_problems, rng=key, mesh=mesh,
        method=sampling_methods.from_config(config.sample), max_new_tokens=max_new,
        batch_size=config.sample.batch_size, **options)
    result = {"accuracy": evaluation.summarize(greedy)["accuracy"]}
    if pass_ns:
      pool = evaluation.sample_responses(
          task, sampler, policy(st.params), eval_problems, rng=key, mesh=mesh, method=method,
          max_new_tokens=max_new, batch_size=config.sample.batch_size * max(pass_ns),
          num_samples=max(pass_ns), **options)
      correct = np.array([[r.outcome.reward > 0 for r in g] for g in pool])
      curve = best_of_n.accuracy_curves(
          best_of_n.Pool(correct, np.zeros(correct.shape, np.int64), {},
                         np.zeros(correct.shape), np.zeros(len(correct))),
          pass_ns, methods=["pass"], seed=config.seed)["pass"]
      result.update({f"pass_at_{r['n']}": r["accuracy"] for r in curve})
      result["sample_accuracy"] = float(correct.mean())
    eval_writer.write(step, {**{f"eval/{k}": v for k, v in result.items()},
                             "perf/eval_seconds": time.time() - t0})
    # Per-problem outcomes pair RL runs in the report: at the end (summary.json) and over
    # the run (eval_outcomes.jsonl).
    outcomes = evaluation.per_problem_outcomes(greedy)
    outcomes_writer.write(step, outcomes)
    result.update(outcomes)
    evaluated[step] = result
    return result

  writer = metrics.MetricWriter(env.workdir, "metrics")
  with shd.activate(mesh, rules):
    # The evaluation before the first update is stored when first made (run.json) and
    # reused by every resumed attempt; a workdir older than that record has none.
    if origin.startswith("checkpoint"):
      first = env.record.get("initial_eval")
    else:
      first = env.record.once("initial_eval",
                              lambda: eval_fn(state, int(jax.device_get(state.step))))
    state, last = training.train_loop(state, trainer.step_fn, batch_fn, train_cfg=config.train,
                                    checkpointer=checkpointer, writer=writer, eval_fn=eval_fn,
                                    desc=f"rl/{cfg.reward}")
    step = int(jax.device_get(state.step))
    final = evaluated[step] if step in evaluated else eval_fn(state, step)
  checkpointer.close()
  writer.close()
  eval_writer.close()
  outcomes_writer.close()
  monitor.close()
  if metrics.is_lead_process():
    metrics.plot_curves(metrics.read_jsonl(writer.path),
                        ["rl/accuracy", "rl/dense_reward", "rl/kl", "rl/entropy"],
                        os.path.join(env.workdir, "rl.png"), title=f"RL ({cfg.reward})")
  out = {"job": "rl", "reward": cfg.reward, "alpha": cfg.alpha, "estimator": cfg.estimator,
         "step": step, "origin": trainer.run_origin, "initial_eval": first, "eval": final,
         "final_train": last, "hacking_alerts": monitor.alerts, "seconds": env.record.seconds(),
         "halted": step < config.train.num_steps,
         "models": {"policy": {"checkpoint": config.init_from,
                               "params": env.model_cfg.num_params()}}}
  if separate:
    out["models"]["value"] = {"checkpoint": config.init_from,
                              "params": env.model_cfg.num_params()}
  if prover is not None and prover.kind != "procedural":
    out["models"]["prover_verifier"] = {"checkpoint": prover.verifier.path,
                                        "params": prover.verifier.num_params}
  if useful:  # this attempt's batches: how much of the arena's decode did useful work
    busy, ran = map(sum, zip(*useful))
    out["sampling"] = {"batching": "continuous", "arena_rows": arena,
                       "useful_slots": busy / max(ran, 1)}
    logging.info("rl sampling: %.1f%% of an arena of %d rows decoded live responses "
                 "(sample.batching=continuous)", 100 * busy / max(ran, 1), arena)
  artifacts.write_json(os.path.join(env.workdir, "summary.json"), out)
  return out
