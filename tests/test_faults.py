"""Faults a run must survive, or refuse clearly (issue #9).

  * SIGKILL while an async checkpoint is being committed, then a restart: the
    latest finalized step is used, the partial one ignored, and the finished run
    equals an uninterrupted one bitwise.
  * A damaged finalized checkpoint (truncated or deleted array file, a parameter
    missing from the tree): an error naming step and path; with
    `fallback_on_corrupt`, the previous good step with a warning; never fresh
    weights.
  * NaN/Inf in loss or gradients: 'stop' ends the run before a bad checkpoint is
    written and retention deletes no good one; 'skip' leaves params and optimizer
    state bitwise unchanged and gives up after `max_skips` in a row. (NaN-loss
    stop/skip without retention is in tests/jobs/test_sft.py.)
  * The RL job SIGKILLed while committing its last checkpoint resumes to the same
    parameters; the rollouts job SIGKILLed between writing a shard and recording
    it resumes without losing or duplicating work.
  * Output paths that climb out of their parent are refused; no pickle anywhere.

Killed runs are subprocesses on one CPU device (so the uninterrupted reference
runs there too, for bitwise equality). The kill points are made deterministic
by this module's `__main__` (`python -m tests.test_faults --kill_...=N --
<pavjax.main flags>`), which patches one function and then runs pavjax.main.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import run_record
from pavjax import checkpoint as ckpt_lib
from pavjax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # per subprocess; measured 10-40 s each on 2 busy cores
TMP_SUFFIX = ".orbax-checkpoint-tmp"

SFT_FLAGS = ["--config=configs/sft.py:task=toy,size=test", "--config.train.num_steps=6",
             "--config.train.batch_size=16", "--config.train.log_every=2",
             "--config.checkpoint.every=2", "--config.checkpoint.keep=10",
             "--config.sample.num_eval=8", "--config.sample.batch_size=8",
             "--config.task.num_train=64", "--config.task.num_eval=8"]


def _rl_flags(policy_checkpoints: str) -> list[str]:
  # PAV rewards from a Best-of-4 prover over the SFT model's (untrained) value head.
  return ["--config=configs/rl.py:task=toy,size=test,reward=pav,prover=bok",
          f"--config.init_from={policy_checkpoints}",
          f"--config.rl.prover.verifier={policy_checkpoints}", "--config.rl.eval_pass_ns=1,2",
          "--config.train.num_steps=4", "--config.train.log_every=1",
          "--config.train.eval_every=0", "--config.checkpoint.every=2",
          "--config.checkpoint.keep=10", "--config.sample.num_eval=8",
          "--config.sample.batch_size=8"]


def _rollout_flags(policy_checkpoints: str) -> list[str]:
  # 12 problems, 4 per shard: shards 0, 1, 2.
  return ["--config=configs/rollouts.py:task=toy,size=test",
          f"--config.policy.checkpoint={policy_checkpoints}",
          "--config.rollouts.num_problems=12", "--config.rollouts.problems_per_shard=4",
          "--config.rollouts.n_cov=2", "--config.rollouts.n_mc=2",
          "--config.rollouts.seq_batch=8", "--config.rollouts.fork_batch=8",
          "--config.sample.batch_size=8"]


# --- subprocess plumbing -------------------------------------------------------------


def _env() -> dict:
  """One CPU device, the suite's compilation cache, this checkout importable."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PAVJAX_DISTRIBUTED")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
  if os.environ.get("PAVJAX_TEST_CACHE", "1") != "0":
    env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return env


