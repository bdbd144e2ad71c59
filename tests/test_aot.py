"""pavjax.aot: every step compiled for a TPU slice on this CPU machine, memory per chip.

libtpu (from the `test` extra's `jax[tpu]`) describes a v5e:2x2 slice without any TPU;
the steps are compiled by the TPU compiler for its 4 chips. The memory table is checked
against the arithmetic of parameter and optimizer bytes per chip: a model whose every
parameter has an `embed` axis of 512 is split 4 ways by `fsdp=4`, so each chip holds a
quarter of each tensor, and AdamW keeps two more copies (mu, nu). The model's shapes are
chosen so that every quarter fills whole TPU tiles (8 x 128 for 32-bit values), so the
compiler's padded layout adds nothing to them; a scalar (the step, Adam's counts, the
value head's bias) or the uint32[2] key takes one 512-byte row, as TPU lays out any
array of at most 128 32-bit values.
"""

import json
import math
import os

import pytest

from pavjax import aot
from pavjax import config_lib
from pavjax.models import hf
from pavjax.models import shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(ROOT, "configs", "pipeline.py")
ROW = 512  # bytes of one TPU row of 128 32-bit values: a scalar's or a key's footprint

# The aligned test model: D=512 (a quarter: 128 lanes), 8 layers (norm scales [8, 128]),
# 8 query and 8 kv heads of 128, MLP 512, vocabulary 1024.
DIMS = dict(embed_dim=512, num_layers=8, num_heads=8, num_kv_heads=8, head_dim=128,
            mlp_dim=512)
VOCAB = 1024


def _params(embed_dim, num_layers, num_heads, num_kv_heads, head_dim, mlp_dim, vocab):
  """Parameters of pavjax's transformer, by hand: tied embedding, attention, SwiGLU, two
  norms per layer, the final norm and the value head (weight [D] and bias [])."""
  d = embed_dim
  attn = d * head_dim * (2 * num_heads + 2 * num_kv_heads)
  per_layer = attn + 3 * d * mlp_dim + 2 * d
  return vocab * d + num_layers * per_layer + d + d + 1


def _tiny_pipeline(**stage_fields):
  config = config_lib.load_config_file(f"{PIPELINE}:size=tiny")
  with config.unlocked():
    for s in config.stages.values():
      s.mesh.data, s.mesh.fsdp, s.mesh.tensor = 1, 4, 1
      s.model.update(DIMS)
      if "sample" in s:
        s.sample.batch_size = 64
      for k, v in stage_fields.items():
        section, field = k.split(".")
        s[section][field] = v
  return config


@pytest.fixture(scope="module")
def topology():
  return aot.tpu_topology("v5e:2x2")


def test_the_slice_is_described_without_a_tpu(topology):
  import jax
  assert jax.default_backend() == "cpu" and jax.device_count() == 8  # the suite's devices
  assert topology.num_chips == 4 and topology.hbm_bytes == 16 * 2**30
  assert {d.platform for d in topology.devices} == {"tpu"}
  v4 = aot.tpu_topology("v4:2x2x1")  # megacore: one device per chip, 32 GiB each
  assert v4.num_chips == 4 and v4.hbm_bytes == 32 * 2**30
  assert aot.tpu_topology("v5p:2x2x2", hbm_gib=90).hbm_bytes == 90 * 2**30
  for bad in ("v5e", "v9:2x2", "v5e:4"):
    with pytest.raises(aot.AotError, match="--topology"):
      aot.tpu_topology(bad)


def test_named_shapes_give_the_published_parameter_counts(tmp_path):
  for name, published in shapes.PUBLISHED_PARAMS.items():
    cfg = hf.config_from_hf(shapes.config_dict(name), max_len=2048)
    assert cfg.num_params() - (cfg.embed_dim + 1) == published, name  # minus the value head
  # A config.json on disk (no weights) is read the same way, as a dir or as the file.
  (tmp_path / "config.json").write_text(json.dumps(shapes.SHAPES["gemma2-2b"]))
  assert shapes.config_dict(str(tmp_path)) == shapes.SHAPES["gemma2-2b"]
  assert shapes.config_dict(str(tmp_path / "config.json")) == shapes.SHAPES["gemma2-2b"]
  with pytest.raises(ValueError, match="named shape"):
    shapes.config_dict(str(tmp_path / "missing"))


