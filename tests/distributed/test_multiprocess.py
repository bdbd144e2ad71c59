"""Two JAX processes on localhost (gloo CPU collectives) vs one process, same mesh.

`tests/distributed/worker.py` runs once per cluster process and once more, alone,
as the single-process reference over the same number of devices; all three run
at once. Every wait is bounded: a worker that hangs (a collective nobody joins, a
coordinator that never answers) gets SIGUSR1 (its Python stacks go to its log),
then SIGKILL with its process group, and the test fails with the logs.

One faked CPU device per process. With more than one per process, jaxlib 0.10.2
deadlocks now and then inside gloo: measured on this 2-core machine with the beam
search part alone, 3 of 3 runs hung with 4 devices per process (1 of 3 with CPU
async dispatch left on), 2 of 3 with 2, 0 of 3 with 1; 0 of 6 full runs hung with
1. In a hung pair, gdb showed all 4 device threads of one process waiting inside
`gloo::allreduce` (AllReduceThunk), but only 3 of the other's (its 4th device
thread in no collective), while the Python stacks of the two processes stood on
two consecutive eager ops of `StepBeamSearch.run`: one process had left the op
the other was still in. The 4-device variant stays here, opt-in
(PAVJAX_MP_STRESS=1), to check a newer jaxlib.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pavjax import checkpoint as ckpt_lib
from pavjax import sharding as shd
from pavjax import training
from pavjax import runtime
from tests import xla_flags
from tests.distributed import worker

pytestmark = pytest.mark.multiprocess

ROOT = worker.ROOT
NUM_PROCESSES = 2
# Measured: 35-65 s for all three workers on 2 busy cores. A hang fails here instead.
TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
  """SIGUSR1 (stack dump), then SIGKILL to the worker's whole process group."""
  if proc.poll() is None:
    try:
      os.kill(proc.pid, signal.SIGUSR1)
      time.sleep(1.0)
      os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own session
    except ProcessLookupError:
      pass
  proc.wait()


