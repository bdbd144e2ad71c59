"""Pipeline: all stages on the toy task, report.md, skip when complete, rerun what changed."""

import json
import subprocess
import sys
import os

import pytest

from pavjax import config_lib
from pavjax.main import run_job


def _config():
  config = config_lib.sibling_config("configs/x.py", "pipeline").get_config("task=toy,size=tiny")
  s = config.stages
  for cfg in s.values():
    cfg.model = config_lib.model_config("test")
    cfg.sample.batch_size = 32
    cfg.sample.num_eval = 8
  s.sft.train.num_steps, s.sft.train.batch_size = 60, 32
  s.rft.rft.num_problems, s.rft.rft.num_samples = 32, 2
  s.rft.train.num_steps, s.rft.train.batch_size = 4, 16
  for name in ("rollouts_train", "rollouts_validation"):
    s[name].rollouts.num_problems, s[name].rollouts.n_cov, s[name].rollouts.n_mc = 8, 2, 2
    s[name].rollouts.problems_per_shard = 8
  for name in ("verifier_q", "verifier_orm"):
    s[name].train.num_steps, s[name].train.batch_size, s[name].train.log_every = 4, 16, 2
  s.search.search.num_problems, s.search.search.num_subsets = 4, 4
  s.search.search.ns, s.search.search.beam_ns = "1,2", "2"
  s.search.search.max_rows = 32
  for name in ("rl_pav", "rl_outcome"):
    s[name].train.num_steps, s[name].train.eval_every, s[name].train.log_every = 4, 2, 1
    s[name].rl.eval_pass_ns = "1,2"
  return config


def _states(workdir):
  out = {}
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name, "stage.json")
    if os.path.exists(path):
      with open(path) as f:
        out[name] = json.load(f)
  return out


def test_pipeline_runs_every_stage_then_skips_and_reruns_only_what_changed(tmp_path):
  workdir = str(tmp_path)
  out = run_job(_config(), workdir)
  assert set(out["stages"].values()) == {"ran"} and len(out["stages"]) == 9
  report = (tmp_path / "report.md").read_text()
  for section in ("## Accuracy", "ORM best-of-N, N=2", "PAV beam search, N=2", "PAV-RL (prover bok, alpha 1), 4 iterations",
                  "## Compute efficiency", "## RL: sample efficiency", "## Prover diagnostics",
                  "## Sampled solutions", "## Stages"):
    assert section in report, section
  first = _states(workdir)
  assert all(s["complete"] for s in first.values())

  again = run_job(_config(), workdir)
  assert set(again["stages"].values()) == {"skipped (complete)"}

  changed = _config()
  changed.stages.verifier_q.train.num_steps = 6  # verifier_q, then search and rl_pav depend on it
  third = run_job(changed, workdir)
  rerun = {n for n, a in third["stages"].items() if a != "skipped (complete)"}
  assert rerun == {"verifier_q", "search", "rl_pav"}, third["stages"]
  assert any(n.startswith("verifier_q.stale-") for n in os.listdir(workdir))


def test_a_bad_stage_field_is_named_with_its_stage(tmp_path):
  config = _config()
  config.stages.rl_pav.train.batch_size = 12
  config.stages.rl_pav.mesh.data = 8
  with pytest.raises(config_lib.ConfigError, match=r"stages\.rl_pav\.train\.batch_size"):
    run_job(config, str(tmp_path))


