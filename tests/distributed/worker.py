"""One process of the localhost multi-process test (tests/distributed/test_multiprocess.py).

Started from the repository root, once per process, with faked CPU devices:

  XLA_FLAGS=--xla_force_host_platform_device_count=1 JAX_PLATFORMS=cpu \
    python -m tests.distributed.worker --coordinator=127.0.0.1:PORT \
      --num_processes=2 --process_id=I --out=DIR --workdir=SHARED_DIR

Each process joins the cluster, builds the same global mesh over every process's
devices and runs `compute`: two verifier train steps (pavjax's own
`jobs.train_verifier.verifier_train_step` behind `runtime.make_trainer`, whose
checkpointer then writes one checkpoint from all processes together), one
`Sampler.generate` call with the prompts split over the batch axes, and
`StepBeamSearch.run`, then a Hugging Face export of the trained parameters (all
processes gather, process 0 writes) loaded back sharded. What it saw goes to DIR/process_I.npz (arrays, gathered
from all processes) and DIR/process_I.json (train metrics, shardings, beam pools).
With --num_processes=1 (and as many faked devices as the whole cluster) the same
code is the single-process reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import functools
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The global mesh: every device of every process on `fsdp`, so parameters and
# batches are split across the process boundary (parameter all-gathers and gradient
# reductions go through gloo). One faked device per process by default: with more,
# jaxlib 0.10.2's CPU collectives deadlock now and then (see the test's docstring).
MESH = {"data": 1, "fsdp": -1, "tensor": 1}
NUM_TRAIN_STEPS = 2
TRAIN_BATCH = 8


def make_config(tensor: int = 1):
  """A size=test verifier config on the toy task, for MESH (with `tensor` slots)."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  from configs import train_verifier as tv_config  # pylint: disable=g-import-not-at-top
  from pavjax import sharding as shd  # pylint: disable=g-import-not-at-top
  config = tv_config.get_config("task=toy,size=test,kind=q")
  for axis, size in MESH.items():
    config.mesh[axis] = size
  if tensor > 1:  # the toy vocabulary (15 tokens) does not split over tensor: keep it whole
    config.mesh.tensor = tensor
    config.rules = tuple((name, None if name == "vocab" else axes)
                         for name, axes in shd.DEFAULT_RULES)
  config.train.num_steps = NUM_TRAIN_STEPS
  config.train.batch_size = TRAIN_BATCH
  config.optim.warmup_steps = 0
  config.checkpoint.every = 0
  return config


def verifier_batch(step: int, batch: int = TRAIN_BATCH, width: int = 16,
                   columns: int = 4) -> dict:
  """A deterministic host batch in the verifier's layout (tokens, positions, mask, targets)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([7, step])
  tokens = rng.integers(5, 15, (batch, width)).astype(np.int32)
  mask = rng.random((batch, columns)) < 0.8
  mask[:, 0] = True
  positions = np.where(mask, np.arange(3, width, width // columns)[None, :columns], -1)
  targets = np.where(mask, rng.random((batch, columns)), 0.0).astype(np.float32)
  return {"tokens": tokens, "positions": positions.astype(np.int32), "mask": mask,
          "targets": targets}


def _fetch(tree):
  """Host copies of (possibly cross-process) arrays: the whole global value everywhere."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return multihost_utils.process_allgather(tree, tiled=True)


