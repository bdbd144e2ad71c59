"""Next-token training on (prompt, response) sequences: the trainer SFT and RFT share.

SFT trains on a task's reference solutions, RFT on the policy's own correct
samples; both then evaluate on validation problems and write samples.md,
loss.png and summary.json the same way.
"""

from __future__ import annotations

import functools
import logging
import os

import jax

from pavjax import artifacts
from pavjax import config_lib
from pavjax import evaluation
from pavjax import metrics
from pavjax import runtime
from pavjax import sharding as shd
from pavjax import tasks
from pavjax import training
from pavjax.sampling import Sampler, cached_lm
from pavjax.sampling import methods as sampling_methods


def sft_train_step(state: training.TrainState, batch, *, model, tx, nonfinite: str,
                   logits_chunk: int = 0):
  """One AdamW step on the masked next-token loss of a [B, T] batch.

  The LM head and its log-softmax run `logits_chunk` positions at a time
  (`train.logits_chunk`; 0 = all at once), so a large vocabulary never needs
  [B, T, V] logits (`training.token_stats`).
  """

  def loss_fn(params):
    return training.sequence_cross_entropy(model, params, batch["inputs"], batch["targets"],
                                           batch["mask"], chunk=logits_chunk)

  (loss, token_acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state, grad_norm = training.apply_update(state, grads, tx, loss=loss, nonfinite=nonfinite)
  return new_state, {"train/loss": loss, "train/token_accuracy": token_acc,
                     "train/grad_norm": grad_norm}


def train(env: runtime.JobEnv, data: tasks.SFTArrays | None, *, job: str,
          extra: dict | None = None) -> dict:
  """Next-token training on `data` (SFT, or RFT on the policy's own correct samples).

  Evaluates on the validation split, writes samples.md, loss.png and summary.json
  (with `extra` merged in) and returns the summary.

  `data=None` trains nothing: the starting state (`init_from`) is saved as the
  workdir's checkpoint step 0, unless that step is already there (a rerun), and
  is what gets evaluated. Jobs that read `<workdir>/checkpoints` downstream then
  get the initial parameters unchanged.
  """
  config = env.config
  task, mesh, rules, model = env.task, env.mesh, env.rules, env.model
  if data is not None:
    data = data.trimmed()
    logging.info("%s on %d %s examples of %d columns", job, len(data), task.name,
                 data.inputs.shape[1])

  trainer = runtime.make_trainer(env, functools.partial(
      sft_train_step, logits_chunk=config.train.get("logits_chunk", 0)))
  state, checkpointer = trainer.state, trainer.checkpointer

  def batch_fn(step, _):
    idx = training.batch_indices(config.seed, step, len(data), config.train.batch_size)
    return shd.shard_batch({"inputs": data.inputs[idx], "targets": data.targets[idx],
                            "mask": data.mask[idx]}, mesh)

  sampler = Sampler(cached_lm(model), pad_id=task.pad_id)
  method = sampling_methods.from_config(config.sample)
  eval_problems = list(task.split("validation"))[:config.sample.num_eval]
  eval_writer = metrics.MetricWriter(env.workdir, "eval")

  def eval_fn(st, step):
    with shd.activate(mesh, rules):
      responses = evaluation.sample_responses(
          task, sampler, st.params, eval_problems, rng=jax.random.PRNGKey(config.seed + 17),
          mesh=mesh, method=method, max_new_tokens=config.sample.max_new_tokens,
          batch_size=config.sample.batch_size, **evaluation.sampling_options(config.sample))
    summary = evaluation.summarize(responses)
    eval_writer.write(step, {f"eval/{k}": v for k, v in summary.items()})
    return responses, summary

  writer = metrics.MetricWriter(env.workdir, "metrics")
  if data is None:
    kept = checkpointer.latest_step()
    if kept:  # a trained step: not the initial policy this call promises to keep
      raise config_lib.ConfigError(
          "workdir", f"{checkpointer.directory} holds checkpoints up to step {kept} trained "
          f"on other data; {job} has nothing to train on now and would keep the initial "
          "policy: move that directory aside")
    if kept is None:
      checkpointer.save(0, state)
    checkpointer.wait()
    last = {}
  else:
    with shd.activate(mesh, rules):
      state, last = training.train_loop(
          state, trainer.step_fn, batch_fn, train_cfg=config.train, checkpointer=checkpointer,
          writer=writer, eval_fn=eval_fn, desc=job)
  step = int(jax.device_get(state.step))
  responses, summary = eval_fn(state, step)
  summary = {**summary, **evaluation.per_problem_outcomes(responses)}  # paired comparisons
  checkpointer.close()
  writer.close()
  eval_writer.close()

  if metrics.is_lead_process():
    with open(os.path.join(env.workdir, "samples.md"), "w", encoding="utf-8") as f:
      f.write(f"# {job} samples at step {step} ({config.sample.method} decoding)\n\n")
      f.write(evaluation.sample_table(task, responses))
    metrics.plot_curves(metrics.read_jsonl(writer.path), ["train/loss", "train/token_accuracy"],
                        os.path.join(env.workdir, "loss.png"), title=f"{job} on {task.name}")
  out = {**(extra or {}), "job": job, "task": task.name, "step": step, "origin": trainer.run_origin,
         "params": env.model_cfg.num_params(), "seconds": env.record.seconds(),
         "final_train": last, "eval": summary, "data": task.data_report(),
         "halted": data is not None and step < config.train.num_steps}
  artifacts.write_json(os.path.join(env.workdir, artifacts.SUMMARY), out)
  logging.info("%s done at step %d: %s", job, step,
               {k: v for k, v in summary.items() if not isinstance(v, list)})
  return out