def _start(workdir: str, flags: list[str], kill: str | None = None) -> subprocess.Popen:
  """`python -m pavjax.main` (or, with `kill`, this module's hook runner) in its own group."""
  os.makedirs(workdir, exist_ok=True)
  module = ["-m", "tests.test_faults", kill, "--"] if kill else ["-m", "pavjax.main"]
  log = open(os.path.join(workdir + ".log"), "w", encoding="utf-8")
  proc = subprocess.Popen([sys.executable, *module, *flags, f"--workdir={workdir}"], cwd=ROOT,
                          env=_env(), stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
  proc.log_path = log.name
  log.close()
  return proc


def _finish(proc: subprocess.Popen, expect_rc: int = 0, timeout: float = TIMEOUT_S) -> str:
  """Waits (bounded; the group is killed on timeout) and checks the exit code."""
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  with open(proc.log_path, encoding="utf-8") as f:
    log = f.read()
  assert proc.returncode == expect_rc, (
      f"exit code {proc.returncode}, expected {expect_rc}:\n{log[-4000:]}")
  return log


def _summary(workdir: str) -> dict:
  with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as f:
    return json.load(f)


def _load_state(workdir: str, step: int):
  """A job's checkpointed state at `step`, as saved (no target needed)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  try:
    return mgr.restore(step, args=ocp.args.StandardRestore())
  finally:
    mgr.close()


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _step_dirs(workdir: str) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


# --- SIGKILL during an async checkpoint save -----------------------------------------


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
  """An uninterrupted SFT run and one SIGKILLed while committing step 4 (run side by side)."""
  base = tmp_path_factory.mktemp("sft_kill")
  straight, killed = str(base / "straight"), str(base / "killed")
  procs = [_start(straight, SFT_FLAGS), _start(killed, SFT_FLAGS, kill="--kill_in_commit=4")]
  _finish(procs[0])
  _finish(procs[1], expect_rc=-signal.SIGKILL)
  return straight, killed


def test_sigkill_during_async_save_then_restart_equals_uninterrupted_run(sft_runs):
  straight, killed = sft_runs
  ckpt = os.path.join(killed, "checkpoints")
  # The kill hit step 4 mid-commit: its arrays are on disk in orbax's temporary
  # directory, without the commit marker; step 2 is the latest finalized step.
  assert _step_dirs(killed) == ["2", "4" + TMP_SUFFIX], _step_dirs(killed)
  partial = os.path.join(ckpt, "4" + TMP_SUFFIX)
  assert not os.path.exists(os.path.join(partial, "commit_success.txt"))
  data = [f for f in glob.glob(os.path.join(partial, "**", "d", "*"), recursive=True)
          if os.path.getsize(f) > 0]
  assert data, "the kill should have come after the array data was written"
  assert not os.path.exists(os.path.join(killed, "summary.json"))

  _finish(_start(killed, SFT_FLAGS))
  resumed = _summary(killed)
  assert resumed["origin"] == "scratch" and resumed["step"] == 6, resumed
  assert run_record.attempt_origins(killed)[-1] == "checkpoint step 2"
  # The partial step was never listed; saving step 4 again replaced it.
  assert _step_dirs(killed) == ["2", "4", "6"], _step_dirs(killed)
  for step in (4, 6):
    _assert_trees_equal(_load_state(straight, step), _load_state(killed, step))
  assert _summary(straight)["eval"] == resumed["eval"]


def test_rl_sigkill_during_the_final_save_then_restart_equals_uninterrupted_run(
    sft_runs, tmp_path):
  """RL samples its batches from the current policy: a resume must rebuild them exactly."""
  flags = _rl_flags(os.path.join(sft_runs[0], "checkpoints"))
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  procs = [_start(straight, flags), _start(killed, flags, kill="--kill_in_commit=4")]
  _finish(procs[0])
  _finish(procs[1], expect_rc=-signal.SIGKILL)
  assert _step_dirs(killed) == ["2", "4" + TMP_SUFFIX], _step_dirs(killed)
  log = _finish(_start(killed, flags))
  assert "rl state from checkpoint step 2" in log
  _assert_trees_equal(_load_state(straight, 4), _load_state(killed, 4))
  # The end record too: initial evaluation, origin, final train metrics and alerts.
  assert _summary(straight)["origin"].startswith("init_from")
  assert _summary(killed)["initial_eval"] is not None
  assert _comparable(_summary(killed)) == _comparable(_summary(straight))
  assert _metrics(killed, "metrics") == _metrics(straight, "metrics")
  assert _metrics(killed, "eval") == _metrics(straight, "eval")


def test_rl_killed_after_its_final_checkpoint_reruns_to_the_same_summary(sft_runs, tmp_path):
  """Killed as it writes summary.json (every step trained and saved): the rerun trains
  nothing and must still write the uninterrupted run's summary, `final_train` included."""
  flags = _rl_flags(os.path.join(sft_runs[0], "checkpoints"))
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  procs = [_start(straight, flags), _start(killed, flags, kill="--kill_at_summary=1")]
  _finish(procs[0])
  _finish(procs[1], expect_rc=-signal.SIGKILL)
  assert not os.path.exists(os.path.join(killed, "summary.json"))
  assert "4" in _step_dirs(killed)
  _finish(_start(killed, flags))
  again = _summary(killed)
  assert again["final_train"] and again["initial_eval"] is not None
  assert _comparable(again) == _comparable(_summary(straight))
  assert again["seconds"] > 0


def _comparable(summary: dict) -> dict:
  """A summary without its wall-clock values (seconds, steps per second)."""
  out = {k: v for k, v in summary.items() if k != "seconds"}
  out["final_train"] = {k: v for k, v in summary["final_train"].items() if not k.startswith("perf/")}
  return out


def _metrics(workdir: str, name: str) -> list[dict]:
  rows = metrics.read_jsonl(os.path.join(workdir, f"{name}.jsonl"))
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


# --- damaged finalized checkpoints ---------------------------------------------------


def _small_state(scale: float):
  mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rng = np.random.default_rng(int(scale))
  leaf = lambda *shape: jax.device_put(
      jnp.asarray(rng.normal(size=shape) + scale, jnp.float32), sharding)
  return {"step": jnp.int32(scale), "params": {"w": leaf(64, 8), "b": leaf(16)},
          "opt_state": {"mu": leaf(64, 8)}}


def _abstract(state):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                      state)