def compute(workdir: str, tensor: int = 1) -> tuple[dict, dict]:
  """Runs the three pieces on the global mesh; returns (arrays, json-able summary)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from pavjax import sharding as shd  # pylint: disable=g-import-not-at-top
  from pavjax import verifiers  # pylint: disable=g-import-not-at-top
  from pavjax import runtime  # pylint: disable=g-import-not-at-top
  from pavjax.jobs import train_verifier  # pylint: disable=g-import-not-at-top
  from pavjax.sampling import Sampler, Temperature, TransformerLM  # pylint: disable=g-import-not-at-top
  from pavjax.sampling.sampler import left_pad  # pylint: disable=g-import-not-at-top
  from pavjax.search import StepBeamSearch  # pylint: disable=g-import-not-at-top

  config = make_config(tensor)
  env = runtime.setup(config, workdir)
  mesh, rules, model, task = env.mesh, env.rules, env.model, env.task
  arrays, summary = {}, {"process_count": jax.process_count(),
                         "device_count": jax.device_count(), "mesh": dict(mesh.shape)}
  timing, t0 = {}, time.time()

  # (a) verifier train steps, then one checkpoint written by every process.
  trainer = runtime.make_trainer(env, functools.partial(
      train_verifier.verifier_train_step, loss="bce", balance=True))
  state = trainer.state
  summary["origin"] = trainer.origin
  logs = []
  with shd.activate(mesh, rules):
    for step in range(NUM_TRAIN_STEPS):
      state, step_metrics = trainer.step_fn(state, shd.shard_batch(verifier_batch(step), mesh))
      logs.append({k: float(v) for k, v in jax.device_get(step_metrics).items()})
  trainer.checkpointer.save(NUM_TRAIN_STEPS, state)
  trainer.checkpointer.close()
  summary["train"] = logs
  timing["train"] = time.time() - t0
  flat, _ = jax.tree_util.tree_flatten_with_path(_fetch(state.params))
  for path, leaf in flat:
    arrays["params" + jax.tree_util.keystr(path)] = leaf
  summary["param_shardings"] = {
      jax.tree_util.keystr(p): str(leaf.sharding.spec)
      for p, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]}

  # (b) one sampling call, prompts split over the batch axes of the global mesh.
  problems = list(task.split("validation"))[:8]
  prompts = [task.encode_prompt(p) for p in problems]
  tokens, lengths = left_pad(prompts, task.pad_id)
  sampler = Sampler(TransformerLM(model), pad_id=task.pad_id)
  with shd.activate(mesh, rules):
    out = sampler.generate(state.params, jax.device_put(tokens, shd.batch_sharding(mesh, 2)),
                           jax.device_put(lengths, shd.batch_sharding(mesh, 1)),
                           jax.random.PRNGKey(3), max_new_tokens=task.max_response_len,
                           method=Temperature(1.0), stop_tokens=(task.eos_id,), num_samples=2)
  out = _fetch(out._asdict())
  for key, value in out.items():
    arrays[f"sample/{key}"] = value
  timing["sample"] = time.time() - t0 - timing["train"]

  # (c) a beam search ranked by the trained value head (PAV score, Best-of-4 prover),
  # parameters sharded as trained. Outside `shd.activate` the model's activation
  # constraints are inactive, so with replicated prompts every per-row array the host
  # loop fetches stays replicated and each process can read it.
  value_fn = lambda vp, toks, lens: verifiers.score(model, vp, toks, (lens - 1)[:, None])[:, 0]
  search = StepBeamSearch(TransformerLM(model), value_fn, beam_width=2, expansions=2,
                          max_steps=3, max_step_tokens=3, step_end_ids=task.step_end_ids,
                          eos_id=task.eos_id, score="pav", alpha=0.5, bok_k=4,
                          method=Temperature(1.0), pad_id=task.pad_id)
  result = search.run(state.params, state.params, prompts[:4], jax.random.PRNGKey(5),
                      prompt_sharding=NamedSharding(mesh, P()))
  summary["beam"] = {"pools": result.pools, "answers": result.answers,
                     "counters": result.counters}
  timing["beam"] = time.time() - t0 - timing["train"] - timing["sample"]

  # (c') the same search the way a job would run it: under the logical rules with the
  # prompts split over the batch axes. Its rows are then sharded over processes, and
  # `StepBeamSearch.run` fetches them with `jax.device_get`, which cannot read another
  # process's shards: recorded, not raised, so the test can name it.
  try:
    with shd.activate(mesh, rules):
      result = search.run(state.params, state.params, prompts[:4], jax.random.PRNGKey(5),
                          prompt_sharding=shd.batch_sharding(mesh, 2))
    summary["beam_batch_sharded"] = {"error": None, "answers": result.answers}
  except RuntimeError as e:  # the cross-process fetch error (same in every process)
    summary["beam_batch_sharded"] = {"error": str(e).splitlines()[0], "answers": None}
  timing["beam_batch_sharded"] = time.time() - t0 - sum(timing.values())

  # (d) Hugging Face export and load across processes: every process takes part in the
  # export's gathers and process 0 writes; then each process loads the directory into
  # the fsdp-sharded parameters, reading only the blocks its own devices hold.
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from pavjax.models import hf  # pylint: disable=g-import-not-at-top
  export_dir = os.path.join(workdir, "hf_export")
  # pavjax's own preset scales embeddings by sqrt(D), which no Llama-like family does:
  # written as a Llama config (the tensors, not the function, are what is checked here).
  hf_cfg = dataclasses.replace(env.model_cfg, embed_scale=False)
  hf.export(state.params, hf_cfg, export_dir, value_head=True)
  multihost_utils.sync_global_devices("hf export written")
  read_elements = []
  real_read = hf._Reader.read  # pylint: disable=protected-access

  def counting_read(self, name, index):
    block = real_read(self, name, index)
    read_elements.append(block.size)
    return block

  hf._Reader.read = counting_read  # pylint: disable=protected-access
  try:
    loaded = hf.load_params(export_dir, hf_cfg, mesh, rules)
  finally:
    hf._Reader.read = real_read  # pylint: disable=protected-access
  flat, _ = jax.tree_util.tree_flatten_with_path(_fetch(loaded))
  for path, leaf in flat:
    arrays["hf_loaded" + jax.tree_util.keystr(path)] = leaf
  with open(os.path.join(export_dir, "model.safetensors"), "rb") as f:
    import hashlib  # pylint: disable=g-import-not-at-top
    summary["hf_export_sha256"] = hashlib.sha256(f.read()).hexdigest()
  summary["hf_read_elements"] = sum(read_elements)

  def distinct_elements(x):  # replicas of one block on this process are read once
    blocks = {str(shard.index): shard.data.size for shard in x.addressable_shards}
    return sum(blocks.values())

  summary["hf_held_elements"] = sum(distinct_elements(x) for x in jax.tree.leaves(loaded))
  timing["hf"] = time.time() - t0 - sum(timing.values())
  summary["timing"] = timing
  return arrays, summary


def main(argv=None) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--coordinator", default="", help="host:port of process 0")
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--out", required=True, help="results directory")
  parser.add_argument("--workdir", required=True, help="shared job workdir (checkpoints)")
  parser.add_argument("--tensor", type=int, default=1, help="tensor-parallel mesh slots")
  args = parser.parse_args(argv)
  t0 = time.time()
  # The test sends SIGUSR1 before killing a worker that ran out of time: every
  # thread's Python stack then lands in the log, showing where it hung.
  faulthandler.register(signal.SIGUSR1, all_threads=True)

  from pavjax.main import serialize_fake_cpu_devices  # pylint: disable=g-import-not-at-top
  serialize_fake_cpu_devices()
  import jax  # pylint: disable=g-import-not-at-top
  # Cross-process collectives on CPU go through gloo (TCP); it is jax 0.10's default,
  # set here so that a changed default cannot turn this test into a silent no-op.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if os.environ.get("PAVJAX_TEST_CACHE", "1") != "0":  # the suite's compilation cache
    jax.config.update("jax_compilation_cache_dir", os.path.join(ROOT, ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if args.num_processes > 1:  # one process: the single-process reference
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id,
                               initialization_timeout=60, heartbeat_timeout_seconds=30)
  assert jax.process_count() == args.num_processes, jax.process_count()
  import numpy as np  # pylint: disable=g-import-not-at-top

  arrays, summary = compute(args.workdir, args.tensor)
  summary["seconds"] = time.time() - t0
  summary["local_devices"] = jax.local_device_count()
  os.makedirs(args.out, exist_ok=True)
  name = os.path.join(args.out, f"process_{args.process_id}")
  np.savez(name + ".npz", **arrays)
  with open(name + ".json", "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  if args.num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
