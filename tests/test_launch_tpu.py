"""launch_tpu.sh: create-or-reuse, copy, venv once, the same command on every worker.

`gcloud` is replaced by a stub on PATH that records each call (and answers
`describe` with a chosen exit code), so nothing here needs a network or a TPU.
"""

import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch_tpu.sh")
SLICE = ["--name=pav-test", "--zone=us-central2-b", "--accelerator=v4-32",
         "--version=tpu-vm-v4-base"]
COMMAND = ["python", "-m", "pavjax.main", "--config=configs/sft.py:task=arith,size=125m",
           "--workdir=gs://bucket/run", "--config.task.manual_dir=/data/my data"]

STUB = """#!/usr/bin/env bash
printf '%q ' gcloud "$@" >> "$GCLOUD_LOG"; echo >> "$GCLOUD_LOG"
for a in "$@"; do [[ "$a" == describe ]] && exit "${DESCRIBE_RC:-1}"; done
exit 0
"""


def _launch(tmp_path, args, describe_rc=1, extra_env=None):
  """Runs the script with the stub gcloud; returns (process, recorded gcloud argv lists)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  stub = bin_dir / "gcloud"
  stub.write_text(STUB)
  stub.chmod(0o755)
  log = tmp_path / "gcloud.log"
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             GCLOUD_LOG=str(log), DESCRIBE_RC=str(describe_rc), TMPDIR=str(tmp_path),
             **(extra_env or {}))
  proc = subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=60)
  calls = [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
  return proc, calls


def _remote(argv):
  """The --command= value of a `gcloud ... ssh` call."""
  (command,) = [a.split("=", 1)[1] for a in argv if a.startswith("--command=")]
  return command


def _check_plan(calls, archive, expect_create):
  """The gcloud calls, in order: [describe], [create], scp, ssh (setup), ssh (run)."""
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  assert all(c[:4] == tpu for c in calls), calls
  verbs = [c[4] for c in calls]
  assert verbs == ["describe"] + (["create"] if expect_create else []) + ["scp", "ssh", "ssh"]
  assert calls[0][5:] == ["pav-test", "--zone=us-central2-b"]
  if expect_create:
    assert calls[1][5:] == ["pav-test", "--zone=us-central2-b", "--accelerator-type=v4-32",
                            "--version=tpu-vm-v4-base"]
  scp, setup, launch = calls[-3:]
  assert scp[5:] == [archive, "pav-test:~/pavjax.tar.gz", "--zone=us-central2-b",
                     "--worker=all"]
  for ssh in (setup, launch):
    assert ssh[5:8] == ["pav-test", "--zone=us-central2-b", "--worker=all"]
  # The venv is built only on a worker that has none; the code is unpacked every time.
  setup_cmd = _remote(setup)
  assert "tar -xzf ~/pavjax.tar.gz -C pavjax" in setup_cmd
  assert "if [ ! -x .venv/bin/python ]; then python3 -m venv .venv" in setup_cmd
  assert ".venv/bin/pip install -q -e '.[tpu]'; fi" in setup_cmd
  # Every worker runs the same command, with distributed initialization on; the
  # argument with a space arrives as one argument.
  remote = shlex.split(_remote(launch))
  assert remote[:7] == ["cd", "pavjax", "&&", "source", ".venv/bin/activate", "&&",
                        "PAVJAX_DISTRIBUTED=1"]
  assert remote[7:] == COMMAND


def test_dry_run_prints_every_gcloud_command_and_runs_none(tmp_path):
  proc, calls = _launch(tmp_path, [*SLICE, "--dry-run", "--", *COMMAND])
  assert proc.returncode == 0, proc.stderr
  assert calls == []  # the stub was never invoked
  lines = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
  printed = [shlex.split(line) for line in lines]
  archive = os.path.join(str(tmp_path), "pavjax-launch-pav-test.tar.gz")
  git = [p for p in printed if p[0] == "git"]
  assert git == [["git", "archive", "--format=tar.gz", "-o", archive, "HEAD"]]
  assert not os.path.exists(archive)
  _check_plan([p for p in printed if p[0] == "gcloud"], archive, expect_create=True)
  assert "# only if describe fails" in proc.stdout


@pytest.mark.parametrize("exists", [False, True])
def test_creates_a_missing_slice_and_reuses_an_existing_one(tmp_path, exists):
  proc, calls = _launch(tmp_path, [*SLICE, "--", *COMMAND], describe_rc=0 if exists else 1)
  assert proc.returncode == 0, proc.stderr
  archive = os.path.join(str(tmp_path), "pavjax-launch-pav-test.tar.gz")
  _check_plan(calls, archive, expect_create=not exists)
  assert ("reusing TPU VM pav-test" in proc.stderr) == exists
  # The archive really is this checkout's HEAD.
  listing = subprocess.run(["tar", "-tzf", archive], capture_output=True, text=True, check=True)
  assert "pavjax/main.py" in listing.stdout.split()


def test_project_is_passed_to_every_gcloud_call(tmp_path):
  proc, calls = _launch(tmp_path, [*SLICE, "--project=my-proj", "--dry-run", "--", "true"])
  assert proc.returncode == 0, proc.stderr
  gcloud = [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("gcloud")]
  assert len(gcloud) == 5 and all("--project=my-proj" in c for c in gcloud)


@pytest.mark.parametrize("args", [
    [],  # nothing
    ["--name=a", "--zone=z", "--", "true"],  # no accelerator
    ["--name=a", "--zone=z", "--accelerator=v4-8"],  # no command
    ["--name=a", "--zone=z", "--accelerator=v4-8", "--bogus", "--", "true"],
])
def test_bad_arguments_exit_2_before_any_gcloud_call(tmp_path, args):
  proc, calls = _launch(tmp_path, args)
  assert proc.returncode == 2 and calls == []
  assert "usage" in proc.stderr or "unknown argument" in proc.stderr


# --aot-check: a stub python records the AOT command and exits with a chosen code.
PY_STUB = """#!/usr/bin/env bash
printf '%q ' "$@" >> "$AOT_LOG"; echo >> "$AOT_LOG"
exit "${AOT_RC:-0}"
"""


def _launch_aot(tmp_path, args, aot_rc=0):
  stub = tmp_path / "fake_python"
  stub.write_text(PY_STUB)
  stub.chmod(0o755)
  log = tmp_path / "aot.log"
  proc, calls = _launch(tmp_path, args, extra_env=dict(
      PAVJAX_PYTHON=str(stub), AOT_LOG=str(log), AOT_RC=str(aot_rc)))
  aot = [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
  return proc, calls, aot


AOT_COMMAND = ["python", "-m", "pavjax.main", "--config=configs/pipeline.py:size=pod",
               "--workdir=/mnt/shared/run", "--config.stages.sft.train.batch_size=64"]


@pytest.mark.parametrize("accelerator, topology", [
    ("v5litepod-16", "v5e:4x4"), ("v5litepod-256", "v5e:16x16"), ("v5p-16", "v5p:2x2x2"),
    ("v4-32", "v4:2x2x4"), ("v6e-64", "v6e:8x8")])
def test_aot_check_runs_first_for_the_slices_topology(tmp_path, accelerator, topology):
  args = ["--name=pav-test", "--zone=z", f"--accelerator={accelerator}", "--aot-check", "--",
          *AOT_COMMAND]
  proc, calls, aot = _launch_aot(tmp_path, args)
  assert proc.returncode == 0, proc.stderr
  # The check gets the command's config and overrides (not its workdir), then the launch
  # goes on as usual.
  assert aot == [["-m", "pavjax.aot", f"--topology={topology}",
                  "--config=configs/pipeline.py:size=pod",
                  "--config.stages.sft.train.batch_size=64"]]
  assert [c[4] for c in calls] == ["describe", "create", "scp", "ssh", "ssh"]


def test_a_failed_aot_check_stops_before_any_gcloud_call(tmp_path):
  args = ["--name=pav-test", "--zone=z", "--accelerator=v5litepod-16",
          "--aot-topology=v5e:2x4", "--", *AOT_COMMAND]
  proc, calls, aot = _launch_aot(tmp_path, args, aot_rc=1)
  assert proc.returncode == 1 and calls == []
  assert aot[0][2] == "--topology=v5e:2x4"  # given explicitly: it wins over the default
  assert "AOT check failed (exit 1) for v5e:2x4; no slice was created or used" in proc.stderr


def test_aot_check_dry_run_prints_the_check_first(tmp_path):
  args = ["--name=pav-test", "--zone=z", "--accelerator=v5p-16", "--aot-check", "--dry-run",
          "--", *AOT_COMMAND]
  proc, calls, aot = _launch_aot(tmp_path, args)
  assert proc.returncode == 0 and calls == [] and aot == []  # nothing ran
  lines = proc.stdout.splitlines()
  assert shlex.split(lines[0])[1:4] == ["-m", "pavjax.aot", "--topology=v5p:2x2x2"]
  assert lines[1].startswith("# only if the AOT check exits 0")
  assert shlex.split(lines[2])[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"]


@pytest.mark.parametrize("extra, command", [
    (["--accelerator=v3-8", "--aot-check"], AOT_COMMAND),  # no default topology
    (["--accelerator=v5p-16", "--aot-check"], ["python", "-c", "pass"]),  # no --config
])
def test_aot_check_that_cannot_run_exits_2(tmp_path, extra, command):
  proc, calls, aot = _launch_aot(tmp_path, ["--name=a", "--zone=z", *extra, "--", *command])
  assert proc.returncode == 2 and calls == [] and aot == []
  assert "launch_tpu.sh:" in proc.stderr


def test_aot_check_with_the_real_module_refuses_a_bad_config(tmp_path):
  """End to end with this checkout's pavjax.aot: a mesh that 4 chips cannot take stops
  the launch with the check's exit status 2, before any gcloud call."""
  import sys
  command = ["python", "-m", "pavjax.main", "--config=configs/pipeline.py:size=tiny",
             "--workdir=/mnt/run", "--config.stages.sft.mesh.fsdp=3"]
  proc, calls = _launch(tmp_path, ["--name=a", "--zone=z", "--accelerator=v5litepod-4",
                                   "--aot-check", "--", *command],
                        extra_env={"PAVJAX_PYTHON": sys.executable})
  assert proc.returncode == 2 and calls == [], proc.stderr
  assert "pavjax.aot: bad config: config.stages.sft.mesh" in proc.stderr
  assert "AOT check failed (exit 2) for v5e:2x2" in proc.stderr