def _data_files(step_dir: str) -> list[str]:
  """The step's OCDBT data files (orbax may keep a merged copy beside the per-process one)."""
  files = [f for f in glob.glob(os.path.join(step_dir, "default", "**", "d", "*"), recursive=True)
           if os.path.isfile(f)]
  assert files, step_dir
  return files


def _truncate(step_dir):
  for path in _data_files(step_dir):
    os.truncate(path, os.path.getsize(path) // 2)


def _delete_data(step_dir):
  for path in _data_files(step_dir):
    os.remove(path)


def _drop_parameter(step_dir):
  """Removes params.w from the step's tree metadata (a parameter with no data)."""
  path = os.path.join(step_dir, "default", "_METADATA")
  with open(path, encoding="utf-8") as f:
    meta = json.load(f)
  del meta["tree_metadata"]["('params', 'w')"]
  with open(path, "w", encoding="utf-8") as f:
    json.dump(meta, f)


DAMAGE = {"truncated_array_file": _truncate, "deleted_array_file": _delete_data,
          "missing_parameter": _drop_parameter}
# A failed tensorstore read leaves orbax's event loop to be collected later, which
# pytest reports as an unraisable "Event loop is closed"; the restore itself raised.
_quiet_failed_reads = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def three_steps(tmp_path):
  c = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep=5)
  states = {s: _small_state(s) for s in (1, 2, 3)}
  for s, state in states.items():
    c.save(s, state)
  c.close()
  return str(tmp_path), states


@_quiet_failed_reads
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_raises_naming_step_and_path(three_steps, damage):
  directory, states = three_steps
  DAMAGE[damage](os.path.join(directory, "3"))
  c = ckpt_lib.Checkpointer(directory, every=1, keep=5)
  assert c.latest_step() == 3  # still finalized: the damage is only found by reading
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as info:
    c.restore(3, _abstract(states[3]))
  err = info.value
  assert err.step == 3 and err.path == os.path.join(directory, "3")
  assert f"checkpoint step 3 at {os.path.join(directory, '3')}" in str(err)
  assert "fallback_on_corrupt" in str(err)
  assert os.path.isdir(os.path.join(directory, "3"))  # without the flag nothing is moved
  c.close()


