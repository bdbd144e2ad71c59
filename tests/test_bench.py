"""Smoke tests of the benchmarks: each main runs at the tiniest size, its check can fail."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax.bench import (harness, beam, decode, load, memory, peer, prefill, rl_step,
                          rollouts, verifier_train)
from pavjax.models import Transformer

# Tiniest settings shared by every bench (flags each bench knows).
TINY = ["--size=test", "--vocab=64", "--runs=1", "--warmup=1", "--skip_ceilings",
        "--check_rows=2"]

HAS_TORCH = (importlib.util.find_spec("torch") is not None
             and importlib.util.find_spec("transformers") is not None)


def test_decode_runs_and_prints_a_table(capsys):
  # Ceilings included once here: the other smoke tests skip them for time. The cache of
  # 40 slots with blocks of 128 would be one size: --cache=300 crosses two (128, 256).
  argv = [a for a in TINY if a != "--skip_ceilings"]
  peer_flag = "--peer=1" if HAS_TORCH else "--peer=0"
  results = decode.main(argv + ["--batch=2", "--cache=300", "--new_tokens=12", "--fill=0.43",
                                peer_flag])
  (r,) = results
  assert r["batch"] == 2 and r["decode_tok_s"] > 0 and r["full_decode_tok_s"] > 0
  assert r["prompt_len"] == 123 and r["floor_frac"] > 0
  # Steps fill slots 124..135: 5 steps read 128 slots, 7 read 256, none all 300.
  assert r["slots_read"] == pytest.approx((5 * 128 + 7 * 256) / 12)
  assert r["step_bytes"] < r["full_step_bytes"]
  assert r["lowerings_after_warmup"] == 0 and r["same_rows_paths"] == 1.0
  assert 0 < r["profile"]["attention"] and 0 < r["profile"]["head"]
  assert (r["vs_hf"] > 0) if HAS_TORCH else r["vs_hf"] is None
  out = capsys.readouterr().out
  assert "Ceilings" in out and "matmul FLOP/s" in out
  lines = out.rstrip().splitlines()
  last_table = max(i for i, line in enumerate(lines) if line.startswith("|"))
  assert lines[last_table].startswith("| test")  # the workload table comes last
  assert not any(line.startswith("###") for line in lines[last_table:])  # only notes follow
  assert "rows exact argmax" in out


def test_decode_check_fails_on_a_wrong_model():
  with pytest.raises(harness.CorrectnessError, match="not the uncached model's argmax"):
    decode.main(TINY + ["--batch=2", "--cache=32", "--new_tokens=6", "--peer=0",
                        "--skip_profile", "--fault=params"])


def test_prefill_runs_and_its_check_can_fail():
  argv = TINY + ["--batch=2", "--prompt_len=40", "--cache=64", "--query_chunks=0,16,64"]
  results = prefill.main(argv + ["--peer=1" if HAS_TORCH else "--peer=0"])
  assert [r["query_chunk"] for r in results] == [0, 16, 64]
  assert all(r["prefill_s"] > 0 and r["forward_s"] > 0 for r in results)
  assert all((r["hf_s"] > 0) if HAS_TORCH else "hf_s" not in r for r in results)
  with pytest.raises(harness.CorrectnessError, match="query_chunk=16: prefill differs"):
    prefill.main(argv + ["--peer=0", "--fault=params"])


def test_rollouts_runs():
  args = ["--trajectories=2", "--prompt_len=3", "--step_len=2", "--n_mc=2", "--seq_batch=2",
          "--fork_batch=4"]
  (r,) = rollouts.main(TINY + args)
  assert r["rollouts"] == 2 * 8 * 2 and r["prefixes"] == 16
  assert r["forked_rollouts_s"] > 0 and r["ratio"] > 0 and r["ratio_per_prefix"] > 0
  assert r["continuous_rollouts_s"] > 0 and r["lowerings_after_warmup"] == 0
  # Length-skewed: the static batches idle some rows; the arena idles fewer.
  assert 0 < r["useful_static"] < r["useful_continuous"] <= 1
  assert 0 < r["mean_continuation"] < r["response_len"]
  assert 0 < r["prefix_copy_bytes"] < r["arena_kv_bytes"] and 0 < r["shared_prefix_saving"] < 0.5
  # Whole responses (RFT, evaluations): the same responses, checked inside; no recompiles.
  assert r["sampling_tokens"] > 0 and r["sampling_static_tok_s"] > 0
  assert 0 < r["sampling_useful_static"] <= r["sampling_useful_continuous"] <= 1
  assert r["sampling_static_lowerings"] == r["sampling_continuous_lowerings"] == 0


def test_summary_reads_both_benches(tmp_path):
  """gpu_run.sh's last table, from the JSON of tiny decode and rollouts runs."""
  from pavjax.bench import summary  # pylint: disable=g-import-not-at-top
  decode.main(TINY + ["--batch=2", "--cache=32", "--new_tokens=6", "--peer=0", "--skip_profile",
                      f"--json={tmp_path / 'decode.json'}"])
  lines = summary.summary_lines(str(tmp_path))
  assert any(l.startswith("| decode | test b2 cache 32 (13+6) float32 |") for l in lines)
  assert "| rollouts | - | did not finish (see rollouts.log) |" in lines
  rollouts.main(TINY + ["--trajectories=2", "--prompt_len=3", "--step_len=2", "--n_mc=2",
                        "--seq_batch=2", "--fork_batch=4", "--skip_per_prefix",
                        "--skip_independent", f"--json={tmp_path / 'rollouts.json'}"])
  lines = summary.summary_lines(str(tmp_path))
  assert any(l.startswith("| rollouts | test 2 x 8 x 2") and "continuous / static" in l
             for l in lines)
  assert "| beam | - | did not finish (see beam.log) |" in lines
  beam.main(TINY + BEAM + [f"--json={tmp_path / 'beam.json'}"])
  assert any(l.startswith("| beam | test 6 problems, N x C 1 x 2, 2 slots (4 rows)") and
             "continuous / static" in l for l in summary.summary_lines(str(tmp_path)))