def run_workers(out_dir: str, local_devices: int = 1, tensor: int = 1,
                timeout: float = TIMEOUT_S) -> tuple[list[dict], dict]:
  """Starts the cluster and the reference; returns (cluster summaries, reference).

  The first worker to fail, or the deadline, stops every worker still running
  (a cluster peer would otherwise wait on a collective that never completes).
  """
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PAVJAX_DISTRIBUTED")}
  base.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              PYTHONPATH=ROOT + os.pathsep + base.get("PYTHONPATH", ""))
  coordinator = f"127.0.0.1:{_free_port()}"
  os.makedirs(out_dir, exist_ok=True)
  names = [f"process_{i}" for i in range(NUM_PROCESSES)] + ["single"]
  logs, procs = [], []
  for i, name in enumerate(names):
    single = name == "single"
    devices = local_devices * NUM_PROCESSES if single else local_devices
    env = dict(base, XLA_FLAGS=xla_flags.fake_cpu_devices(devices))
    args = [sys.executable, "-m", "tests.distributed.worker",
            f"--num_processes={1 if single else NUM_PROCESSES}",
            f"--process_id={0 if single else i}", f"--coordinator={coordinator}",
            f"--out={os.path.join(out_dir, name)}", f"--tensor={tensor}",
            f"--workdir={os.path.join(out_dir, 'single' if single else 'cluster', 'workdir')}"]
    log = open(os.path.join(out_dir, f"{name}.log"), "w", encoding="utf-8")
    logs.append(log)
    procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True))
  deadline = time.monotonic() + timeout
  failure = None
  try:
    while any(p.poll() is None for p in procs):
      bad = [n for n, p in zip(names, procs) if p.poll() not in (None, 0)]
      if bad:
        failure = f"{bad[0]} exited with {procs[names.index(bad[0])].returncode}"
        break
      if time.monotonic() > deadline:
        late = [n for n, p in zip(names, procs) if p.poll() is None]
        failure = f"{late} still running after {timeout:.0f} s (a hang counts as a failure)"
        break
      time.sleep(0.2)
    if failure is None and any(p.returncode != 0 for p in procs):
      failure = f"exit codes {[p.returncode for p in procs]}"
  finally:
    for p in procs:
      _stop(p)
    for log in logs:
      log.close()
  if failure is not None:
    tails = []
    for name in names:
      with open(os.path.join(out_dir, f"{name}.log"), encoding="utf-8") as f:
        text = "".join(line for line in f if not line.startswith("[Gloo]"))
      tails.append(f"--- {name} ---\n{text[-3000:]}")
    pytest.fail(f"multi-process run failed: {failure}\n" + "\n".join(tails))
  out = []
  for i, name in enumerate(names):
    prefix = os.path.join(out_dir, name, f"process_{0 if name == 'single' else i}")
    with open(prefix + ".json", encoding="utf-8") as f:
      summary = json.load(f)
    with np.load(prefix + ".npz", allow_pickle=False) as z:
      summary["arrays"] = {k: z[k] for k in z.files}
    out.append(summary)
  return out[:-1], out[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(cluster summaries, single-process reference, base directory)."""
  base = tmp_path_factory.mktemp("multiprocess")
  t0 = time.time()
  cluster, reference = run_workers(str(base))
  print(f"cluster and reference: {time.time() - t0:.1f} s")
  return cluster, reference, str(base)


def _assert_arrays_equal(got: dict, want: dict, where: str):
  assert sorted(got) == sorted(want), where
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=f"{where}: {key}")


def _check_cluster_matches_reference(cluster, reference, local_devices, fsdp):
  assert reference["process_count"] == 1
  assert reference["device_count"] == NUM_PROCESSES * local_devices
  for i, got in enumerate(cluster):
    where = f"process {i}"
    assert got["process_count"] == NUM_PROCESSES, where
    assert got["device_count"] == NUM_PROCESSES * local_devices, where
    assert got["local_devices"] == local_devices, where
    assert got["mesh"] == reference["mesh"] and got["mesh"]["fsdp"] == fsdp, where
    assert got["origin"] == "scratch"
    # Parameters really are split over fsdp, which spans both processes.
    assert got["param_shardings"] == reference["param_shardings"], where
    assert "'fsdp'" in got["param_shardings"]["['embedding']"], got["param_shardings"]
    # (a) two train steps: loss, grad norm, mse; bitwise (JSON floats round-trip).
    assert got["train"] == reference["train"], (where, got["train"], reference["train"])
    # (a) every parameter after the steps and (b) sampled tokens, log-probs, lengths,
    # gathered from all processes: bitwise.
    _assert_arrays_equal(got["arrays"], reference["arrays"], where)
    # (c) the beam search: the same pools (tokens, values, scores), answers, counters.
    assert got["beam"] == reference["beam"], where
  lengths = reference["arrays"]["sample/lengths"]
  assert lengths.shape == (16,) and lengths.max() > 0
  assert reference["beam"]["counters"]["candidates"] > 0


def test_two_processes_form_one_mesh_and_match_one_process(runs):
  cluster, reference, _ = runs
  _check_cluster_matches_reference(cluster, reference, local_devices=1, fsdp=NUM_PROCESSES)


def test_checkpoint_written_by_two_processes_restores_in_one(runs):
  """The checkpoint both processes wrote together equals the single-process one bitwise."""
  _, reference, base = runs
  devices = jax.devices()[:NUM_PROCESSES]
  config = worker.make_config()
  env = runtime.setup(config, os.path.join(base, "restore"))
  mesh = shd.make_mesh(dict(config.mesh), devices)
  tx = training.make_optimizer(config.optim, config.train.num_steps)
  spec = training.train_state_spec(env.model, tx, config.seed,
                                   np.zeros((NUM_PROCESSES, 8), np.int32), mesh, env.rules)
  states = []
  for who in ("cluster", "single"):
    c = ckpt_lib.Checkpointer(os.path.join(base, who, "workdir", "checkpoints"), every=0, keep=3)
    assert c.all_steps() == [worker.NUM_TRAIN_STEPS], who
    states.append(c.restore(worker.NUM_TRAIN_STEPS, spec.abstract))
    c.close()
  got, want = states
  assert int(got.step) == worker.NUM_TRAIN_STEPS
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  flat, _ = jax.tree_util.tree_flatten_with_path(got.params)
  for path, leaf in flat:
    np.testing.assert_array_equal(np.asarray(leaf),
                                  reference["arrays"]["params" + jax.tree_util.keystr(path)])


def test_hf_export_and_sharded_load_across_processes(runs):
  """Two processes export the trained parameters to one HF directory (process 0 writes)
  byte for byte as one process does; loading it back splits every read by process."""
  cluster, reference, _ = runs
  params = {k[len("params"):]: v for k, v in reference["arrays"].items()
            if k.startswith("params")}
  for who in cluster + [reference]:
    assert who["hf_export_sha256"] == reference["hf_export_sha256"]
    loaded = {k[len("hf_loaded"):]: v for k, v in who["arrays"].items()
              if k.startswith("hf_loaded")}
    assert sorted(loaded) == sorted(params)
    for key, value in params.items():
      np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    # Each process reads exactly the blocks it holds (value head included: exported).
    assert who["hf_read_elements"] == who["hf_held_elements"]
  # ... and the fsdp split puts part of every big tensor in each process.
  assert all(got["hf_read_elements"] < reference["hf_read_elements"] for got in cluster)


def test_beam_search_with_batch_sharded_rows_across_processes(runs):
  cluster, reference, _ = runs
  assert reference["beam_batch_sharded"]["error"] is None
  for got in cluster:
    assert got["beam_batch_sharded"]["error"] is None, got["beam_batch_sharded"]["error"]
    assert got["beam_batch_sharded"]["answers"] == reference["beam_batch_sharded"]["answers"]


@pytest.mark.skipif(os.environ.get("PAVJAX_MP_STRESS") != "1", reason=(
    "opt-in (PAVJAX_MP_STRESS=1): 4 faked devices per process deadlock inside gloo "
    "all-reduce with jaxlib 0.10.2 (3 of 3 runs of the beam part; see the module "
    "docstring); kept to check a newer jaxlib, bounded by the same timeout"))
def test_four_devices_per_process_with_tensor_parallelism(tmp_path):
  cluster, reference = run_workers(str(tmp_path), local_devices=4, tensor=2)
  _check_cluster_matches_reference(cluster, reference, local_devices=4, fsdp=4)
