"""Search job end to end on the toy task: every method runs, counters add up, resume skips."""

import sys

import numpy as np
import pytest

from pavjax.main import run_job

sys.path.insert(0, ".")
from configs import search as search_config  # noqa: E402


def _config(ckpt):
  config = search_config.get_config("task=toy,size=test")
  config.policy.checkpoint = config.verifiers.q = config.verifiers.orm = ckpt
  s = config.search
  s.num_problems = 6
  s.ns, s.beam_ns, s.num_subsets = "1,2,4", "2,4", 4
  s.beam_methods = "q_beam,pav_beam,dvts"
  s.dvts_width = 2
  s.sweep_n, s.alphas, s.bok_ks = 2, "0,1", "2,8"
  s.max_rows = 64
  config.sample.batch_size = 32
  return config


def test_every_method_and_sweep_is_evaluated_and_resume_skips(tmp_path, toy_policy):
  out = run_job(_config(toy_policy), str(tmp_path))
  curves = out["curves"]
  assert set(curves) == {"pass", "majority", "weighted:orm", "bon:orm", "bon:prm_min",
                         "bon:prm_last", "bon:prm_prod", "bon:pav", "q_beam", "pav_beam", "dvts"}
  assert [r["n"] for r in curves["bon:orm"]] == [1, 2, 4]
  assert [r["n"] for r in curves["dvts"]] == [2, 4]
  assert sorted(r["alpha"] for r in out["sweeps"]["alpha"]) == [0.0, 1.0]
  assert sorted(r["bok_k"] for r in out["sweeps"]["bok_k"]) == [2.0, 8.0]

  # Best-of-N counters from the pool by hand: N x mean response length, prompt once,
  # and the verifier reads prompt + response of each of the N samples.
  with np.load(tmp_path / "pool.npz", allow_pickle=False) as z:
    gen, prompt = z["policy_tokens"], z["prompt_tokens"]
    correct = z["correct"]
  full = {r["n"]: r for r in curves["bon:orm"]}[4]
  assert full["policy_tokens"] == pytest.approx(gen.sum(1).mean())
  assert full["verifier_tokens"] == pytest.approx((gen + prompt[:, None]).sum(1).mean())
  assert full["flops"] == pytest.approx(2 * out["params"] * (
      full["policy_tokens"] + full["prefill_tokens"] + full["verifier_tokens"]))
  assert {r["n"]: r for r in curves["pass"]}[4]["accuracy"] == pytest.approx(correct.any(1).mean())
  for r in curves["bon:orm"] + curves["q_beam"]:
    assert 0.0 <= r["accuracy"] <= 1.0 and r["wall_s"] >= 0.0
  # Beams count their own work: a width-2 beam samples 3 candidates per row per step.
  q2 = {r["n"]: r for r in curves["q_beam"]}[2]
  assert q2["candidates"] >= 2 * 3 and q2["policy_tokens"] >= q2["candidates"]
  for name in ("results.md", "accuracy_vs_n.png", "accuracy_vs_flops.png", "sweep_alpha.png"):
    assert (tmp_path / name).exists(), name
  assert "## Compute efficiency vs ORM" in (tmp_path / "results.md").read_text()

  # A rerun finds every row and the pool: nothing is recomputed, results are equal.
  lines = (tmp_path / "rows.jsonl").read_text().splitlines()
  again = run_job(_config(toy_policy), str(tmp_path))
  assert (tmp_path / "rows.jsonl").read_text().splitlines() == lines
  assert again["curves"] == curves
  # Choosing fewer rows (a selection field) keeps the finished ones; a real change does not.
  fewer = _config(toy_policy)
  fewer.search.beam_ns, fewer.search.sweep_n = "2", 0
  third = run_job(fewer, str(tmp_path))
  assert (tmp_path / "rows.jsonl").read_text().splitlines() == lines
  assert third["curves"]["q_beam"] == [r for r in curves["q_beam"] if r["n"] == 2]
  changed = _config(toy_policy)
  changed.search.beam_ns, changed.search.sweep_n = "2", 0
  changed.search.expansions = 2
  run_job(changed, str(tmp_path))
  assert len((tmp_path / "rows.jsonl").read_text().splitlines()) > len(lines)


def test_bad_lists_and_methods_name_the_field(tmp_path, toy_policy):
  config = _config(toy_policy)
  config.search.beam_methods = "q_beam,best_beam"
  with pytest.raises(Exception, match=r"search.beam_methods"):
    run_job(config, str(tmp_path))
  config = _config(toy_policy)
  config.search.ns = "2,four"
  with pytest.raises(Exception, match=r"search.ns"):
    run_job(config, str(tmp_path))
