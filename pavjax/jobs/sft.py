"""SFT: next-token prediction on a task's reference solutions.

Writes to the workdir: checkpoints/, metrics.jsonl + tensorboard/, eval.jsonl,
samples.md (a table of sampled solutions with rewards), loss.png, summary.json.
The trainer is `pavjax.supervised` (RFT uses it too).

A run that trained to its last step ends on the test split: the final policy answers
the first `sample.num_eval` test problems (the sampling method of `config.sample`,
greedy by default), and summary.json's `test` holds the accuracy with its count and
95% Wilson interval and the first few responses, which are also printed. `lengths`
holds the lengths the run used (`config_lib.resolve_task_lengths`).
"""

from __future__ import annotations

import collections
import os

import jax
import ml_collections

from pavjax import artifacts
from pavjax import config_lib
from pavjax import evaluation
from pavjax import rewards
from pavjax import runtime
from pavjax import sharding as shd
from pavjax import supervised
from pavjax import tasks
from pavjax.sampling import Sampler, cached_lm
from pavjax.sampling import methods as sampling_methods

NUM_SHOWN = 3  # test responses printed and kept in summary.json
_SHOWN_CHARS = 400  # each shown prompt and response is cut to this many characters


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every field this job reads, checked before any compute; errors name the field."""
  config_lib.validate(config, num_devices)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the policy by SFT; returns the summary it also writes to summary.json."""
  env = runtime.setup(config, workdir)
  data = tasks.sft_arrays(env.task, env.task.split("train"), config.model.max_len)
  out = supervised.train(env, data, job="sft")
  out["lengths"] = config_lib.read_task_lengths(env.workdir)
  if not out.get("halted"):
    out["test"] = test_report(env)
  artifacts.write_json(os.path.join(env.workdir, artifacts.SUMMARY), out)
  if artifacts.is_lead_process():
    print("\n".join(end_lines(out)), flush=True)
  return out


def accuracy_interval(correct: int, n: int) -> dict:
  """Accuracy of `correct` out of `n` with its 95% Wilson score interval."""
  low, high = rewards.wilson_interval(correct, n)
  return {"n": int(n), "correct": int(correct), "accuracy": correct / n if n else 0.0,
          "ci95": [float(low), float(high)]}


def test_report(env: runtime.JobEnv) -> dict:
  """The final policy (the workdir's latest checkpoint) on the first `sample.num_eval`
  test problems: accuracy, its interval, outcome reasons and the first responses."""
  config, task = env.config, env.task
  problems = list(task.split("test"))[:config.sample.num_eval]
  params = runtime.load_params(env, os.path.join(env.workdir, artifacts.CHECKPOINTS),
                               "workdir")
  sampler = Sampler(cached_lm(env.model), pad_id=task.pad_id)
  with shd.activate(env.mesh, env.rules):
    responses = evaluation.sample_responses(
        task, sampler, params, problems, rng=jax.random.PRNGKey(config.seed + 23),
        mesh=env.mesh, method=sampling_methods.from_config(config.sample),
        max_new_tokens=config.sample.max_new_tokens, batch_size=config.sample.batch_size,
        **evaluation.sampling_options(config.sample))
  flat = [r for group in responses for r in group]
  correct = sum(int(r.outcome.reward == 1.0) for r in flat)
  shown = [{"problem": r.problem.uid,
            "prompt": task.decode(task.encode_prompt(r.problem)).strip()[:_SHOWN_CHARS],
            "response": task.decode(r.tokens)[:_SHOWN_CHARS], "reward": r.outcome.reward,
            "reason": r.outcome.reason} for r in flat[:NUM_SHOWN]]
  return {"split": "test", "method": config.sample.method, **accuracy_interval(correct, len(flat)),
          "reasons": dict(sorted(collections.Counter(r.outcome.reason for r in flat).items())),
          "samples": shown}


def end_lines(out: dict) -> list[str]:
  """What a user reads when SFT ends: test accuracy with n and interval, a few responses."""
  head = f"sft: step {out['step']}, {out['params']:,} parameters, task {out['task']}"
  if "test" not in out:
    return [head + " (halted before the last step: no test evaluation)"]
  t = out["test"]
  low, high = t["ci95"]
  lines = [head, f"test accuracy: {100 * t['accuracy']:.1f}% ({t['correct']}/{t['n']} problems, "
                 f"{t['method']} decoding), 95% Wilson interval [{100 * low:.1f}%, "
                 f"{100 * high:.1f}%]"]
  if t["samples"]:
    lines.append(f"first {len(t['samples'])} test responses:")
  indent = lambda text: text.replace("\n", "\n       ")
  for s in t["samples"]:
    lines.append(f"  [{s['problem']}] reward {s['reward']:g} ({s['reason']})")
    lines.append(f"    Q: {indent(s['prompt'])}")
    lines.append(f"    A: {indent(s['response'])}")
  return lines