def test_memory_table_matches_parameter_and_optimizer_bytes(topology):
  n = _params(**DIMS, vocab=VOCAB)
  assert n == 23_602_177
  # Per chip: a quarter of every tensor except the value head's bias, a whole row.
  params = 4 * (n - 1) // 4 + ROW
  state = 3 * params + 3 * ROW + ROW  # params, mu, nu; step + 2 optimizer counts; the key
  rows = {f"{r.stage}/{r.step}": r for r in aot.run(
      _tiny_pipeline(), topology, vocab=VOCAB, prefixes=128, log=lambda m: None,
      steps=["sft/train", "verifier_q/train", "rl_pav/generate", "rl_pav/update"])}
  assert set(rows) == {"sft/train", "verifier_q/train", "rl_pav/generate", "rl_pav/update"}

  sft = rows["sft/train"]  # batch 32 x 128 tokens: inputs, targets int32, mask float32
  assert sft.args == state + 3 * (32 // 4) * 128 * 4
  assert sft.alias == state  # the donated state is updated in place
  assert sft.resident == 0 and sft.temp > 0
  assert sft.total == sft.args + sft.out - sft.alias + sft.temp

  ver = rows["verifier_q/train"]  # tokens [32, 128] int32; 128 prefix ends: int32, bool, f32
  assert ver.args == state + (32 // 4) * 128 * (4 + 4 + 1 + 4)
  assert ver.alias == state and ver.resident == 0

  # RL: the frozen reference policy and the prover's verifier (here the policy's shape)
  # stay on the chip beside the train state.
  upd = rows["rl_pav/update"]
  batch = 4 * (64 // 4) * 128 * 4  # tokens, mask, returns, ref_logp: [64, 128] each
  assert upd.alias == state and upd.resident == 2 * params
  assert 0 <= upd.args - state - batch <= 2 * 4096  # + outcome, dense [64, 1]
  gen = rows["rl_pav/generate"]  # takes the params; the optimizer state stays resident
  assert gen.resident == (state - params) + 2 * params
  assert params < gen.args < params + 4096  # + prompts, lengths and the key
  for r in rows.values():
    assert r.fits and r.hbm == 16 * 2**30 and r.compile_s > 0


def test_a_step_that_does_not_fit_exits_1_naming_it_and_the_shortfall(tmp_path, capsys):
  out = tmp_path / "rows.json"
  argv = ["aot", f"--config={PIPELINE}:size=tiny", "--config.only=sft", "--topology=v5e:2x2",
          "--steps=sft/train", "--hbm_gib=0.001", f"--json={out}"]
  assert aot.main(argv) == 1
  (row,) = json.loads(out.read_text())["rows"]
  hbm = int(0.001 * 2**30)
  assert row["hbm"] == hbm and not row["fits"] and row["shortfall"] == row["total"] - hbm > 0
  err = capsys.readouterr().err
  assert (f"pavjax.aot: sft/train does not fit on v5e:2x2: needs {aot._gib(row['total'])} per "
          f"chip of {aot._gib(hbm)} HBM, {aot._gib(row['shortfall'])} short") in err
  # The same step at the chip's own HBM fits.
  assert aot.main(argv[:-2]) == 0


@pytest.mark.parametrize("override, field", [
    ("--config.stages.sft.mesh.fsdp=3", "mesh"),  # 3 does not divide 4 chips
    ("--config.stages.rl_pav.rl.num_prompts=6", "stages.rl_pav.rl.num_prompts"),
])
def test_a_bad_config_exits_2_before_compiling(override, field, capsys):
  argv = ["aot", f"--config={PIPELINE}:size=tiny", "--topology=v5e:2x2",
          "--config.stages.rl_pav.mesh.data=4", override]
  assert aot.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("pavjax.aot: bad config:") and field in err
  assert aot.main(["aot", f"--config={PIPELINE}:size=tiny", "--topology=v5e"]) == 2


def test_the_papers_three_models_by_name_and_by_config_json(tmp_path):
  """Policy 9B, prover 2B (a config.json without weights), verifiers 9B: each stage's
  steps run the model that stage reads, and the jobs' long-lived arrays are held."""
  prover = tmp_path / "gemma-2-2b"
  prover.mkdir()
  (prover / "config.json").write_text(json.dumps(shapes.SHAPES["gemma2-2b"]))
  config = config_lib.load_config_file(
      f"{PIPELINE}:task=jsonl_math,size=pod,slice=v5p-2x2x2,hf=gemma2-9b,"
      f"prover={prover},verifier=gemma2-9b")
  _, jobs = aot.plan(config, aot.tpu_topology("v5p:2x2x2"))
  steps = {f"{s.stage}/{s.name}": s for j in jobs for s in j.steps}
  nine, two = "gemma2-9b (9.24B)", "gemma-2-2b (2.61B)"
  assert steps["sft/train"].model == nine and steps["rl_pav/update"].model == nine
  assert steps["rollouts_prover_train/seeds"].model == nine  # the policy's seeds
  assert steps["rollouts_prover_train/fork"].model == two  # the prover's continuations
  assert steps["rollouts_train/fork"].model == nine  # Q^pi: the policy continues
  assert steps["verifier_prover/train"].model == nine and steps["rl_pav/score"].model == nine
  assert steps["search/beam_prover_values"].model == nine
  # RFT samples from its init before its train state exists: only those params are live.
  assert steps["rft/rft_sample"].live == ("params",) and steps["rft/eval_sample"].live is None
  # Lengths the data would decide: 512 prompt + 1024 response tokens (the flags' default).
  assert steps["rl_pav/generate"].shapes == "B=32x4 P=512 N=1024"
  held = {j.stage: set(j.held) for j in jobs}
  assert held["rl_pav"] == {"params", "optimizer state", "reference params",
                            "prover verifier params"}
  assert held["rollouts_prover_train"] == {"policy params", "prover params"}
  rl = next(j for j in jobs if j.stage == "rl_pav")
  dt = {x.dtype.name for x in __import__("jax").tree.leaves(rl.held["params"])}
  assert dt == {"float32"}  # trained in float32; read-only stages store bfloat16
  search = next(j for j in jobs if j.stage == "search")
  assert {x.dtype.name for x in __import__("jax").tree.leaves(
      search.held["policy params"])} == {"bfloat16"}
  assert dict(rl.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  # Beam search trades data parallelism for tensor parallelism (a KV cache per candidate).
  assert dict(search.mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 4}
  assert math.prod(search.mesh.devices.shape) == 8
  with pytest.raises(config_lib.ConfigError, match="slice='v5p-2x2x2' needs size=pod"):
    config_lib.load_config_file(f"{PIPELINE}:size=gpu,slice=v5p-2x2x2")


def test_a_step_the_compiler_refuses_is_a_step_that_does_not_fit(tmp_path, capsys):
  """The paper's 9B RL update on 4 v5e chips: the TPU compiler itself runs out of HBM
  (the train state alone is 111 GB). The row says so, with the compiler's own count."""
  out = tmp_path / "rows.json"
  argv = ["aot", f"--config={PIPELINE}:task=jsonl_math,size=pod,slice=v5p-2x2x2,"
          "hf=gemma2-9b,prover=gemma2-2b,verifier=gemma2-9b", "--topology=v5e:2x2",
          "--config.stages.rl_pav.mesh.fsdp=4", "--config.only=rl_pav",
          "--steps=rl_pav/update", f"--json={out}"]
  assert aot.main(argv) == 1
  (row,) = json.loads(out.read_text())["rows"]
  assert not row["fits"] and "RESOURCE_EXHAUSTED" in row["error"]
  # The reference policy and the prover's verifier stay resident: 9.24B float32
  # parameters each (RL trains, so it stores float32), a quarter per chip, padded.
  assert row["resident"] >= 2 * 4 * shapes.PUBLISHED_PARAMS["gemma2-9b"] // 4
  import re
  need, have = [float(x) * 2**30 for x in re.search(
      r"\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", row["error"]).groups()]
  assert row["shortfall"] == int(need) - int(have) + row["resident"]
  err = capsys.readouterr().err
  assert "pavjax.aot: rl_pav/update does not fit on v5e:2x2: the TPU compiler ran out of HBM, " \
         f"at least {aot._gib(row['shortfall'])} short" in err


def test_a_separate_value_network_doubles_the_rl_state_not_what_sampling_reads(topology):
  """rl.value_model='separate': the update holds two networks, each with AdamW's two
  moments and its own two counts; generation still reads the policy's params only."""
  params = 4 * (_params(**DIMS, vocab=VOCAB) - 1) // 4 + ROW
  state = 6 * params + 5 * ROW + ROW  # 2 x (params, mu, nu); step + 2 x 2 counts; the key
  config = _tiny_pipeline()
  with config.unlocked():
    config.stages.rl_pav.rl.value_model = "separate"
  rows = {r.step: r for r in aot.run(config, topology, vocab=VOCAB, prefixes=128,
                                     log=lambda m: None,
                                     steps=["rl_pav/generate", "rl_pav/update"])}
  upd, gen = rows["update"], rows["generate"]
  assert upd.alias == state and upd.resident == 2 * params  # reference + prover verifier
  assert gen.resident == (state - params) + 2 * params
  assert params < gen.args < params + 4096


def test_continuous_rollouts_compile_over_the_stacked_blocks(topology):
  """rollouts.batching='continuous' compiles `fork_continuous` in place of `fork`: its
  inputs are `continuous_blocks` prefills' caches and logits stacked into one (so, on
  each chip, that many times the static fork's), plus the padded prefix list and keys."""
  rows = {}
  for batching in ("static", "continuous"):
    config = _tiny_pipeline()
    with config.unlocked():
      config.stages.rollouts_train.rollouts.batching = batching
    for r in aot.run(config, topology, vocab=VOCAB, prefixes=16, log=lambda m: None,
                     steps=["rollouts_train/fork*", "rollouts_train/prefill"]):
      rows[(batching, r.step)] = r
  assert set(rows) == {("static", "prefill"), ("static", "fork"),
                       ("continuous", "prefill"), ("continuous", "fork_continuous")}
  fork, cont = rows[("static", "fork")], rows[("continuous", "fork_continuous")]
  prefilled = rows[("static", "prefill")].out  # one block's cache and logits, per chip
  params = fork.args - prefilled - 3 * 512 - ROW  # rows, ends, picks [32]; the key
  blocks = config_lib.load_config_file(f"{PIPELINE}:size=tiny").stages.rollouts_train.rollouts
  group = blocks.continuous_blocks
  assert group > 1 and cont.shapes.startswith(f"B=32x4 blocks={group} items={group * 32 * 16}x4")
  extra = cont.args - params - group * prefilled  # the prefix list, count and keys
  assert 0 < extra < 2 * group * 32 * 16 * 4 * 8
  assert cont.fits and fork.fits and not cont.error


def test_continuous_refills_read_the_source_rows_locally(topology):
  """The refill inside fork_continuous's decode loop reads one prefilled row at a traced
  index. With the source split over data-parallel chips, that read would all-gather the
  whole source once per refill; the source is gathered once, before the loop, instead."""
  import re  # noqa: PLC0415
  from pavjax import sharding as shd  # noqa: PLC0415
  config = _tiny_pipeline()
  with config.unlocked():
    config.stages.rollouts_train.rollouts.batching = "continuous"
  _, jobs = aot.plan(config, topology, vocab=VOCAB, prefixes=16)
  (job,) = [j for j in jobs if j.stage == "rollouts_train"]
  comp, previous = aot.Compiler(job.mesh, job.rules, topology.hbm_bytes), {}
  for step in job.steps:
    if step.name in ("prefill", "fork_continuous"):
      args = aot._resolve_args(step, previous)
      previous[step.name] = comp.compile(step, args)[1]
  with shd.activate(job.mesh, job.rules):
    text = step.jitted.lower(*args, **step.static).compile().as_text()
  gathers = [re.search(r'op_name="([^"]+)"', line).group(1)
             for line in text.splitlines() if " all-gather(" in line and "op_name" in line]
  source = [g for g in gathers if g.endswith(("dynamic_slice", "sharding_constraint"))]
  assert source and not [g for g in source if "/while/" in g], source


def test_continuous_sampling_compiles_generate_continuous_over_the_blocks(topology):
  """sample.batching='continuous': the SFT evaluation's sampling call is
  `Sampler.generate_continuous` over continuous_blocks calls' prompts (so that many
  prompts' caches per chip); RL's training generation is generate_continuous of its
  16 x 4 rows through an arena of 64 / continuous_blocks."""
  config = _tiny_pipeline()
  with config.unlocked():
    for name in ("sft", "rl_pav"):
      config.stages[name].sample.batching = "continuous"
      config.stages[name].sample.continuous_blocks = 2
  rows = {f"{r.stage}/{r.step}": r for r in aot.run(
      config, topology, vocab=VOCAB, log=lambda m: None,
      steps=["sft/eval_sample", "rl_pav/generate"])}
  ev, gen = rows["sft/eval_sample"], rows["rl_pav/generate"]
  assert ev.shapes.startswith("B=64x1 blocks=2 ") and gen.shapes.startswith("B=16x4 arena=32 ")
  assert ev.fits and gen.fits and not ev.error and not gen.error