def test_the_command_line_runs_a_stage(tmp_path):
  """`python -m pavjax.main` with the pipeline config: stages run in the same process."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  args = [sys.executable, "-m", "pavjax.main", "--config=configs/pipeline.py:task=toy,size=tiny",
          f"--workdir={tmp_path}", "--config.only=sft", "--config.stages.sft.train.num_steps=2",
          "--config.stages.sft.sample.num_eval=8", "--config.stages.sft.checkpoint.every=2"]
  proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "pipeline.json") as f:
    assert json.load(f)["stages"] == {"sft": "ran"}
  assert (tmp_path / "sft" / "checkpoints").is_dir()


# One bad field per stage, each a field only that stage's job reads, and the
# words its error must carry (the dotted field and what is allowed).
BAD_STAGE_FIELDS = [
    ("sft", "train.nonfinite", "explode", r"stages\.sft\.train\.nonfinite: 'explode'"),
    ("rft", "rft.num_samples", 0, r"stages\.rft\.rft\.num_samples: 0 must be > 0"),
    ("rollouts_train", "prover.kind", "oracle",
     r"stages\.rollouts_train\.prover\.kind: 'oracle' is not one of \('policy', 'checkpoint'"),
    ("rollouts_validation", "rollouts.split", "dev",
     r"stages\.rollouts_validation\.rollouts\.split: 'dev' is not one of"),
    ("verifier_q", "verifier.loss", "hinge", r"stages\.verifier_q\.verifier\.loss: 'hinge' is not "
     r"one of \('bce', 'mse'\)"),
    ("verifier_orm", "verifier.kind", "prm", r"stages\.verifier_orm\.verifier\.kind: 'prm' is not "
     r"one of \('q', 'orm'\)"),
    ("search", "search.beam_methods", "q_beam,foo_beam",
     r"stages\.search\.search\.beam_methods: 'foo_beam' is not one of"),
    ("rl_pav", "rl.reward", "pavv",
     r"stages\.rl_pav\.rl\.reward: 'pavv' is not one of \('outcome', 'pav', 'q_bonus'\)"),
    ("rl_outcome", "rl.alpha", float("nan"), r"stages\.rl_outcome\.rl\.alpha: nan is not a finite"),
]


@pytest.mark.parametrize("stage,field,value,message", BAD_STAGE_FIELDS,
                         ids=[s for s, *_ in BAD_STAGE_FIELDS])
def test_a_bad_field_of_any_stage_fails_before_any_stage_runs(tmp_path, stage, field, value,
                                                             message):
  config = _config()
  section, leaf = field.rsplit(".", 1)
  node = config.stages[stage]
  for part in section.split("."):
    node = node[part]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    run_job(config, str(tmp_path))
  # Nothing ran or was written: no config record, stage directory or tokenizer.
  assert os.listdir(tmp_path) == []


def test_a_bad_stage_field_on_the_command_line_fails_in_seconds(tmp_path):
  """The issue's example: an RL typo is reported before SFT starts, naming the stage."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  args = [sys.executable, "-m", "pavjax.main", "--config=configs/pipeline.py:task=toy,size=tiny",
          f"--workdir={tmp_path}", "--config.stages.rl_pav.rl.reward=pavv"]
  proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert ("pavjax: bad config: config.stages.rl_pav.rl.reward: 'pavv' is not one of "
          "('outcome', 'pav', 'q_bonus')") in proc.stderr
  assert not (tmp_path / "sft").exists()


def test_every_stage_shares_one_task_cache_and_the_tokenizer_is_made_once(tmp_path):
  from pavjax import tasks  # pylint: disable=g-import-not-at-top
  from pavjax.jobs import pipeline  # pylint: disable=g-import-not-at-top
  config = config_lib.sibling_config("configs/x.py", "pipeline").get_config("size=tiny")
  config.task.num_train = 200  # a small corpus: the tokenizer trains in a second
  resolved = pipeline.resolve(config, str(tmp_path))
  cache = str(tmp_path / "task")
  assert {cfg.task.cache_dir for cfg, _ in resolved.values()} == {cache}
  pipeline.check_task_lengths(resolved, num_devices=8)
  made = sorted(p.name for p in (tmp_path / "task" / "tokenizer").iterdir())
  assert len(made) == 1 and made[0].endswith(".model"), made
  stamp = (tmp_path / "task" / "tokenizer" / made[0]).stat().st_mtime_ns
  # A stage builds its task from the shared cache: loaded, not trained again.
  sft_cfg = resolved["sft"][0]
  task = tasks.make_task(sft_cfg.task, str(tmp_path / "sft"))
  assert task.tokenizer_cached and task.tokenizer_path.startswith(cache)
  assert (tmp_path / "task" / "tokenizer" / made[0]).stat().st_mtime_ns == stamp
  assert not (tmp_path / "sft").exists()