BEAM = ["--problems=6", "--prompt_len=3", "--response_len=12", "--slots=2", "--beam_width=1",
        "--expansions=2", "--max_steps=4", "--max_step_tokens=6"]


def test_beam_runs_and_its_check_can_fail():
  (r,) = beam.main(TINY + BEAM)
  assert r["problems"] == 6 and r["rows"] == 2 * 1 * 2 and r["policy_tokens"] > 0
  assert r["static_tok_s"] > 0 and r["continuous_tok_s"] > 0 and r["ratio"] > 0
  assert 0 < r["static_useful"] < r["continuous_useful"] <= 1  # (pools checked equal inside)
  assert r["static_lowerings"] == r["continuous_lowerings"] == 0
  with pytest.raises(harness.CorrectnessError, match="continuous beam search"):
    beam.main(TINY + BEAM + ["--fault=keys"])


def test_beam_in_bf16_checks_a_float32_copy_and_that_check_can_fail():
  (r,) = beam.main(TINY + BEAM + ["--dtype=bfloat16"])
  assert not r["exact_check"] and r["differ_share"] == 0.0  # (a CPU: float32 is exact)
  assert r["static_tok_s"] > 0 and r["continuous_tok_s"] > 0
  with pytest.raises(harness.CorrectnessError, match="continuous beam search"):
    beam.main(TINY + BEAM + ["--dtype=bfloat16", "--fault=keys"])


def test_agreement_is_exact_on_a_cpu_in_float32_and_allows_rounding_elsewhere():
  assert harness.check_agreement("x", 0, 10, "float32") == 0.0
  with pytest.raises(harness.CorrectnessError, match="1 of 10 differ"):
    harness.check_agreement("x", 1, 10, "float32")
  assert harness.check_agreement("x", 2, 10, "bfloat16") == pytest.approx(0.2)
  with pytest.raises(harness.CorrectnessError, match="at most 25%"):
    harness.check_agreement("x", 3, 10, "bfloat16")