@_quiet_failed_reads
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_fallback_uses_previous_good_step_with_a_warning(three_steps, damage, caplog):
  directory, states = three_steps
  DAMAGE[damage](os.path.join(directory, "3"))
  c = ckpt_lib.Checkpointer(directory, every=1, keep=5, fallback_on_corrupt=True)
  with caplog.at_level("WARNING"):
    restored = c.restore(3, _abstract(states[3]))
  assert c.restored_step == 2
  _assert_trees_equal(restored, states[2])
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(_abstract(states[2]))):
    assert got.sharding == want.sharding
  assert "resuming from checkpoint step 2 instead of step 3" in caplog.text
  assert "checkpoint step 3 at" in caplog.text
  # The damaged step is set aside (kept for inspection), so it is neither listed nor
  # overwritten, and the run can save step 3 again.
  assert c.all_steps() == [1, 2]
  assert [n for n in os.listdir(directory) if n.startswith("corrupt_3_")]
  c.save(3, states[3])
  c.wait()
  _assert_trees_equal(c.restore(3, _abstract(states[3])), states[3])
  c.close()


@_quiet_failed_reads
def test_fallback_refuses_when_no_step_restores_and_moves_nothing(three_steps):
  """All steps unreadable into the target (e.g. the model changed): an error, never init."""
  directory, states = three_steps
  other_model = _abstract(states[3])
  other_model["params"]["extra"] = jax.ShapeDtypeStruct((4,), jnp.float32)
  c = ckpt_lib.Checkpointer(directory, every=1, keep=5, fallback_on_corrupt=True)
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match=r"tried steps \[3, 2, 1\]"):
    c.restore(3, other_model)
  assert c.all_steps() == [1, 2, 3]
  assert sorted(os.listdir(directory)) == ["1", "2", "3"]
  c.close()


@_quiet_failed_reads
def test_init_from_a_checkpoint_missing_a_parameter_is_refused(three_steps):
  """partial_restore would hand back the abstract leaf for a missing parameter."""
  directory, states = three_steps
  _drop_parameter(os.path.join(directory, "3"))
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match=r"no data for parameters.*'w'"):
    ckpt_lib.restore_params(directory, _abstract(states[3])["params"])
  _truncate(os.path.join(directory, "2"))
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match="checkpoint step 2 at"):
    ckpt_lib.restore_params(os.path.join(directory, "2"), _abstract(states[2])["params"])


def _sft_config(**overrides):
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  from configs import sft as sft_config  # pylint: disable=g-import-not-at-top
  config = sft_config.get_config("task=toy,size=test")
  for flag in SFT_FLAGS[1:]:
    dotted, value = flag[len("--config."):].split("=")
    section, field = dotted.split(".")
    config[section][field] = type(config[section][field])(value)
  for dotted, value in overrides.items():
    section, field = dotted.split("__")
    config[section][field] = value
  return config


@_quiet_failed_reads
def test_job_restart_on_a_damaged_latest_checkpoint_names_it(sft_runs, tmp_path, monkeypatch):
  """End to end: the SFT job stops before any training, naming step and path."""
  from pavjax.main import run_job  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("PAVJAX_RESUME_ALLOW", "train.num_steps")  # 6 recorded, 8 now
  workdir = str(tmp_path / "run")
  shutil.copytree(sft_runs[0], workdir)
  _truncate(os.path.join(workdir, "checkpoints", "6"))
  metrics_before = os.path.getsize(os.path.join(workdir, "metrics.jsonl"))
  with pytest.raises(ckpt_lib.CorruptCheckpointError,
                     match=f"checkpoint step 6 at {os.path.join(workdir, 'checkpoints', '6')}"):
    run_job(_sft_config(train__num_steps=8), workdir)
  assert os.path.getsize(os.path.join(workdir, "metrics.jsonl")) == metrics_before