def test_one_task_config_for_every_stage_named_as_the_pipeline_s(tmp_path):
  """`--config.task.<field>` sets every stage's task; its errors name the pipeline's field."""
  from pavjax.jobs import pipeline  # pylint: disable=g-import-not-at-top
  config = _config()
  config.task.num_digits = 5
  resolved = pipeline.resolve(config, str(tmp_path))
  assert {cfg.task.num_digits for cfg, _ in resolved.values()} == {5}
  with pytest.raises(AttributeError):  # stages have no task of their own to disagree with
    config.stages.sft.task  # pylint: disable=pointless-statement
  config = config_lib.sibling_config("configs/x.py", "pipeline").get_config("size=tiny")
  config.task.hf_tokenizer = str(tmp_path / "missing")
  with pytest.raises(config_lib.ConfigError, match=r"^config\.task\.hf_tokenizer: "):
    run_job(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_separate_prover_adds_its_rollouts_and_verifier_and_search_and_rl_read_it(tmp_path):
  from pavjax.jobs import pipeline  # pylint: disable=g-import-not-at-top
  config = _config()
  plain = pipeline.resolve(config, str(tmp_path))
  assert list(plain) == [s.name for s in pipeline.STAGES]  # no prover: 9 stages
  assert plain["search"][0].search.prover == "bok"
  prover = tmp_path / "prover_ckpt"
  prover.mkdir()
  config.models.prover = str(prover)
  resolved = pipeline.resolve(config, str(tmp_path))
  assert list(resolved) == ["sft", "rft", "rollouts_train", "rollouts_validation",
                            "verifier_q", "verifier_orm", "rollouts_prover_train",
                            "rollouts_prover_validation", "verifier_prover", "search",
                            "rl_pav", "rl_outcome"]
  ckpt = lambda stage: os.path.join(str(tmp_path), stage, "checkpoints")  # noqa: E731
  for split in ("train", "validation"):
    cfg = resolved[f"rollouts_prover_{split}"][0]
    assert (cfg.prover.kind, cfg.prover.checkpoint) == ("checkpoint", str(prover))
    assert cfg.policy.checkpoint == ckpt("rft") and cfg.rollouts.split == split
  vp = resolved["verifier_prover"][0]
  assert vp.verifier.train_data == os.path.join(str(tmp_path), "rollouts_prover_train",
                                                "rollouts", "train")
  search = resolved["search"][0]
  assert search.search.prover == "verifier" and search.verifiers.prover == ckpt("verifier_prover")
  rl = resolved["rl_pav"][0].rl.prover
  assert (rl.kind, rl.verifier) == ("verifier", ckpt("verifier_prover"))
  # Stages upstream of the prover keep their identity; search and PAV-RL change.
  for name in ("sft", "rft", "rollouts_train", "verifier_q", "rl_outcome"):
    assert resolved[name][1] == plain[name][1], name
  assert resolved["search"][1] != plain["search"][1]
  with pytest.raises(config_lib.ConfigError, match=r"config\.models\.prover: .* not a directory"):
    config.models.prover = str(tmp_path / "missing")
    pipeline.validate(config, 8)


def test_the_verifiers_start_from_another_checkpoint_in_its_own_size(tmp_path, toy_policy):
  """models.verifier: the verifier stages take that checkpoint's architecture (here the
  toy policy's `size=test`, recorded in its workdir) and weights; the rest keep theirs."""
  from pavjax.jobs import pipeline  # pylint: disable=g-import-not-at-top
  config = _config()
  for cfg in config.stages.values():
    cfg.model = config_lib.model_config("tiny")
  config.models.verifier = toy_policy
  resolved = pipeline.resolve(config, str(tmp_path))
  for name in ("verifier_q", "verifier_orm"):
    cfg = resolved[name][0]
    assert cfg.init_from == toy_policy and cfg.model.size == "test", name
  assert resolved["rft"][0].model.size == "tiny"
  assert resolved["rl_pav"][0].init_from == os.path.join(str(tmp_path), "rft", "checkpoints")


def _cheap_config():
  """`_config()` that runs only SFT and RFT, briefly."""
  config = _config()
  config.only = "sft,rft"
  config.stages.sft.train.num_steps = 4
  return config


def test_a_copied_workdir_skips_its_finished_stages(tmp_path):
  """Stage hashes see paths inside the workdir relative to it: a copy elsewhere is
  the same pipeline, and every finished stage is skipped there."""
  import shutil  # pylint: disable=g-import-not-at-top
  from pavjax.jobs import pipeline  # pylint: disable=g-import-not-at-top
  first = run_job(_cheap_config(), str(tmp_path / "a"))
  assert first["stages"] == {"sft": "ran", "rft": "ran"}
  moved = tmp_path / "elsewhere" / "b"
  shutil.copytree(tmp_path / "a", moved)
  again = run_job(_cheap_config(), str(moved))
  assert again["stages"] == {"sft": "skipped (complete)", "rft": "skipped (complete)"}
  assert not [n for n in os.listdir(moved) if ".stale-" in n]
  # The jobs still get absolute paths of the workdir they run in.
  resolved = pipeline.resolve(_cheap_config(), str(moved))
  assert resolved["rft"][0].init_from == os.path.join(str(moved), "sft", "checkpoints")


def test_a_marker_with_the_absolute_path_hash_of_before_is_still_complete(tmp_path):
  """Workdirs whose stage.json holds a hash of absolute paths are not rerun."""
  from pavjax.jobs import pipeline  # pylint: disable=g-import-not-at-top
  config = _cheap_config()
  workdir = str(tmp_path)
  legacy = pipeline.resolve(config, workdir, relative=False)
  resolved = pipeline.resolve(config, workdir)
  assert legacy["rft"][1] != resolved["rft"][1]  # it links SFT's checkpoints
  from pavjax import artifacts  # pylint: disable=g-import-not-at-top
  artifacts.write_marker(os.path.join(workdir, "rft"), {
      "hash": legacy["rft"][1], "complete": True, "seconds": 1.0, "summary": {"step": 4}})
  summary, _, action = pipeline.run_stage("rft", resolved["rft"][0], resolved["rft"][1],
                                          workdir, legacy_hash=legacy["rft"][1])
  assert (summary, action) == ({"step": 4}, "skipped (complete)")
  assert _states(workdir)["rft"]["hash"] == resolved["rft"][1]


def test_a_finished_stage_is_untouched_by_a_bad_override_of_it(tmp_path):
  from pavjax.jobs import pipeline  # pylint: disable=g-import-not-at-top
  config = _cheap_config()
  config.only = "sft"
  workdir = str(tmp_path)
  assert run_job(config, workdir)["stages"] == {"sft": "ran"}
  before = sorted(os.listdir(workdir)), sorted(os.listdir(tmp_path / "sft")), _states(workdir)
  bad = _cheap_config()
  bad.only = "sft"
  bad.stages.sft.train.nonfinite = "explode"
  with pytest.raises(config_lib.ConfigError, match=r"stages\.sft\.train\.nonfinite"):
    run_job(bad, workdir)
  # run_stage itself validates before it moves a finished stage aside.
  cfg, chash = pipeline.resolve(bad, workdir)["sft"]
  with pytest.raises(config_lib.ConfigError, match=r"stages\.sft\.train\.nonfinite"):
    pipeline.run_stage("sft", cfg, chash, workdir)
  after = sorted(os.listdir(workdir)), sorted(os.listdir(tmp_path / "sft")), _states(workdir)
  assert after == before


class _Killed(Exception):
  """Stands in for a SIGKILL inside a stage (in-process: the stage's files stay as they are)."""


def _without_timings(report: str, workdir: str) -> str:
  """report.md with its wall-clock values blanked and the workdir written as <workdir>."""
  out = []
  in_stages = False
  for line in report.replace(workdir, "<workdir>").splitlines():
    if line.startswith("Written "):  # when and where the report was written
      line = line.split(":", 2)[-1]
    if line.startswith("## "):
      in_stages = line.strip() == "## Stages"
    if in_stages and line.startswith("| ") and not line.startswith("| stage"):
      line = "|".join(line.split("|")[:-2] + ["<seconds>", ""])
    out.append(line)
  return "\n".join(out)


def test_a_pipeline_killed_in_rl_reruns_to_the_uninterrupted_report(tmp_path, monkeypatch):
  """The uninterrupted pipeline, and a copy of it that lost its RL stages and then was
  killed in PAV-RL after its step-2 checkpoint: the rerun resumes RL there and writes
  the same report.md, wall-clock values aside; the stage's seconds add both attempts."""
  import shutil  # pylint: disable=g-import-not-at-top
  from pavjax.jobs import rl as rl_job  # pylint: disable=g-import-not-at-top

  def config():
    c = _config()
    for name in ("rl_pav", "rl_outcome"):
      c.stages[name].checkpoint.every = 2
    return c

  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  run_job(config(), straight)
  shutil.copytree(straight, killed)
  for name in ("rl_pav", "rl_outcome"):
    shutil.rmtree(os.path.join(killed, name))
  os.remove(os.path.join(killed, "report.md"))

  real_update = rl_job.HackingMonitor.update

  def dying_update(self, step, accuracy, dense):
    if step == 3:  # the batch of step 3: step 2 is checkpointed
      raise _Killed()
    return real_update(self, step, accuracy, dense)

  monkeypatch.setattr(rl_job.HackingMonitor, "update", dying_update)
  with pytest.raises(_Killed):
    run_job(config(), killed)
  monkeypatch.setattr(rl_job.HackingMonitor, "update", real_update)
  marker = _states(killed)["rl_pav"]
  assert not marker["complete"] and "started" in marker
  assert sorted(os.listdir(os.path.join(killed, "rl_pav", "checkpoints"))) == ["2"]
  out = run_job(config(), killed)
  assert out["stages"]["rl_pav"] == "resumed" and out["stages"]["rl_outcome"] == "ran"
  assert out["stages"]["sft"] == "skipped (complete)"
  assert (_without_timings((tmp_path / "killed" / "report.md").read_text(), killed)
          == _without_timings((tmp_path / "straight" / "report.md").read_text(), straight))
  # The killed attempt ran at least until its step-2 checkpoint was written.
  first_attempt = (os.path.getmtime(os.path.join(killed, "rl_pav", "checkpoints", "2"))
                   - marker["started"])
  assert out["seconds"]["rl_pav"] >= first_attempt > 0


def test_without_rft_every_stage_that_read_rft_reads_sft_and_a_seed_shifts_every_stage(
    tmp_path):
  from pavjax.jobs import pipeline  # pylint: disable=g-import-not-at-top
  config = _config()
  plain = pipeline.resolve(config, str(tmp_path))
  config.use_rft = False
  resolved = pipeline.resolve(config, str(tmp_path))
  assert list(resolved) == [s.name for s in pipeline.STAGES if s.name != "rft"]
  sft = os.path.join(str(tmp_path), "sft", "checkpoints")
  for name, field in (("rollouts_train", "policy.checkpoint"), ("verifier_q", "init_from"),
                      ("verifier_orm", "init_from"), ("search", "policy.checkpoint"),
                      ("rl_pav", "init_from"), ("rl_outcome", "init_from")):
    cfg = resolved[name][0]
    for key in field.split("."):
      cfg = cfg[key]
    assert cfg == sft, name
  assert resolved["sft"][1] == plain["sft"][1]  # SFT itself is unchanged
  # config.seed adds to each stage's own seed, so every stage's identity changes.
  config.seed = 3
  seeded = pipeline.resolve(config, str(tmp_path))
  for name, (cfg, chash) in seeded.items():
    assert cfg.seed == resolved[name][0].seed + 3 and chash != resolved[name][1], name


def test_the_planted_tiny_pipeline_is_readme_command_1_s_setting():
  """The README's command 1: planted, no RFT, a weak mu_10 SFT policy, every beam width
  with an ORM budget of at least its FLOPs, and sampled RL evaluations."""
  config = config_lib.sibling_config("configs/x.py", "pipeline").get_config(
      "task=planted,size=tiny")
  assert config.task.name == "planted" and config.task.sft_gamma == 10.0
  assert not config.use_rft and config.seed == 0
  s = config.stages
  assert max(int(n) for n in s.search.search.ns.split(",")) == 128
  assert s.rl_pav.sample.method == "temperature" and s.rl_pav.rl.prover.kind == "bok"
  # arith keeps its RFT stage.
  arith = config_lib.sibling_config("configs/x.py", "pipeline").get_config("size=tiny")
  assert arith.use_rft and arith.task.name == "arith"


def test_speed_only_fields_stay_out_of_stage_hashes(tmp_path):
  """model.attn_block changes how fast decode runs, not what it computes: a workdir
  recorded before the field existed (or with another value) keeps its stages; a field
  that changes results (the model's width) does change the hash."""
  from pavjax.jobs import pipeline  # pylint: disable=g-import-not-at-top
  config = _cheap_config()
  workdir = str(tmp_path)
  hashes = lambda: {k: h for k, (_, h) in pipeline.resolve(config, workdir).items()}
  base = hashes()
  config.stages.sft.model.attn_block = 0
  assert hashes() == base
  assert pipeline.resolve(config, workdir)["sft"][0].model.attn_block == 0  # still handed on
  with config.stages.sft.model.unlocked():
    del config.stages.sft.model["attn_block"]  # as recorded before the field was added
  assert hashes() == base
  config.stages.sft.model.mlp_dim += 8
  assert hashes()["sft"] != base["sft"] and hashes()["rft"] != base["rft"]


def test_speed_only_fields_leave_the_cached_data_hashes_unchanged():
  """Rollout data, the RFT pool and search rows are reused by content hash: a field that
  changes only speed (set, changed, or absent as in a workdir from before it existed)
  keeps them; a field that changes results does not."""
  from pavjax.jobs import rft, rollouts, search  # pylint: disable=g-import-not-at-top
  for job, digest in (("rollouts", rollouts.data_hash), ("rft", rft.pool_hash),
                      ("search", search.result_hashes)):
    config = config_lib.load_config_file(f"configs/{job}.py:task=toy,size=test")
    base = digest(config)
    config.model.attn_block = 0
    config.sample.batching, config.sample.continuous_blocks = "continuous", 2
    if "search" in config:
      config.search.batching = "continuous"
    assert digest(config) == base, job
    with config.unlocked():
      for dotted in config_lib.SPEED_ONLY_FIELDS:
        section, field = dotted.split(".")
        if field in config.get(section, {}):  # (search.batching: the search job's only)
          del config[section][field]
    assert digest(config) == base, job
    config.model.mlp_dim += 8
    assert digest(config) != base, job
