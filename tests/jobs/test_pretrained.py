"""Jobs on a Hugging Face checkpoint (the `hf=<dir>` config variant), checked against
transformers: SFT starts from the checkpoint's weights with its tokenizer, the export
command writes a directory transformers loads with the same logits, and every stage
of the pipeline runs on it.

The checkpoint is tests/pretrained.py's: a random Qwen2 (2 layers, D=64) with a
byte-level BPE trained on arith's text, whose id 0 is a plain byte.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import artifacts
from pavjax import config_lib
from pavjax import runtime
from pavjax.main import run_job
from pavjax.models import hf
from tests import pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

sys.path.insert(0, ".")
from configs import sft as sft_config  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return pretrained.write_checkpoint(str(tmp_path_factory.mktemp("qwen2_arith")))


def _tensors(path):
  out = {}
  with safe_open(os.path.join(path, "model.safetensors"), framework="numpy") as f:
    for name in f.keys():
      out[name] = f.get_tensor(name)
  return out


def _export(workdir, out, *extra):
  """`python -m pavjax.export` in a fresh process, as a user runs it."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-m", "pavjax.export", f"--workdir={workdir}",
                         f"--out={out}", *extra], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


def _job_params(workdir):
  """The params of a job's latest checkpoint and the job's environment."""
  with open(os.path.join(workdir, artifacts.CONFIG), encoding="utf-8") as f:
    import ml_collections  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(json.load(f))
  env = runtime.setup(config, workdir)
  return env, runtime.load_params(env, os.path.join(workdir, artifacts.CHECKPOINTS), "workdir")


def _same_logits(env, params, out_dir, tokens):
  """transformers on the exported dir and pavjax on the job's params: the same logits."""
  ours = np.asarray(jax.jit(env.model.apply)({"params": params}, jnp.asarray(tokens)).logits)
  model = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = model(torch.from_numpy(np.asarray(tokens, np.int64))).logits.numpy()
  np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)


def test_the_variant_points_model_weights_and_tokenizer_at_the_checkpoint(checkpoint):
  config = sft_config.get_config(f"task=arith,size=tiny,hf={checkpoint}")
  assert (config.model.source, config.model.path) == ("hf", checkpoint)
  assert config.init_from == checkpoint and config.task.hf_tokenizer == checkpoint
  assert config.model.max_len == sft_config.get_config("task=arith").model.max_len
  search = config_lib.sibling_config("configs/x.py", "search").get_config(f"hf={checkpoint}")
  assert search.policy.checkpoint == checkpoint and search.model.path == checkpoint


def test_a_bad_checkpoint_dir_fails_validation_naming_the_field(checkpoint, tmp_path):
  config = sft_config.get_config(f"task=arith,hf={tmp_path / 'missing'}")
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.path: .*missing: no config"):
    run_job(config, str(tmp_path / "run"))
  config = sft_config.get_config(f"task=arith,hf={checkpoint}")
  config.task.hf_tokenizer = str(tmp_path)
  with pytest.raises(config_lib.ConfigError, match=r"config\.task\.hf_tokenizer: .*no tokenizer"):
    run_job(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # nothing written


def test_sft_starts_from_the_checkpoint_and_exports_what_transformers_loads(checkpoint,
                                                                           tmp_path):
  workdir = str(tmp_path / "sft")
  config = sft_config.get_config(f"task=arith,size=tiny,difficulty=easy,hf={checkpoint}")
  config.train.num_steps, config.train.batch_size = 2, 16
  config.optim.lr = 1e-4
  config.checkpoint.every = 2
  config.sample.num_eval = config.sample.batch_size = 8
  summary = run_job(config, workdir)
  assert summary["origin"] == f"init_from {checkpoint}"
  env, params = _job_params(workdir)
  assert env.task.pad_id == 320 and env.task.eos_id == 322  # the checkpoint's own ids

  out = _export(workdir, str(tmp_path / "sft_hf"))
  assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors",
                                     "tokenizer.json", "tokenizer_config.json"]
  for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    with open(os.path.join(out, name), "rb") as a, open(os.path.join(checkpoint, name), "rb") as b:
      assert a.read() == b.read(), name
  # Two Adam steps at lr <= 1e-4 move each weight by at most about 2e-4: the export is the
  # checkpoint, slightly trained, not a fresh initialisation (which would differ by the
  # init scale, 0.02, everywhere).
  source, exported = _tensors(checkpoint), _tensors(out)
  assert sorted(source) == sorted(exported)
  for name, x in source.items():
    assert np.max(np.abs(exported[name] - x)) < 1e-3, name
  assert any(not np.array_equal(exported[n], x) for n, x in source.items())
  seqs = [env.task.encode_prompt(p) + env.task.encode_solution(p)
          for p in env.task.split("validation")[:2]]
  width = min(map(len, seqs))
  _same_logits(env, params, out, np.array([s[:width] for s in seqs], np.int32))


