"""Search job end to end on the toy task: every method runs, counters add up, resume skips.

Then once more with a prover verifier (the Q^pi checkpoint standing in for Q^mu).
"""

import hashlib
import json
import sys
import types

import jax
import numpy as np
import pytest

from pavjax import artifacts
from pavjax import config_lib
from pavjax import stats
from pavjax import trajectories
from pavjax.jobs import search as search_job
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
  table = trajectories.load(str(tmp_path / "pool"))
  assert len(table) == 6 * 4  # P problems x M = max(ns) samples, problem-major
  np.testing.assert_array_equal(table.problem, np.repeat(np.arange(6), 4))
  pool = search_job.pool_arrays(table, 6)
  gen, prompt = pool["policy_tokens"], pool["prompt_tokens"]
  correct = pool["correct"]
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
  # ... and how many problems ended without a finished response (then answered with none).
  assert all(0.0 <= r["no_finished"] <= 1.0 for m in ("q_beam", "pav_beam", "dvts")
             for r in curves[m])
  assert "no finished response" in (tmp_path / "results.md").read_text()
  for name in ("results.md", "accuracy_vs_n.png", "accuracy_vs_flops.png", "sweep_alpha.png"):
    assert (tmp_path / name).exists(), name
  assert "## Compute efficiency vs ORM" in (tmp_path / "results.md").read_text()
  # The default prover is closed-form Best-of-4: named in the report, no prover tokens.
  assert out["settings"]["prover"] == "bok" and out["settings"]["prover_checkpoint"] == ""
  assert "PAV prover (pav_beam, dvts, bon:pav; alpha=0.5): Best-of-4" in (
      tmp_path / "results.md").read_text()
  assert all(r["prover_tokens"] == 0 for m in ("pav_beam", "dvts", "bon:pav")
             for r in curves[m])

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

  # PAV with a prover verifier: new rows (the row hash changes), the same pool.
  pool_shard = trajectories.shard_path(str(tmp_path / "pool"), 0)
  pool_bytes = open(pool_shard, "rb").read()
  manifest_bytes = (tmp_path / "pool" / trajectories.MANIFEST).read_bytes()
  before = len((tmp_path / "rows.jsonl").read_text().splitlines())
  prover = _config(toy_policy)
  prover.search.beam_ns = "2"
  prover.search.prover, prover.verifiers.prover = "verifier", toy_policy
  res = run_job(prover, str(tmp_path))
  assert open(pool_shard, "rb").read() == pool_bytes  # reused, not resampled
  assert (tmp_path / "pool" / trajectories.MANIFEST).read_bytes() == manifest_bytes
  rows = (tmp_path / "rows.jsonl").read_text().splitlines()[before:]
  # 3 N x 8 best-of-N methods, 3 beams at N=2, the alpha sweep; no K sweep for a verifier.
  assert len(rows) == 3 * 8 + 3 + 2
  assert res["settings"]["prover"] == "verifier"
  assert res["settings"]["prover_checkpoint"] == toy_policy
  assert sorted(r["alpha"] for r in res["sweeps"]["alpha"]) == [0.0, 1.0]
  assert res["sweeps"]["bok_k"] == []
  assert "a separate prover policy's Q^mu verifier" in (tmp_path / "results.md").read_text()
  # The prover scored the pool once; it is the Q^pi checkpoint, so it agrees with Q^pi.
  with np.load(tmp_path / "pool_prover.npz", allow_pickle=False) as z:
    q_mu = z["q_mu"]
  q_pi = search_job.pool_arrays(trajectories.load(str(tmp_path / "pool")), 6)["q_pi"]
  np.testing.assert_array_equal(q_mu, q_pi)
  new = res["curves"]
  # Methods without a prover are unchanged (same pool, same keys); PAV's read twice.
  for method in ("bon:orm", "bon:prm_min", "q_beam"):
    old = [r for r in curves[method] if r["n"] in {x["n"] for x in new[method]}]
    assert [(r["accuracy"], r["verifier_tokens"]) for r in new[method]] == [
        (r["accuracy"], r["verifier_tokens"]) for r in old]
    assert all(r["prover_tokens"] == 0 for r in new[method])
  for method in ("bon:pav", "pav_beam", "dvts"):
    for r in new[method]:
      assert r["prover_tokens"] == r["verifier_tokens"] > 0
      assert r["flops"] == pytest.approx(2 * res["params"] * (
          r["policy_tokens"] + r["prefill_tokens"] + r["verifier_tokens"] + r["prover_tokens"]))
  # Resuming the prover run recomputes nothing.
  rows_all = (tmp_path / "rows.jsonl").read_text().splitlines()
  assert run_job(prover, str(tmp_path))["curves"] == new
  assert (tmp_path / "rows.jsonl").read_text().splitlines() == rows_all


