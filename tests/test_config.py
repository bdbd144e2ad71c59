"""Bad configs fail before any compile, naming the field."""

import subprocess
import sys

import pytest

from pavjax import config_lib
from pavjax.main import run_job

sys.path.insert(0, ".")
from configs import sft as sft_config  # noqa: E402


def _config(**overrides):
  config = sft_config.get_config("task=toy,size=test")
  for dotted, value in overrides.items():
    section, field = dotted.split("__")
    config[section][field] = value
  return config


@pytest.mark.parametrize("overrides,field", [
    ({"optim__lr": 0.0}, "optim.lr"),
    ({"optim__lr": -1e-3}, "optim.lr"),
    ({"optim__name": "lion"}, "optim.name"),
    ({"train__batch_size": 12}, "train.batch_size"),  # 8 devices on the data axis
    ({"mesh__data": 3}, "mesh"),  # 3 * 1 * 1 != 8 devices
    ({"mesh__fsdp": 3}, "mesh"),  # -1 cannot fill 8 / 3
    ({"model__max_len": 5}, "model.max_len"),  # toy prompts have 6 tokens
    ({"model__max_len": 20}, "model.max_len"),  # prompt 6 + 16 new tokens > 20
    ({"model__num_kv_heads": 3}, "model.num_heads"),
    ({"sample__method": "beam"}, "sample.method"),
    ({"train__nonfinite": "ignore"}, "train.nonfinite"),
    ({"sample__batching": "dynamic"}, "sample.batching"),
    ({"sample__continuous_blocks": 0}, "sample.continuous_blocks"),
])
def test_bad_values_name_the_field(tmp_path, overrides, field):
  with pytest.raises(config_lib.ConfigError, match=rf"^config\.{field}: ") as err:
    run_job(_config(**overrides), str(tmp_path / "w"))
  assert err.value.field == field
  assert not (tmp_path / "w" / "checkpoints").exists()  # failed before any work


def test_workdir_escaping_its_parent_is_rejected():
  with pytest.raises(config_lib.ConfigError, match="workdir"):
    run_job(_config(), "runs/../../etc")


def _main(*args):
  return subprocess.run([sys.executable, "-m", "pavjax.main", *args], capture_output=True,
                        text=True, timeout=120, env={"JAX_PLATFORMS": "cpu",
                                                     "PATH": "/usr/bin:/bin"})


def test_cli_rejects_unknown_field_wrong_type_and_unknown_variant(tmp_path):
  w = f"--workdir={tmp_path}"
  unknown = _main("--config=configs/sft.py:size=test", w, "--config.model.hidden=3")
  assert unknown.returncode != 0
  assert "config.model.hidden: no such field" in unknown.stderr
  wrong_type = _main("--config=configs/sft.py:size=test", w, "--config.optim.lr=fast")
  assert wrong_type.returncode != 0 and "--config.optim.lr=fast" in wrong_type.stderr
  variant = _main("--config=configs/sft.py:size=test,colour=red", w)
  assert variant.returncode != 0 and "unknown variant 'colour'" in variant.stderr
  assert not any(tmp_path.iterdir())


def test_pipeline_difficulty_variant():
  pipeline = config_lib.sibling_config("configs/x.py", "pipeline")
  tiny = pipeline.get_config("size=tiny")
  assert tiny.difficulty == "easy"
  # One task, handed to every stage when the pipeline resolves them.
  assert (tiny.task.ops, tiny.task.max_operand, tiny.task.num_distractors) == ("+-", 9, 0)
  assert not any("task" in cfg for cfg in tiny.stages.values())
  gpu = pipeline.get_config("")
  assert gpu.difficulty == "default" and gpu.task.ops == "+-*"
  assert pipeline.get_config("size=tiny,difficulty=default").task.ops == "+-*"
  with pytest.raises(config_lib.ConfigError, match="difficulty"):
    pipeline.get_config("size=tiny,difficulty=hard")
  with pytest.raises(config_lib.ConfigError, match="difficulty"):
    pipeline.get_config("task=toy,difficulty=easy")


@pytest.mark.parametrize("job", ["sft", "rft", "rollouts", "train_verifier", "search", "rl"])
def test_stage_configs_take_the_pipelines_difficulty(job):
  # An experiment that runs stages by hand names the difficulty as the pipeline
  # does, so its stages see the pipeline's problems (and tokenizer).
  get = config_lib.sibling_config("configs/x.py", job).get_config
  pipe = config_lib.sibling_config("configs/x.py", "pipeline").get_config("size=tiny")
  assert get("task=arith,size=tiny,difficulty=easy").task == pipe.task
  assert get("task=arith,size=tiny").task.ops == "+-*"  # no variant: the task's defaults
  with pytest.raises(config_lib.ConfigError, match=r"^config\.difficulty: "):
    get("task=planted,size=test,difficulty=easy")


def test_model_attn_block_reaches_the_model_for_both_sources(tmp_path):
  """`model.attn_block` (decode reads filled cache slots in blocks of it; 0 reads all)
  is a config field of pavjax's own model and of a pretrained checkpoint's."""
  import json  # noqa: PLC0415
  from pavjax import models  # noqa: PLC0415
  from pavjax.models import transformer  # noqa: PLC0415
  own = config_lib.model_config("test")
  assert models.model_config_from(own, 16).attn_block == config_lib.ATTN_BLOCK == (
      transformer.TransformerConfig.attn_block)
  own.attn_block = 0
  assert models.model_config_from(own, 16).attn_block == 0
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
       "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 128}))
  hf = config_lib.hf_model_config()
  hf.path, hf.max_len = str(tmp_path), 64
  assert models.model_config_from(hf, 16).attn_block == config_lib.ATTN_BLOCK
  hf.attn_block = 32
  assert models.model_config_from(hf, 16).attn_block == 32


def test_a_frozen_checkpoint_runs_with_the_jobs_run_fields(tmp_path):
  """A pavjax checkpoint's recorded architecture is kept; the job's run fields (here
  attn_block and dtype) replace the recorded ones; a MADE keeps its max_len."""
  import json  # noqa: PLC0415
  recorded = config_lib.model_config("test").to_dict()
  recorded.update(attn_block=64, dtype="float32", mlp_dim=96)
  (tmp_path / "config.json").write_text(json.dumps({"model": recorded}))
  job = config_lib.model_config("tiny")
  job.attn_block, job.dtype, job.max_len = 0, "bfloat16", 80
  section = config_lib.checkpoint_model_section(str(tmp_path / "checkpoints"), job)
  assert (section.mlp_dim, section.attn_block, section.dtype, section.max_len) == (
      96, 0, "bfloat16", 80)
  made = config_lib.made_model_config("made").to_dict()
  (tmp_path / "config.json").write_text(json.dumps({"model": made}))
  section = config_lib.checkpoint_model_section(str(tmp_path / "checkpoints"), job)
  assert "attn_block" not in section and section.max_len == made["max_len"]