def test_main_on_a_damaged_checkpoint_ends_in_one_line_without_library_noise(sft_runs, tmp_path):
  """The CLI prints `pavjax: failed: CorruptCheckpointError: ...` (exit 1) and none of
  the "Event loop is closed" tracebacks the failed reads leave (100+ lines before)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(sft_runs[0], workdir)
  _truncate(os.path.join(workdir, "checkpoints", "6"))
  proc = subprocess.run([sys.executable, "-m", "pavjax.main", *SFT_FLAGS, f"--workdir={workdir}"],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("pavjax: failed: CorruptCheckpointError: checkpoint step 6 at "
                              f"{os.path.join(workdir, 'checkpoints', '6')}"), lines[-5:]
  assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr


def test_event_loop_noise_is_cut_even_where_threads_interleave_it():
  noise = ("Traceback (most recent call last):\n"
           '  File "/py/lib/python3.11/asyncio/base_events.py", line 806, in call_soon_threadsafe\n'
           "    self._check_closed()\n"
           '  File "/py/lib/python3.11/asyncio/base_events.py", line 519, in _check_closed\n'
           "    raise RuntimeError('Event loop is closed')\n"
           "RuntimeError: Event loop is closed\n")
  # Another thread's traceback lands between one's indent and its text, and a bare
  # exception line (no newline) runs into the next header, as seen on this machine.
  cut = noise.index("self._check_closed()")
  mixed = ("W1205 kept warning\n" + noise[:cut] + noise + noise[cut:] +
           "RuntimeError: Event loop is closed" + noise + "kept line 2\n")
  assert ckpt_lib.drop_event_loop_noise(mixed) == "W1205 kept warning\nkept line 2\n"
  other = "Traceback (most recent call last):\n  File \"x.py\"\nValueError: real\n"
  assert ckpt_lib.drop_event_loop_noise(other) == other  # no noise: unchanged


@_quiet_failed_reads
def test_job_restart_falls_back_to_previous_step_with_flag(sft_runs, tmp_path, caplog):
  from pavjax.main import run_job  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(sft_runs[0], workdir)
  _truncate(os.path.join(workdir, "checkpoints", "6"))
  with caplog.at_level("WARNING"):
    out = run_job(_sft_config(checkpoint__fallback_on_corrupt=True), workdir)
  # The summary names where the run began (run.json); this attempt's fallback is logged.
  assert out["step"] == 6 and out["origin"] == "scratch"
  assert "resuming from checkpoint step 4 instead of step 6" in caplog.text
  assert [n for n in os.listdir(os.path.join(workdir, "checkpoints"))
          if n.startswith("corrupt_6_")]


# --- NaN / Inf: retention and gradients ----------------------------------------------


def _poison(monkeypatch, kind: str, bad_steps: set[int]):
  """NaN loss (mask * NaN) or Inf gradients (finite loss) on the given 1-based steps."""
  from pavjax import testing  # pylint: disable=g-import-not-at-top
  from pavjax import training  # pylint: disable=g-import-not-at-top
  if kind == "nan_loss":
    testing.poison_loss_on_steps(monkeypatch, bad_steps)
  else:
    real_update = training.apply_update
    bad = jnp.asarray(sorted(bad_steps), jnp.int32)

    def update(state, grads, tx, **kw):
      hit = jnp.isin(state.step + 1, bad)  # the step being taken, 1-based
      grads = jax.tree.map(lambda g: jnp.where(hit, g + jnp.inf, g), grads)
      return real_update(state, grads, tx, **kw)

    monkeypatch.setattr(training, "apply_update", update)


@pytest.mark.parametrize("kind", ["nan_loss", "inf_grads"])
def test_stop_policy_keeps_every_good_checkpoint_under_retention(tmp_path, monkeypatch, kind):
  """keep=2: a bad step-6 checkpoint would have made retention delete step 2."""
  from pavjax import metrics  # pylint: disable=g-import-not-at-top
  from pavjax.main import run_job  # pylint: disable=g-import-not-at-top
  _poison(monkeypatch, kind, {5})
  with pytest.raises(metrics.NonFiniteError, match="step 5"):
    run_job(_sft_config(checkpoint__keep=2, train__log_every=100), str(tmp_path))
  assert _step_dirs(str(tmp_path)) == ["2", "4"]
  for step in (2, 4):
    state = _load_state(str(tmp_path), step)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_skip_policy_with_inf_gradients(tmp_path, monkeypatch):
  from pavjax import metrics  # pylint: disable=g-import-not-at-top
  from pavjax.main import run_job  # pylint: disable=g-import-not-at-top
  _poison(monkeypatch, "inf_grads", {3})
  out = run_job(_sft_config(train__nonfinite="skip", checkpoint__every=1), str(tmp_path / "a"))
  assert out["step"] == 6
  s2, s3, s4 = (_load_state(str(tmp_path / "a"), s) for s in (2, 3, 4))
  _assert_trees_equal(s2["params"], s3["params"])
  _assert_trees_equal(s2["opt_state"], s3["opt_state"])
  assert int(s3["step"]) == 3  # the step counter moves on, so the next batch is new
  assert not np.array_equal(np.asarray(jax.tree.leaves(s3["params"])[0]),
                            np.asarray(jax.tree.leaves(s4["params"])[0]))
  monkeypatch.undo()
  _poison(monkeypatch, "inf_grads", {2, 3})
  with pytest.raises(metrics.NonFiniteError, match="2 consecutive"):
    run_job(_sft_config(train__nonfinite="skip", train__max_skips=2, checkpoint__every=1),
            str(tmp_path / "b"))
  # Steps 1 and 2 were saved (2 unchanged from 1); the give-up step 3 was not.
  assert _step_dirs(str(tmp_path / "b")) == ["1", "2"]


# --- the rollouts job SIGKILLed mid-way -----------------------------------------------


def test_rollouts_sigkill_between_shard_and_manifest_resumes_exactly(sft_runs, tmp_path):
  from pavjax import trajectories  # pylint: disable=g-import-not-at-top
  flags = _rollout_flags(os.path.join(sft_runs[0], "checkpoints"))
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  procs = [_start(straight, flags), _start(killed, flags, kill="--kill_after_shard=1")]
  _finish(procs[0])
  _finish(procs[1], expect_rc=-signal.SIGKILL)
  out_dir = os.path.join(killed, "rollouts", "train")
  # Shard 1's file is on disk but the manifest never recorded it.
  assert trajectories.read_manifest(out_dir)["shards_done"] == [0]
  assert os.path.exists(trajectories.shard_path(out_dir, 1))
  assert not os.path.exists(trajectories.shard_path(out_dir, 2))

  _finish(_start(killed, flags))
  want = trajectories.read_manifest(os.path.join(straight, "rollouts", "train"))
  got = trajectories.read_manifest(out_dir)
  assert got["complete"] and got["shards_done"] == [0, 1, 2]
  assert got["budget"] == want["budget"]  # shard 1 counted once
  a = trajectories.load(os.path.join(straight, "rollouts", "train"))
  b = trajectories.load(out_dir)
  assert len(b["problem"]) == 12 * 2  # 12 problems x n_cov, none twice
  assert sorted(b.columns) == sorted(a.columns)
  for key in trajectories.CORE + tuple(sorted(a.columns)):
    np.testing.assert_array_equal(b[key], a[key], err_msg=key)


# --- output paths and pickle ----------------------------------------------------------


def test_workdir_escaping_its_parent_is_rejected_by_main(tmp_path):
  escape = str(tmp_path / "runs" / ".." / ".." / "escaped")
  proc = subprocess.run([sys.executable, "-m", "pavjax.main", SFT_FLAGS[0],
                         f"--workdir={escape}"], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "config.workdir" in proc.stderr and "'..'" in proc.stderr
  assert not os.path.exists(os.path.normpath(escape))


def test_sweep_run_name_escaping_its_root_is_rejected(tmp_path):
  """A sweep axis value becomes a run directory name; `..` in it must not climb out."""
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  from pavjax import sweep  # pylint: disable=g-import-not-at-top
  from pavjax.main import run_job  # pylint: disable=g-import-not-at-top
  spec = types.SimpleNamespace(CONFIG="configs/sft.py:task=toy,size=test",
                               AXES={"seed": ["0/../../../escaped"]})
  root = str(tmp_path / "sweep")
  (point,) = sweep.expand(spec)
  workdir = sweep.command(spec, point, root)[4].split("=", 1)[1]
  with pytest.raises(config_lib.ConfigError, match=r"config\.workdir: .*'\.\.'"):
    run_job(_sft_config(), workdir)
  assert not os.path.exists(os.path.normpath(workdir))
  for bad in ("..", "../x", "a/../../b", "runs/x/.."):
    with pytest.raises(config_lib.ConfigError, match="workdir"):
      config_lib.check_workdir(bad)


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def _pickle_uses(path: str) -> list[str]:
  """`file:line: what` for every import of a pickling module, allow_pickle other than
  a literal False, np.load without allow_pickle=False, and pandas pickle I/O."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  where = lambda node: f"{os.path.relpath(path, ROOT)}:{node.lineno}"
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [f"{where(node)}: import {a.name}" for a in node.names
                if a.name.split(".")[0] in PICKLE_MODULES]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
      found.append(f"{where(node)}: from {node.module} import ...")
    elif isinstance(node, ast.Call):
      allow = {k.arg: k.value for k in node.keywords}.get("allow_pickle")
      if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
        found.append(f"{where(node)}: allow_pickle={ast.unparse(allow)}")
      func = node.func
      if (isinstance(func, ast.Attribute) and func.attr == "load" and allow is None and
          isinstance(func.value, ast.Name) and func.value.id in ("np", "numpy", "onp")):
        found.append(f"{where(node)}: {ast.unparse(func)} without allow_pickle=False")
      if isinstance(func, ast.Attribute) and func.attr in ("read_pickle", "to_pickle"):
        found.append(f"{where(node)}: {func.attr}")
  return found