def test_prover_fields_are_validated_and_hashed(tmp_path, toy_policy):
  config = _config(toy_policy)
  config.search.prover = "oracle"
  with pytest.raises(config_lib.ConfigError, match=r"config\.search\.prover: 'oracle'"):
    search_job.validate(config, jax.device_count())
  config = _config(toy_policy)
  config.search.prover = "verifier"  # and verifiers.prover left empty
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.verifiers\.prover: is empty; needs the checkpoints dir"):
    search_job.validate(config, jax.device_count())
  # run_job checks before it writes anything into the workdir.
  with pytest.raises(config_lib.ConfigError, match=r"verifiers\.prover"):
    run_job(config, str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()

  # Row hash: the BoK default ignores the unread verifiers.prover and hashes as a config
  # without either field did (older rows stay valid); a verifier prover and its
  # checkpoint each change it. The pool hash never depends on the prover.
  bok = _config(toy_policy)
  rows, pool = search_job.result_hashes(bok)
  other = _config(toy_policy)
  other.verifiers.prover = "/elsewhere"
  assert search_job.result_hashes(other) == (rows, pool)
  legacy = _config(toy_policy)
  del legacy.search["prover"], legacy.verifiers["prover"]
  assert _legacy_hashes(legacy) == (rows, pool)
  verifier = _config(toy_policy)
  verifier.search.prover, verifier.verifiers.prover = "verifier", "/a"
  moved = _config(toy_policy)
  moved.search.prover, moved.verifiers.prover = "verifier", "/b"
  hashes = {search_job.result_hashes(c)[0] for c in (bok, verifier, moved)}
  assert len(hashes) == 3
  assert search_job.result_hashes(verifier)[1] == search_job.result_hashes(moved)[1] == pool
  assert search_job.prover_hash(verifier) != search_job.prover_hash(moved)


def _legacy_hashes(config):
  """result_hashes as written before the prover fields existed."""

  def config_hash(obj):  # the hash those rows were written with
    want = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert artifacts.content_hash(obj) == want
    return want

  d = config_lib.without_speed_only(config.to_dict())  # fields a config of then lacked
  s = d["search"]
  rows = {**d, "search": {k: v for k, v in s.items() if k not in search_job.SELECTION_FIELDS}}
  pool = {k: d[k] for k in ("policy", "verifiers", "task", "model", "seed", "sample")}
  pool.update(split=s["split"], num_problems=s["num_problems"], max_steps=s["max_steps"],
              pool_size=max(config_lib.parse_list(s["ns"], "search.ns")))
  return config_hash(rows), config_hash(pool)


def test_bad_lists_and_methods_name_the_field(tmp_path, toy_policy):
  config = _config(toy_policy)
  config.search.beam_methods = "q_beam,best_beam"
  with pytest.raises(Exception, match=r"search.beam_methods"):
    run_job(config, str(tmp_path))
  config = _config(toy_policy)
  config.search.ns = "2,four"
  with pytest.raises(Exception, match=r"search.ns"):
    run_job(config, str(tmp_path))
  config = _config(toy_policy)
  config.search.batching = "dynamic"
  with pytest.raises(Exception, match=r"search.batching"):
    run_job(config, str(tmp_path))


def test_report_keeps_each_sweep_n_apart(tmp_path):
  # A workdir rerun with another sweep_n holds both sweeps' rows: the table and the
  # plot label each row with its N instead of heading them all with the first N.
  def row(n, acc, **extra):
    return {"n": n, "accuracy": acc, "flops": 1e6 * n, "policy_tokens": 10.0 * n,
            "verifier_tokens": 5.0 * n, "wall_s": 1.0, **extra}
  results = {
      "problems": 8, "params": 1000, "curves": {"pav_beam": [row(4, 0.3), row(64, 0.8)]},
      "efficiency_vs_orm": {},
      "sweeps": {"alpha": [row(64, 0.9, alpha=0.5), row(4, 0.2, alpha=0.0),
                           row(4, 0.25, alpha=0.5)], "bok_k": []},
      "settings": {"alpha": 0.5, "bok_k": 4, "prover": "bok", "prover_checkpoint": ""}}
  search_job.write_report(results, str(tmp_path))
  text = (tmp_path / "results.md").read_text()
  assert "## PAV beam sweep over alpha (N=4, 64)" in text
  table = text[text.index("| N | alpha | accuracy | FLOPs |"):].splitlines()
  assert table[2:5] == ["| 4 | 0 | 0.200 | 4e+06 |", "| 4 | 0.5 | 0.250 | 4e+06 |",
                        "| 64 | 0.5 | 0.900 | 6.4e+07 |"]
  assert (tmp_path / "sweep_alpha.png").exists()


def _summarize(orm_accuracies):
  cfg = types.SimpleNamespace(alpha=0.5, bok_k=4, expansions=2, dvts_width=2, prover="bok",
                              sweep_n=0)
  done = {}
  for n, orm_acc, pav_acc in zip((1, 2, 4), orm_accuracies, (0.0, 0.25, 0.5)):
    for method, acc in (("bon:orm", orm_acc), ("bon:pav", pav_acc)):
      done[(method, n, "")] = {"method": method, "n": n, "variant": "", "accuracy": acc,
                               "flops": 100.0 * n, "per_problem": [], "config_hash": "h"}
  return search_job.summarize(done, [1, 2, 4], [2, 4], cfg, num_params=10)


def test_no_efficiency_ratio_against_an_orm_curve_at_zero(tmp_path):
  out = _summarize((0.0, 0.0, 0.0))
  assert out["efficiency_vs_orm"] == {}
  assert out["efficiency_note"] == search_job.ORM_AT_ZERO_NOTE
  assert "stays at accuracy 0" in out["efficiency_note"]
  results = {**out, "problems": 4, "params": 10}
  for rows in results["curves"].values():
    for r in rows:
      r.update(policy_tokens=1.0, verifier_tokens=1.0, wall_s=0.0)
  search_job.write_report(results, str(tmp_path))
  text = (tmp_path / "results.md").read_text()
  assert f"No ratios: {search_job.ORM_AT_ZERO_NOTE}." in text
  assert "speed-up |" not in text
  # An ORM curve that rises gives ratios by the usual rule: bon:pav reaches 0.5 at N=4.
  out = _summarize((0.0, 0.25, 0.5))
  assert out["efficiency_note"] is None
  assert out["efficiency_vs_orm"]["bon:pav"]["speedup"] == pytest.approx(1.0)
  assert out["efficiency_vs_orm"]["bon:pav"]["target_accuracy"] == 0.5


def test_results_carry_intervals_and_pair_methods_with_orm(tmp_path):
  """Every accuracy of results.md carries its n and 95% interval; each method is paired
  with ORM best-of-N at the same N on the same problems."""
  cfg = types.SimpleNamespace(alpha=0.5, bok_k=4, expansions=2, dvts_width=2, prover="bok",
                              sweep_n=4)
  orm = [1.0] * 3 + [0.0] * 17  # 3 of 20
  beam = [1.0] * 3 + [1.0] * 9 + [0.0] * 8  # right where ORM is, and on 9 more
  pool = [0.5] * 20  # a best-of-N average over subsets: fractional scores
  def row(method, n, per, variant=""):
    return {"method": method, "n": n, "variant": variant, "accuracy": float(np.mean(per)),
            "flops": 100.0 * n, "policy_tokens": 1.0, "verifier_tokens": 1.0, "wall_s": 0.0,
            "per_problem": per, "config_hash": "h"}
  done = {("bon:orm", 4, ""): row("bon:orm", 4, orm), ("pav_beam", 4, ""): row("pav_beam", 4, beam),
          ("bon:pav", 4, ""): row("bon:pav", 4, pool), ("q_beam", 4, ""): row("q_beam", 4, orm),
          ("pav_beam", 4, "alpha=0"): row("pav_beam", 4, orm, "alpha=0")}
  out = search_job.summarize(done, [4], [4], cfg, num_params=10)
  (b,) = out["curves"]["pav_beam"]
  w = stats.wilson(12, 20)
  assert (b["problems"], b["low"], b["high"]) == (20, w.low, w.high)
  (o,) = out["curves"]["bon:orm"]
  assert (o["low"], o["high"]) == (stats.wilson(3, 20).low, stats.wilson(3, 20).high)
  (p,) = out["curves"]["bon:pav"]
  assert p["low"] < 0.5 < p["high"] and 0 < p["low"]
  assert out["sweeps"]["alpha"][0]["high"] == o["high"]
  vs = {r["method"]: r for r in out["vs_orm"]}
  assert set(vs) == {"pav_beam", "bon:pav", "q_beam"}
  (vq,) = out["vs_q_beam"]  # the PAV beams only, against the Q^pi beam
  assert vq["method"] == "pav_beam" and vq["difference"] == pytest.approx(9 / 20)
  d = stats.paired_difference(beam, orm)  # 9 won, none lost
  assert vs["pav_beam"]["difference"] == pytest.approx(9 / 20)
  assert (vs["pav_beam"]["low"], vs["pav_beam"]["high"]) == (d.low, d.high)
  assert vs["pav_beam"]["verdict"] == "ahead" and d.low > 0
  assert vs["bon:pav"]["verdict"] == stats.verdict(stats.paired_difference(pool, orm))
  search_job.write_report({**out, "problems": 20, "params": 10}, str(tmp_path))
  text = (tmp_path / "results.md").read_text()
  assert f"| pav_beam | 0.600 [{w.low:.3f}, {w.high:.3f}] |" in text
  row_text = f"| pav_beam | 4 | +0.450 [{d.low:+.3f}, {d.high:+.3f}] | 20 | ahead |"
  assert text.count(row_text) == 2  # against ORM and against the Q^pi beam
  assert "## PAV beams against the Q^pi-only beam at the same N (paired)" in text
  assert (tmp_path / "accuracy_vs_n.png").exists()


def test_beams_do_not_depend_on_the_calls_or_the_batching(tmp_path, toy_policy):
  """Problem i's beam draws with its own key: calls of 2 problems (max_rows 12 at N=2,
  C=3), one call of all 6, and continuous batching through 2 problem slots agree."""
  def curves(batching, max_rows):
    config = _config(toy_policy)
    s = config.search
    s.ns, s.num_subsets, s.beam_ns, s.sweep_n = "1", 1, "2", 0
    s.max_rows, s.batching = max_rows, batching
    out = run_job(config, str(tmp_path / f"{batching}_{max_rows}"))["curves"]
    return {m: [{k: v for k, v in r.items() if k != "wall_s"} for r in out[m]]
            for m in ("q_beam", "pav_beam", "dvts")}

  static = curves("static", 12)
  assert static["q_beam"][0]["candidates"] > 0
  assert curves("static", 64) == static
  assert curves("continuous", 12) == static