def _export_fails(workdir, out):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-m", "pavjax.export", f"--workdir={workdir}",
                         f"--out={out}"], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert not os.path.exists(out)
  return proc.stderr


def test_export_refuses_a_workdir_without_a_checkpoint(tmp_path):
  stderr = _export_fails(tmp_path, tmp_path / "out")
  assert "pavjax: export failed:" in stderr and "config.json" in stderr


def test_export_refuses_a_model_of_pavjax_s_own_presets(toy_policy, tmp_path):
  stderr = _export_fails(os.path.dirname(toy_policy), tmp_path / "out")
  assert "pavjax: export failed: family 'llama' cannot express {'embed_scale': True}" in stderr
  assert "model.size=hf" in stderr


def _gsm_jsonl(folder):
  """40 GSM-style training lines and 10 test lines (two-step additions)."""
  os.makedirs(folder)
  for name, count, who in (("train", 40, "Tom"), ("test", 10, "Ann")):
    with open(os.path.join(folder, f"{name}.jsonl"), "w", encoding="utf-8") as f:
      for i in range(count):
        a, b = i + 2, 2 * i + 5
        f.write(json.dumps({"question": f"{who} has {a} apples and gets {b} more. How many?",
                            "answer": f"{who} has {a}.\n{who} gets {b}.\n{a}+{b}={a + b}\n"
                                      f"#### {a + b}"}) + "\n")
  return folder


def _pipeline_config(checkpoint, data_dir):
  """Every stage at its smallest, on your JSONL, from the checkpoint, its tokenizer included."""
  config = config_lib.sibling_config("configs/x.py", "pipeline").get_config(
      f"task=jsonl_math,size=tiny,hf={checkpoint}")
  config.task.manual_dir = data_dir  # one task for every stage
  config.task.max_prompt_len, config.task.max_response_len = 48, 48
  config.task.val_fraction = 0.1
  s = config.stages
  for cfg in s.values():
    cfg.model.max_len, cfg.sample.max_new_tokens = 96, 48
    cfg.sample.batch_size, cfg.sample.num_eval = 8, 4
  s.sft.train.num_steps, s.sft.train.batch_size, s.sft.optim.lr = 300, 16, 3e-3
  s.rft.rft.num_problems, s.rft.rft.num_samples = 16, 4  # train problems: SFT knows them
  s.rft.train.num_steps, s.rft.train.batch_size = 4, 8
  for name in ("rollouts_train", "rollouts_validation", "rollouts_prover_train",
               "rollouts_prover_validation"):
    s[name].rollouts.num_problems, s[name].rollouts.n_cov, s[name].rollouts.n_mc = 4, 2, 2
    s[name].rollouts.problems_per_shard = 4
  for name in ("verifier_q", "verifier_orm", "verifier_prover"):
    s[name].train.num_steps, s[name].train.batch_size, s[name].train.log_every = 4, 8, 2
    s[name].checkpoint.every = 4
  s.search.search.num_problems, s.search.search.num_subsets = 4, 2
  s.search.search.ns, s.search.search.beam_ns = "1,2", "2"
  s.search.search.max_rows = 16
  for name in ("rl_pav", "rl_outcome"):
    s[name].train.num_steps, s[name].train.eval_every, s[name].train.log_every = 2, 2, 1
    s[name].checkpoint.every = 2
    s[name].rl.num_prompts, s[name].rl.group_size, s[name].train.batch_size = 8, 2, 16
    s[name].rl.eval_pass_ns = "1,2"
  return config


