"""Runs an operator can trust (issue 21): one job per workdir, resumes only of the
recorded config, and no silent fresh start over checkpoints that lost their markers.

  * The workdir lock: a second job on a held workdir stops at once (exit 2 from
    `python -m pavjax.main`) naming the holder; a lock of a dead process is broken
    with a warning; another host's lock never is; the lock goes when a job ends,
    normally or by an exception; nested holds (pipeline stages) count up.
  * `config.json` against the checkpoints: a resume with another learning rate is
    refused naming `optim.lr`; $PAVJAX_RESUME_ALLOW lets it through; an unchanged
    rerun (or one that changes only logging/checkpoint/halt fields) resumes.
  * A checkpoint directory whose every step lacks its commit marker is a
    ConfigError naming it; nothing is moved.
"""

from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys

import pytest

from pavjax import checkpoint as ckpt_lib
from pavjax import config_lib
from pavjax import workdir_lock
from pavjax.jobs import sft as sft_job
from pavjax.main import run_job
from tests import test_faults

ROOT = test_faults.ROOT


def _sft_config(**overrides):
  return test_faults._sft_config(**overrides)  # pylint: disable=protected-access


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(workdir, **record):
  os.makedirs(workdir, exist_ok=True)
  with open(workdir_lock.lock_path(str(workdir)), "w", encoding="utf-8") as f:
    json.dump(record, f)


def _read_lock(workdir):
  with open(workdir_lock.lock_path(str(workdir)), encoding="utf-8") as f:
    return json.load(f)


# --- the lock ---------------------------------------------------------------------------


def test_second_main_on_a_held_workdir_exits_2_naming_the_holder(tmp_path):
  """Two processes: a holder that keeps the lock, and `python -m pavjax.main` on it."""
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time\nfrom pavjax import workdir_lock\n"
       "workdir_lock.acquire(sys.argv[1], 'sft')\nprint('held', flush=True)\ntime.sleep(600)",
       workdir], cwd=ROOT, env=test_faults._env(), stdout=subprocess.PIPE, text=True,  # pylint: disable=protected-access
      start_new_session=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    record = _read_lock(workdir)
    assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
    assert record["job"] == "sft"
    proc = subprocess.run([sys.executable, "-m", "pavjax.main", *test_faults.SFT_FLAGS,
                           f"--workdir={workdir}"], cwd=ROOT, env=test_faults._env(),  # pylint: disable=protected-access
                          capture_output=True, text=True, timeout=test_faults.TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("pavjax: bad config:")]
    assert lines == [
        f"pavjax: bad config: config.workdir: {workdir} is in use by pid {holder.pid} on host "
        f"{socket.gethostname()!r} since {record['started']} (job 'sft') (lock file "
        f"{os.path.join(workdir, '.pavjax.lock')})"], proc.stderr[-3000:]
    # The refused job wrote nothing: no config record, no checkpoints.
    assert sorted(os.listdir(workdir)) == [".pavjax.lock"]
    assert _read_lock(workdir) == record
  finally:
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
  # The holder died without releasing: its lock is now stale and is broken.
  workdir_lock.acquire(workdir, "sft")
  try:
    assert _read_lock(workdir)["pid"] == os.getpid()
  finally:
    workdir_lock.release(workdir)
  assert not os.path.exists(workdir_lock.lock_path(workdir))


def test_stale_lock_of_a_dead_process_is_broken_with_a_warning(tmp_path, caplog):
  dead = _dead_pid()
  _write_lock(tmp_path, pid=dead, host=socket.gethostname(), started="2026-01-01T00:00:00Z",
              job="rl")
  with caplog.at_level("WARNING"):
    with workdir_lock.hold(str(tmp_path), "sft"):
      record = _read_lock(tmp_path)
      assert record["pid"] == os.getpid() and record["job"] == "sft"
  assert (f"breaking the stale lock {workdir_lock.lock_path(str(tmp_path))} of pid {dead} on "
          f"host {socket.gethostname()!r} since 2026-01-01T00:00:00Z (job 'rl')") in caplog.text
  assert not os.path.exists(workdir_lock.lock_path(str(tmp_path)))


def test_own_pid_from_an_earlier_process_is_stale(tmp_path):
  """A restarted container reuses pids: a lock with this pid that this process never took."""
  _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), started="x", job="sft")
  with workdir_lock.hold(str(tmp_path), "sft"):
    assert _read_lock(tmp_path)["started"] != "x"