def test_rollouts_continuous_check_can_fail():
  args = ["--trajectories=2", "--prompt_len=3", "--step_len=2", "--n_mc=2", "--seq_batch=2",
          "--fork_batch=4", "--skip_per_prefix", "--skip_independent", "--fault=keys"]
  with pytest.raises(harness.CorrectnessError, match="continuous batching"):
    rollouts.main(TINY + args)


def test_rollouts_check_fails_on_a_wrong_model():
  args = ["--trajectories=2", "--prompt_len=3", "--step_len=2", "--n_mc=2", "--seq_batch=2",
          "--fork_batch=4", "--skip_per_prefix", "--fault=params"]
  with pytest.raises(harness.CorrectnessError, match="forked"):
    rollouts.main(TINY + args)


def test_verifier_train_runs_and_its_check_can_fail():
  args = ["--batch=2", "--seq_len=16", "--prefixes=3", "--steps_per_run=1"]
  (r,) = verifier_train.main(TINY + args)
  assert r["tokens_s"] > 0 and r["loss_check"][1] < r["loss_check"][0]
  assert r["mfu_datasheet"] is None  # no datasheet peak for a CPU
  with pytest.raises(harness.CorrectnessError, match="did not fall"):
    verifier_train.main(TINY + args + ["--fault=frozen"])


def test_rl_step_runs_without_recompiles():
  args = ["--prompts=2", "--samples=2", "--prompt_len=4", "--new_tokens=8", "--step_len=4",
          "--micro_batch=2"]
  (r,) = rl_step.main(TINY + args)
  assert r["lowerings_after_warmup"] == 0
  assert min(r["generation_s"], r["scoring_s"], r["update_s"]) > 0
  assert np.isfinite(r["loss"])


@pytest.mark.parametrize("fault,match", [("recompile", "jit lowerings"),
                                         ("shift", "log-probs recomputed")])
def test_rl_step_checks_can_fail(fault, match):
  args = ["--prompts=2", "--samples=2", "--prompt_len=4", "--new_tokens=8", "--step_len=4",
          "--micro_batch=4", f"--fault={fault}"]
  with pytest.raises(harness.CorrectnessError, match=match):
    rl_step.main(TINY + args)


def test_memory_runs_and_its_check_can_fail(capsys):
  args = ["--vocab=2048", "--batch=2", "--seq_len=64", "--logits_chunk=16", "--prefixes=4",
          "--new_tokens=8"]
  results = memory.main(TINY + args)
  by = {(r["workload"], r["path"]): r for r in results}
  assert len(results) == 7 and all(r["temp"] > 0 and r["argument"] > 0 for r in results)
  for w in ("sft", "rl"):  # chunking saves at least one [B, T, V] float32 tensor
    assert by[w, "full logits"]["temp"] - by[w, "chunk 16"]["temp"] >= 2 * 64 * 2048 * 4
  assert by["prefill", "logits at 4 ends"]["output"] < by["prefill", "full logits"]["output"]
  assert "temp / one [B,T,V] f32" in capsys.readouterr().out
  with pytest.raises(harness.CorrectnessError, match="saves less than one"):
    memory.main(TINY + args + ["--workloads=sft", "--fault=nochunk"])


def test_peer_without_torch_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(harness.MissingDependency, match="pip install torch transformers"):
    peer.main(TINY + ["--batch=2"])
  with pytest.raises(SystemExit) as e:
    harness.run_main(lambda _: peer.main(TINY + ["--batch=2"]))
  assert e.value.code == 2


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch and transformers")
def test_peer_runs_and_matches():
  args = ["--batch=2", "--prompt_len=4", "--new_tokens=6"]
  (r,) = peer.main(TINY + args)
  assert r["logit_err"] < 1e-3 and r["same_rows"] == 1.0 and r["ratio"] > 0
  with pytest.raises(harness.CorrectnessError, match="logits differ"):
    peer.main(TINY + args + ["--fault=params"])