def test_the_pipeline_runs_every_stage_on_your_jsonl_with_three_models(checkpoint, tmp_path):
  """Policy from the checkpoint; a smaller random checkpoint (same tokenizer) as the
  prover and as the verifiers' backbone: every stage runs and each model is its own."""
  small = pretrained.write_checkpoint(str(tmp_path / "small"), seed=1,
                                      sizes=pretrained.SMALL_MODEL, tokenizer_from=checkpoint)
  config = _pipeline_config(checkpoint, _gsm_jsonl(str(tmp_path / "gsm")))
  config.models.prover = config.models.verifier = small
  workdir = str(tmp_path / "run")
  out = run_job(config, workdir)
  assert set(out["stages"].values()) == {"ran"} and len(out["stages"]) == 12
  run = tmp_path / "run"
  with open(run / "sft" / artifacts.SUMMARY) as f:
    sft = json.load(f)
  assert sft["origin"] == f"init_from {checkpoint}"
  with open(run / "rft" / artifacts.SUMMARY) as f:
    assert json.load(f)["rft_data"]["correct"] > 0  # RFT kept correct samples
  policy_params = sft["params"]
  small_params = hf.config_from_hf(small).num_params()
  assert small_params < policy_params / 2

  # The prover's rollouts ran the small model on the policy's seeds ...
  manifest = json.loads((run / "rollouts_prover_train" / artifacts.SUMMARY).read_text())
  assert manifest["models"]["prover"] == {"checkpoint": small, "params": small_params}
  assert manifest["models"]["policy"]["params"] == policy_params
  # ... every verifier is the small backbone plus a head, started from its weights ...
  for name in ("verifier_q", "verifier_orm", "verifier_prover"):
    summary = json.loads((run / name / artifacts.SUMMARY).read_text())
    assert summary["origin"] == f"init_from {small}", name
    assert summary["params"] == small_params, name
  # ... and search and PAV-RL score with them, charging each model at its own size.
  results = json.loads((run / "search" / "results.json").read_text())
  assert results["models"]["policy"]["params"] == policy_params
  assert {results["models"][k]["params"] for k in ("verifier_q", "verifier_orm",
                                                   "prover_verifier")} == {small_params}
  assert results["models"]["prover_verifier"]["checkpoint"].endswith(
      os.path.join("verifier_prover", artifacts.CHECKPOINTS))
  assert results["settings"]["prover"] == "verifier"
  row = results["curves"]["bon:orm"][0]
  policy_tokens = row.get("prefill_tokens", 0) + row["policy_tokens"]
  assert row["flops"] == pytest.approx(
      2.0 * (policy_params * policy_tokens + small_params * row["verifier_tokens"]), rel=1e-12)
  assert row["verifier_tokens"] > 0 and policy_tokens > 0
  rl = json.loads((run / "rl_pav" / artifacts.SUMMARY).read_text())
  assert rl["models"]["prover_verifier"]["params"] == small_params
  report = (run / "report.md").read_text()
  assert "## Accuracy" in report and "PAV beam search, N=2" in report
  assert "## Models" in report and f"| prover | `{small}` |" in report
  assert "prover's Q^mu" in report

  # A verifier exports its trunk and value head; loading the export gives both back.
  env, params = _job_params(str(run / "verifier_q"))
  assert env.task.name == "jsonl_math" and env.task.pad_id == 320  # the checkpoint's ids
  exported = _export(str(run / "verifier_q"), str(tmp_path / "prm_hf"), "--value_head")
  tensors = _tensors(exported)
  np.testing.assert_array_equal(tensors[hf.VALUE_HEAD_WEIGHT],
                                np.asarray(params["value_w"]).reshape(1, -1))
  np.testing.assert_array_equal(tensors[hf.VALUE_HEAD_BIAS],
                                np.asarray(params["value_b"]).reshape(1))
  again = hf.load_params(exported, env.model_cfg)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