def test_no_pickle_anywhere(tmp_path):
  files = []
  for folder in ("pavjax", "configs", "experiments", "tests"):
    files += glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)
  assert len(files) > 50
  found = [use for path in sorted(files) for use in _pickle_uses(path)]
  assert not found, "pickle in the code base:\n" + "\n".join(found)
  # The detector finds what it looks for.
  probe = tmp_path / "probe.py"
  probe.write_text("import pickle\nimport numpy as np\nnp.load('x')\n"
                   "np.load('y', allow_pickle=True)\nnp.load('z', allow_pickle=False)\n")
  assert len(_pickle_uses(str(probe))) == 3, _pickle_uses(str(probe))


# --- the kill hooks (run as `python -m tests.test_faults --kill_...=N -- <main flags>`) --


def _install_kill_hook(flag: str) -> None:
  """Patches one function so that the process SIGKILLs itself at a chosen point."""
  name, value = flag.lstrip("-").split("=")
  target = int(value)
  die = lambda: os.kill(os.getpid(), signal.SIGKILL)
  if name == "kill_in_commit":
    # Orbax commits an async save in a background thread: it writes the arrays into
    # `<step>.orbax-checkpoint-tmp`, then finalize() adds the commit marker and
    # renames. Dying as finalize starts leaves every byte written but no commit.
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
    real = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
      if self.get_final().name == str(target):
        die()
      return await real(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
  elif name == "kill_at_summary":
    # Dies as the job writes its summary.json: every step trained and checkpointed.
    from pavjax import artifacts  # pylint: disable=g-import-not-at-top
    real_json = artifacts.write_json

    def write_json(path, obj):
      if os.path.basename(path) == artifacts.SUMMARY:
        die()
      return real_json(path, obj)

    artifacts.write_json = write_json
  elif name == "kill_after_shard":
    # Dies after shard `target`'s file is in place but before the manifest lists it.
    from pavjax import trajectories  # pylint: disable=g-import-not-at-top
    real_write = trajectories.write_shard

    def write_shard(directory, index, table):
      real_write(directory, index, table)
      if index == target:
        die()

    trajectories.write_shard = write_shard
  else:
    raise SystemExit(f"unknown kill hook {flag!r}")


if __name__ == "__main__":
  hook, sep, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
  assert sep == "--", sys.argv
  _install_kill_hook(hook)
  from absl import app  # pylint: disable=g-import-not-at-top
  from pavjax import main as pavjax_main  # pylint: disable=g-import-not-at-top
  sys.argv = ["pavjax.main", *rest]
  app.run(pavjax_main.main, flags_parser=pavjax_main.parse_flags)