def test_check_greedy_detects_a_changed_token():
  cfg = harness.model_config("test", 64, "float32", 32)
  model = Transformer(cfg)
  params = harness.init_params(model)
  contexts = [[5, 6, 7], [9, 10]]  # different lengths: right-padded internally
  buf, ctx_len, _ = harness.build_sequences(contexts, np.zeros((2, 5), np.int32))
  for i in range(2):
    buf[i, ctx_len[i]:] = 0
  ref = np.asarray(harness.reference_greedy(model, params, jnp.asarray(buf),
                                           jnp.asarray(ctx_len), 5))
  generated = np.stack([ref[i, ctx_len[i]:ctx_len[i] + 5] for i in range(2)])
  msg = harness.check_greedy(model, params, contexts, generated, dtype="float32", what="t")
  assert "2/2 rows identical" in msg
  logits = model.apply({"params": params}, jnp.asarray(ref)).logits
  wrong = generated.copy()
  # Replace row 1's third token by its least likely alternative.
  wrong[1, 2] = int(jnp.argmin(logits[1, ctx_len[1] + 1]))
  with pytest.raises(harness.CorrectnessError, match="row 1 at token 2"):
    harness.check_greedy(model, params, contexts, wrong, dtype="float32", what="t")


def test_compile_counter_counts_new_shapes_only():
  f = jax.jit(lambda x: x * 2 + 1)
  three, four = jnp.ones(3), jnp.ones(4)
  f(three)
  with harness.CompileCounter() as same:
    f(three)
  with harness.CompileCounter() as new:
    f(four)
  assert same.lowerings == 0 and new.lowerings == 1


def test_flags_take_cpu_defaults_and_tables_align():
  args = harness.parse_flags([], description="", gpu={"size": ("125m",), "batch": (256,),
                                                     "dtype": "bfloat16", "vocab": 32000},
                            cpu={"size": ("test",), "batch": (4,), "dtype": "float32",
                                 "vocab": 64})
  assert args.size == ("test",) and args.batch == (4,) and args.dtype == "float32"
  with pytest.raises(ValueError, match="unknown size"):
    harness.parse_flags(["--size=huge"], description="", gpu={}, cpu={"batch": (1,),
                                                                     "dtype": "float32",
                                                                     "vocab": 8})
  table = harness.format_table(["a", "bb"], [[1, 2], ["long", 3]]).splitlines()
  assert len({len(line) for line in table}) == 1
  assert harness.device_info().peak_flops is None  # CPU: no datasheet numbers


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch and transformers")
def test_load_runs_and_its_check_can_fail():
  args = ["--shape=tiny", "--batch=2", "--prompt_len=4", "--new_tokens=6", "--runs=1",
          "--warmup=1"]
  (r,) = load.main(args)
  assert r["same_rows"] == 1.0 and r["load_s"] > 0 and r["checkpoint_bytes"] > 0
  assert r["rss_peak"] >= r["rss_before"] and r["pavjax_tok_s"] > 0 and r["hf_tok_s"] > 0
  with pytest.raises(harness.CorrectnessError, match="first greedy token differs"):
    load.main(args + ["--fault=params"])


def test_gpu_run_script_passes_flags_each_bench_knows():
  """gpu_run.sh runs once, on a lent GPU: a flag typo or a JSON name the summary does not
  read must fail here. Each command's flags go through its bench's own parser (nothing
  runs), and the benches' time limits fit one 10-minute call."""
  import importlib  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import shlex  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(harness.__file__), "gpu_run.sh")
  text = open(path, encoding="utf-8").read().replace("\\\n", " ")
  commands = re.findall(r"^timeout (\d+) python -m pavjax\.bench\.(\w+) (.*?)(?: 2>&1|$)", text,
                        re.M)
  assert [name for _, name, _ in commands] == ["decode", "rollouts", "beam", "prefill"]
  written = set()
  for _, name, rest in commands:
    bench = importlib.import_module(f"pavjax.bench.{name}")
    argv = shlex.split(rest.replace('"$OUT', '"/tmp/out'))
    harness.parse_flags(argv, description="", gpu=bench.GPU, cpu=bench.CPU,
                        add_flags=bench.add_flags)  # SystemExit on an unknown flag
    written |= {os.path.basename(a.split("=", 1)[1]) for a in argv if a.startswith("--json=")}
  assert {"decode.json", "rollouts.json", "beam.json"} <= written  # what summary reads
  assert sum(int(limit) for limit, _, _ in commands) <= 590