def test_live_holder_on_this_host_is_refused(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  try:
    _write_lock(tmp_path, pid=sleeper.pid, host=socket.gethostname(), started="t0", job="rl")
    with pytest.raises(config_lib.ConfigError) as info:
      workdir_lock.acquire(str(tmp_path), "sft")
    assert str(info.value) == (
        f"config.workdir: {tmp_path} is in use by pid {sleeper.pid} on host "
        f"{socket.gethostname()!r} since t0 (job 'rl') (lock file "
        f"{workdir_lock.lock_path(str(tmp_path))})")
    assert _read_lock(tmp_path)["pid"] == sleeper.pid  # untouched
  finally:
    sleeper.kill()
    sleeper.wait()


def test_another_hosts_lock_is_never_broken(tmp_path):
  dead = _dead_pid()  # not alive here, but it is another host's pid
  _write_lock(tmp_path, pid=dead, host="elsewhere-0", started="t0", job="rl")
  with pytest.raises(config_lib.ConfigError,
                     match=r"in use by pid \d+ on host 'elsewhere-0' since t0 \(job 'rl'\) "
                     r"\(lock file .*\.pavjax\.lock\); if that job is no longer running "
                     r"there, remove the file and start again"):
    workdir_lock.acquire(str(tmp_path), "sft")
  assert _read_lock(tmp_path)["host"] == "elsewhere-0"


def test_nested_holds_and_sub_directories(tmp_path):
  """The pipeline holds its workdir while its stages hold their sub-directories."""
  outer, inner = str(tmp_path), str(tmp_path / "sft")
  with workdir_lock.hold(outer, "pipeline"):
    with workdir_lock.hold(inner, "sft"):
      assert _read_lock(inner)["job"] == "sft"
      with workdir_lock.hold(inner, "sft"):  # this process again: counts up
        pass
      assert os.path.exists(workdir_lock.lock_path(inner))
    assert not os.path.exists(workdir_lock.lock_path(inner))
    assert _read_lock(outer)["job"] == "pipeline"
  assert not os.path.exists(workdir_lock.lock_path(outer))


def test_run_job_holds_the_lock_and_releases_it_after_return_and_exception(
    tmp_path, monkeypatch):
  seen = []

  def fake_run(config, workdir):
    seen.append(_read_lock(workdir))
    if config.seed == 1:
      raise RuntimeError("job failed")
    return {"step": 0}

  monkeypatch.setattr(sft_job, "run", fake_run)
  path = workdir_lock.lock_path(str(tmp_path))
  assert run_job(_sft_config(), str(tmp_path)) == {"step": 0}
  assert seen[-1]["pid"] == os.getpid() and seen[-1]["job"] == "sft"
  assert not os.path.exists(path)
  with pytest.raises(RuntimeError, match="job failed"):
    run_job(_seeded(1), str(tmp_path))
  assert len(seen) == 2 and not os.path.exists(path)


def _seeded(seed):
  config = _sft_config()
  config.seed = seed
  return config


# --- config.json against the checkpoints -----------------------------------------------


def test_config_changes_names_dotted_fields():
  saved = json.loads(config_lib.to_json(_sft_config()))
  config = _sft_config(optim__lr=0.01)
  del saved["train"]["logits_chunk"]
  changes = config_lib.config_changes(saved, config)
  assert sorted(changes) == ["optim.lr", "train.logits_chunk"]
  assert changes["optim.lr"] == (0.003, 0.01)
  assert repr(changes["train.logits_chunk"][0]) == "absent"


def _fake_resumable(workdir, config):
  """A workdir that looks resumable: its config record and one finalized step."""
  config_lib.write_config(config, workdir)
  step = os.path.join(workdir, "checkpoints", "2")
  os.makedirs(step)
  open(os.path.join(step, ckpt_lib.COMMIT_MARKER), "w").close()


def test_changed_result_fields_are_refused_and_safe_ones_pass(tmp_path, monkeypatch):
  monkeypatch.delenv(config_lib.RESUME_ALLOW_ENV, raising=False)
  workdir = str(tmp_path)
  _fake_resumable(workdir, _sft_config())
  changed = _sft_config(optim__lr=0.01, train__num_steps=9)
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.check_resume(changed, workdir)
  assert str(info.value) == (
      "config.optim.lr: 0.003 in the workdir's config.json, 0.01 now; config.train.num_steps: "
      f"6 in the workdir's config.json, 9 now. {workdir} holds checkpoints of the recorded "
      "config; use a new workdir, or set PAVJAX_RESUME_ALLOW=optim.lr,train.num_steps to "
      "resume with the new values")
  assert info.value.field == "optim.lr"
  monkeypatch.setenv(config_lib.RESUME_ALLOW_ENV, "optim, train.num_steps")
  assert sorted(config_lib.check_resume(changed, workdir)) == ["optim.lr", "train.num_steps"]
  monkeypatch.delenv(config_lib.RESUME_ALLOW_ENV)
  safe = _sft_config(checkpoint__every=3, checkpoint__keep=1, train__log_every=1,
                     train__halt_at_step=4)
  safe.mesh.data = 2
  safe.mesh.fsdp = 4
  safe.model.attn_block = 0  # a speed-only field
  assert sorted(config_lib.config_changes(json.loads(config_lib.to_json(_sft_config())),
                                         safe)) == [
      "checkpoint.every", "checkpoint.keep", "mesh.data", "mesh.fsdp", "model.attn_block",
      "train.halt_at_step", "train.log_every"]
  assert config_lib.check_resume(safe, workdir) == {}  # nothing to report
  # A record from before the field existed resumes too.
  recorded = json.loads(config_lib.to_json(_sft_config()))
  del recorded["model"]["attn_block"]
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(recorded, f)
  assert config_lib.check_resume(_sft_config(), workdir) == {}
  # Without checkpoints there is nothing to resume: any config may start there.
  os.rename(os.path.join(workdir, "checkpoints"), os.path.join(workdir, "moved"))
  assert config_lib.check_resume(changed, workdir) == {}


def test_paths_that_moved_with_the_workdirs_parent_count_as_unchanged(tmp_path, monkeypatch):
  """A pipeline directory moved mid-stage: its stages' absolute paths into it changed."""
  monkeypatch.delenv(config_lib.RESUME_ALLOW_ENV, raising=False)
  old_root, new_root = tmp_path / "old" / "pipe", tmp_path / "new" / "pipe"
  before = _sft_config()
  before.init_from = str(old_root / "sft" / "checkpoints")
  before.task.name = str(old_root / "task")  # any string field holding a path
  _fake_resumable(str(new_root / "rft"), before)
  now = _sft_config()
  now.init_from = str(new_root / "sft" / "checkpoints")
  now.task.name = str(new_root / "task")
  assert config_lib.check_resume(now, str(new_root / "rft")) == {}
  now.task.name = str(new_root / "other_task")  # another path: a change
  with pytest.raises(config_lib.ConfigError, match=r"^config\.task\.name: "):
    config_lib.check_resume(now, str(new_root / "rft"))
  now.task.name = str(tmp_path / "elsewhere" / "task")  # outside the parent: a change
  with pytest.raises(config_lib.ConfigError, match=r"^config\.task\.name: "):
    config_lib.check_resume(now, str(new_root / "rft"))


def test_a_field_added_later_resumes_at_the_value_its_absence_meant(tmp_path, monkeypatch):
  """An RL workdir recorded before `rl.value_model` existed had a value head: it
  resumes under 'head' and is refused under 'separate' (another train state)."""
  monkeypatch.delenv(config_lib.RESUME_ALLOW_ENV, raising=False)
  sys.path.insert(0, ROOT)
  from configs import rl as rl_config  # pylint: disable=g-import-not-at-top
  old = rl_config.get_config("task=toy,size=test")
  del old.rl["value_model"]
  _fake_resumable(str(tmp_path), old)
  now = rl_config.get_config("task=toy,size=test")
  assert now.rl.value_model == "head"
  assert config_lib.check_resume(now, str(tmp_path)) == {}
  now.rl.value_model = "separate"
  with pytest.raises(config_lib.ConfigError, match=r"^config\.rl\.value_model: "):
    config_lib.check_resume(now, str(tmp_path))


def test_resume_with_another_lr_is_refused_then_allowed_and_unchanged_resumes(
    tmp_path, monkeypatch, caplog):
  """End to end on the SFT job: halt at step 2, then the three kinds of rerun."""
  monkeypatch.delenv(config_lib.RESUME_ALLOW_ENV, raising=False)
  workdir = str(tmp_path)
  first = run_job(_sft_config(train__num_steps=4, train__halt_at_step=2), workdir)
  assert first["step"] == 2 and first["halted"]
  record = (tmp_path / "config.json").read_text()
  metrics_size = os.path.getsize(tmp_path / "metrics.jsonl")

  with pytest.raises(config_lib.ConfigError,
                     match=r"^config\.optim\.lr: 0\.003 in the workdir's config\.json, 0\.01 "
                     r"now\. .* PAVJAX_RESUME_ALLOW=optim\.lr to resume"):
    run_job(_sft_config(train__num_steps=4, optim__lr=0.01), workdir)
  assert (tmp_path / "config.json").read_text() == record  # compared before any overwrite
  assert os.path.getsize(tmp_path / "metrics.jsonl") == metrics_size
  assert not os.path.exists(workdir_lock.lock_path(workdir))

  # Unchanged but for the halt point (allowed): resumes from step 2.
  with caplog.at_level("INFO"):
    second = run_job(_sft_config(train__num_steps=4, train__halt_at_step=3), workdir)
  assert "sft state from checkpoint step 2" in caplog.text and second["step"] == 3
  assert second["origin"] == first["origin"] == "scratch"  # where the run began

  monkeypatch.setenv(config_lib.RESUME_ALLOW_ENV, "optim.lr")
  caplog.clear()
  with caplog.at_level("INFO"):
    third = run_job(_sft_config(train__num_steps=4, optim__lr=0.01), workdir)
  assert "sft state from checkpoint step 3" in caplog.text and third["step"] == 4
  assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 0.01
  kept = [n for n in os.listdir(workdir) if n.startswith("config.") and n != "config.json"]
  assert len(kept) == 1
  assert json.loads((tmp_path / kept[0]).read_text())["optim"]["lr"] == 0.003


# --- checkpoints that all lack their commit marker -------------------------------------


def test_every_step_unfinalized_is_an_error_and_nothing_moves(tmp_path):
  for step in ("2", "4"):
    os.makedirs(tmp_path / step / "default")
  with pytest.raises(config_lib.ConfigError) as info:
    ckpt_lib.Checkpointer(str(tmp_path), every=1, keep=5)
  assert str(info.value) == (
      f"config.workdir: checkpoint directory {tmp_path} has steps [2, 4] and none of them was "
      "finalized (no commit_success.txt); nothing was moved. If they are complete copies, "
      "restore each step's commit_success.txt; to start the run afresh, move or delete "
      f"{tmp_path}")
  assert sorted(os.listdir(tmp_path)) == ["2", "4"]
  # orbax's own temporary directories are not steps: a kill before the first commit
  # still starts afresh.
  empty = tmp_path / "fresh"
  os.makedirs(empty / ("2" + test_faults.TMP_SUFFIX))
  c = ckpt_lib.Checkpointer(str(empty), every=1, keep=5)
  assert c.latest_step() is None
  c.close()


def test_job_on_a_workdir_without_any_finalized_step_exits_2(tmp_path):
  workdir = tmp_path / "run"
  os.makedirs(workdir / "checkpoints" / "2" / "default")
  proc = subprocess.run([sys.executable, "-m", "pavjax.main", *test_faults.SFT_FLAGS,
                         f"--workdir={workdir}"], cwd=ROOT, env=test_faults._env(),  # pylint: disable=protected-access
                        capture_output=True, text=True, timeout=test_faults.TIMEOUT_S)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert (f"pavjax: bad config: config.workdir: checkpoint directory {workdir}/checkpoints has "
          "steps [2] and none of them was finalized") in proc.stderr
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
  assert not os.path.exists(workdir / "summary.json")
  assert not os.path.exists(workdir_lock.lock_path(str(workdir)))


# --- floats, file workdirs, finite divergence -------------------------------------------


@pytest.mark.parametrize("section,field", [("optim", "weight_decay"), ("optim", "b2"),
                                           ("train", "divergence_factor")])
def test_a_non_finite_float_anywhere_is_named_at_validation(section, field):
  for bad in (float("nan"), float("inf")):
    config = _sft_config()
    config[section][field] = bad
    with pytest.raises(config_lib.ConfigError,
                       match=rf"^config\.{section}\.{field}: {bad} is not a finite number"):
      sft_job.validate(config, 8)


def test_a_workdir_that_is_a_file_is_one_bad_config_line(tmp_path):
  path = tmp_path / "not_a_dir"
  path.write_text("x")
  proc = subprocess.run([sys.executable, "-m", "pavjax.main", test_faults.SFT_FLAGS[0],
                         f"--workdir={path}"], cwd=ROOT, env=test_faults._env(),  # pylint: disable=protected-access
                        capture_output=True, text=True, timeout=test_faults.TIMEOUT_S)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      f"pavjax: bad config: config.workdir: {path} exists and is not a directory")


def test_adamw_at_lr_1e3_stops_at_its_dead_gradients_naming_the_step(tmp_path):
  """The issue's run: mean loss in the millions, then a finite plateau with gradient
  norm exactly 0. The job stops with one line naming the step, before checkpointing it."""
  workdir = str(tmp_path / "run")
  flags = [*test_faults.SFT_FLAGS, "--config.train.num_steps=300", "--config.optim.lr=1000.0",
           "--config.train.log_every=10", "--config.checkpoint.every=20",
           "--config.train.zero_grad_steps=50"]
  proc = subprocess.run([sys.executable, "-m", "pavjax.main", *flags, f"--workdir={workdir}"],
                        cwd=ROOT, env=test_faults._env(), capture_output=True, text=True,  # pylint: disable=protected-access
                        timeout=test_faults.TIMEOUT_S)
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  match = re.match(r"pavjax: failed: DivergenceError: training diverged at step (\d+): gradient "
                   r"norm exactly 0 for 50 steps in a row", last)
  assert match, last
  step = int(match.group(1))
  assert 50 <= step < 300
  saved = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
  assert saved and max(saved) < step
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
