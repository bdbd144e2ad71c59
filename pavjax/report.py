"""report.md of a pipeline run: every number is read from the stages' own outputs.

Sections: accuracies (SFT, RFT, best-of-N rules, beams, ORM-RL, PAV-RL), compute
efficiency of search vs ORM best-of-N, sample efficiency of PAV-RL vs outcome RL,
Pass@N of the RL policies vs their RFT start, verifier quality, prover
diagnostics (Theorem 3.1 terms of BoK provers from the rollouts), sampled
solutions with per-step Q^pi, and stage timings.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from pavjax import artifacts
from pavjax import metrics
from pavjax import models as models_lib
from pavjax import prover_diagnostics
from pavjax import trajectories
from pavjax import tasks


def _fmt(x: Any, digits: int = 3) -> str:
  if x is None:
    return "n/a"
  if isinstance(x, float):
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"
  return str(x)


def _last(curve: list[dict] | None) -> dict | None:
  return max(curve, key=lambda r: r["n"]) if curve else None


def rl_sample_efficiency(pav: list[dict], outcome: list[dict], key: str = "eval/accuracy"
                         ) -> dict[str, Any]:
  """Iterations PAV-RL needs to reach outcome-RL's final accuracy, and the ratio.

  From the runs' eval rows (step, accuracy). `ratio` = outcome-RL's iterations /
  PAV-RL's (the paper's "5-6x"); None when PAV-RL never reaches it.
  """
  out_rows = [r for r in outcome if key in r]
  pav_rows = sorted((r for r in pav if key in r), key=lambda r: r["step"])
  if not out_rows or not pav_rows:
    return {"target": None, "pav_steps": None, "outcome_steps": None, "ratio": None}
  final = max(out_rows, key=lambda r: r["step"])
  start = min(out_rows, key=lambda r: r["step"])
  if final[key] <= start[key]:  # outcome-RL made no progress: nothing to reach
    return {"target": final[key], "pav_steps": None, "outcome_steps": final["step"],
            "ratio": None, "note": "outcome-RL ended at or below its starting accuracy"}
  hit = next((r["step"] for r in pav_rows if r[key] >= final[key] and r["step"] > 0), None)
  return {"target": final[key], "pav_steps": hit, "outcome_steps": final["step"],
          "ratio": None if not hit else final["step"] / hit}


def uninformative_verifiers(evals: Mapping[str, Mapping[str, float]]) -> list[str]:
  """Report lines for each verifier whose held-out MSE does not beat a constant's.

  `evals` maps a label to a verifier's held-out metrics, which include
  `constant/mse` (the mean training label, scored on the same prefixes).
  """
  lines = []
  for label, ev in evals.items():
    if "constant/mse" in ev and ev["mse"] >= ev["constant/mse"]:
      lines.append(f"**The {label} does not beat a constant:** held-out MSE {ev['mse']:.3f}, "
                   f"against {ev['constant/mse']:.3f} for predicting its mean training label "
                   "everywhere. Read the search and RL results that use it with that in mind.")
  return lines


def efficiency_section(search: Mapping[str, Any]) -> list[str]:
  """The "Compute efficiency" section from the search stage's results (none without any).

  Speed-ups against ORM best-of-max(N), or, when the search gave none because the ORM
  curve stays at accuracy 0 (`efficiency_note`), one line saying so instead.
  """
  eff = search.get("efficiency_vs_orm") or {}
  zero_orm = not eff and search.get("efficiency_note")
  if not eff and not zero_orm:
    return []
  lines = ["", "## Compute efficiency vs ORM best-of-N (search stage)", ""]
  if zero_orm:
    lines += ["**The ORM best-of-N curve stays at accuracy 0 at every N, so no speed-up is "
              "given:** every method reaches accuracy 0 at its cheapest point, and a ratio "
              "would only compare the cheapest compute of two curves.", ""]
  else:
    lines += ["FLOPs = 2 x params x (policy + verifier tokens) per problem. `speed-up` is "
              "ORM best-of-max(N)'s FLOPs divided by the FLOPs a method needs to reach the same "
              "accuracy (interpolated on its curve; n/a = never reached).", ""]
    if not next(iter(eff.values())).get("reference_rises", True):
      lines += ["**The ORM best-of-N curve does not rise to its largest N**, so these ratios "
                "do not measure efficiency.", ""]
    lines += ["| method | target accuracy | speed-up |", "|---|---|---|"]
    lines += [f"| {m} | {_fmt(e['target_accuracy'])} | {_fmt(e['speedup'], 2)} |"
              for m, e in eff.items()]
    lines += [""]
  return lines + ["![accuracy vs N](search/accuracy_vs_n.png)",
                  "![accuracy vs FLOPs](search/accuracy_vs_flops.png)"]


def constant_label_verifiers(summaries: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
  """Report lines for each verifier trained on labels that were all 0 or all 1.

  `summaries` maps a label to a train_verifier summary; its `constant_labels` is the
  one value every training label had, or None (absent in summaries written before
  the field existed: not judged).
  """
  lines = []
  for label, summary in summaries.items():
    value = (summary or {}).get("constant_labels")
    if value is None:
      continue
    why = ("the policy never succeeded in its rollouts" if value == 0.0
           else "the policy always succeeded in its rollouts")
    lines.append(f"**The {label} was trained on labels that are all {value:g}:** it can only "
                 f"learn a constant ({why}), so its scores rank nothing.")
  return lines


def _samples(workdir: str, stage_cfg, num: int = 3) -> list[str]:
  """Highest-ORM pool responses of a few problems, with Q^pi after each step."""
  pool_dir = os.path.join(workdir, "search", artifacts.SEARCH_POOL)
  if trajectories.read_manifest(pool_dir) is None:
    return []
  task = tasks.make_task(stage_cfg.task, os.path.join(workdir, "search"))
  pool = trajectories.load(pool_dir)
  last = trajectories.num_steps(pool)
  orm = pool["orm"][np.arange(len(pool)), last]
  lines = []
  for problem in np.unique(pool.problem)[:num]:
    rows = np.flatnonzero(pool.problem == problem)
    r = int(rows[np.argmax(orm[rows])])
    plen = int(pool.prompt_len[r])
    seq = pool.tokens[r]
    lines.append(f"**Problem {problem}** `{task.decode(seq[:plen])!r}` - ORM {orm[r]:.3f}, "
                 f"correct: {bool(pool.outcome[r] > 0)}")
    lines.append("")
    lines.append("| step | text | Q^pi after it |")
    lines.append("|---|---|---|")
    lines.append(f"| 0 | (question) | {pool['q_pi'][r, 0]:.3f} |")
    prev = plen
    for h in range(1, int(last[r]) + 1):
      end = int(pool.prefix_ends[r, h]) + 1
      text = task.decode(seq[prev:end]).replace("\n", "⏎").replace("|", "\\|")
      lines.append(f"| {h} | `{text}` | {pool['q_pi'][r, h]:.3f} |")
      prev = end
    lines.append("")
  return lines


def _model_name(section) -> str:
  if section is None:
    return "?"
  if section.get("source", "") == "hf":
    return f"`{section.path}` (Hugging Face)"
  return f"pavjax {models_lib.arch_of(section)} `size={section.get('size', '?')}`"


def _params(n) -> str:
  return f"{n / 1e6:.2f}M" if isinstance(n, (int, float)) else "?"


def models_section(cfgs: Mapping[str, Any], summaries: Mapping[str, Any],
                   models: Any = None) -> list[str]:
  """The three models of the run (policy, prover, verifiers): what each is, where it
  started, its parameter count; read from the stages' configs and summaries."""
  rows = []
  if "sft" in cfgs:
    sft = cfgs["sft"]
    rows.append(("policy", _model_name(sft.model), sft.init_from or "random init",
                 _params(summaries.get("sft", {}).get("params"))))
  prover = (summaries.get("rollouts_prover_train") or {}).get("models", {}).get("prover")
  if prover:
    rows.append(("prover", f"`{prover['checkpoint']}`", "as given (frozen)",
                 _params(prover["params"])))
  elif models is not None and models.get("prover"):
    rows.append(("prover", f"`{models.prover}`", "as given (frozen)", "?"))
  else:
    k = cfgs["search"].search.bok_k if "search" in cfgs else "K"
    rows.append(("prover", f"the policy: Q^pi rollouts; PAV's prover is Best-of-{k}(pi), "
                 "closed form", "-", "-"))
  for name, label in (("verifier_q", "verifier (PRM-Q)"), ("verifier_orm", "verifier (ORM)"),
                      ("verifier_prover", "verifier (prover's Q^mu)")):
    if name in cfgs:
      rows.append((label, _model_name(cfgs[name].model) + " + value head",
                   cfgs[name].init_from or "random init",
                   _params(summaries.get(name, {}).get("params"))))
  if not rows:
    return []
  lines = ["## Models", "", "| role | model | starts from | parameters |", "|---|---|---|---|"]
  return lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows] + [""]


def rft_fallback_lines(summaries: Mapping[str, Any]) -> list[str]:
  """A note under the accuracy table when RFT kept its initial policy (`rft.on_no_correct`)."""
  note = (summaries.get("rft") or {}).get("fallback")
  if not note:
    return []
  return ["", f"**RFT trained nothing:** {note} (rft.on_no_correct='fallback'). Every stage "
          "after it starts from the SFT policy; read the RFT and RL rows with that in mind."]


def _stage_status(name: str, summary: Any, actions: Mapping[str, str]) -> str:
  status = actions.get(name, "")
  if name == "rft" and (summary or {}).get("fallback"):
    status = f"{status} (fallback: initial policy kept)".strip()
  return status


def write(workdir: str, summaries: Mapping[str, Any], timings: Mapping[str, float],
          actions: Mapping[str, str], models: Any = None) -> str:
  """Writes <workdir>/report.md (and its plots); returns its path.

  `models`: the pipeline's `config.models` (prover and verifier checkpoints).
  """
  cfgs = {}
  for name in summaries:
    path = os.path.join(workdir, name, artifacts.CONFIG)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        cfgs[name] = ml_collections.ConfigDict(json.load(f))
  dev = jax.devices()[0]
  lines = ["# pavjax pipeline report", "",
           f"Written {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: "
           f"{jax.device_count()} x {dev.device_kind} ({dev.platform}), jax {jax.__version__}.",
           "Every number below is read from the stage outputs in this directory.", ""]
  lines += models_section(cfgs, summaries, models)

  # --- accuracies -------------------------------------------------------------------
  search = summaries.get("search", {})
  curves = search.get("curves", {})
  rows = []
  for name, label in (("sft", "SFT"), ("rft", "RFT")):
    if name in summaries:
      cfg = cfgs.get(name)
      what = (f"{cfg.sample.method} decoding, {cfg.sample.num_eval} validation problems"
              if cfg else "validation")
      if summaries[name].get("fallback"):  # RFT had no correct sample to train on
        label += " (fallback: initial policy kept)"
      rows.append((label, summaries[name]["eval"]["accuracy"], what))
  labels = {"bon:orm": "ORM best-of-N", "bon:prm_min": "PRM-Q best-of-N (min over steps)",
            "bon:pav": "PAV-as-ORM best-of-N", "majority": "majority vote",
            "weighted:orm": "ORM-weighted vote", "pass": "Pass@N (oracle)",
            "q_beam": "Q^pi beam search", "pav_beam": "PAV beam search", "dvts": "PAV DVTS"}
  for method, label in labels.items():
    r = _last(curves.get(method))
    if r:
      rows.append((f"{label}, N={r['n']}", r["accuracy"],
                   f"{search.get('problems')} test problems, T=1 samples"))
  for name, label in (("rl_outcome", "ORM-RL (outcome reward)"), ("rl_pav", "PAV-RL")):
    if name in summaries:
      s = summaries[name]
      if name == "rl_pav" and name in cfgs:
        rl_cfg = cfgs[name].rl
        label += f" (prover {rl_cfg.prover.kind}, alpha {rl_cfg.alpha:g})"
      rows.append((f"{label}, {s['step']} iterations", s["eval"]["accuracy"],
                   "greedy decoding, validation problems"))
  lines += ["## Accuracy", "", "| policy / method | accuracy | evaluated on |", "|---|---|---|"]
  lines += [f"| {a} | {_fmt(b)} | {c} |" for a, b, c in rows]
  lines += rft_fallback_lines(summaries)
  settings = search.get("settings", {})
  if settings:
    lines += ["", "Search settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()
                                                  if v not in ("", None)) + "."]

  # --- compute efficiency -------------------------------------------------------------
  lines += efficiency_section(search)

  # --- RL ------------------------------------------------------------------------------
  if "rl_pav" in summaries and "rl_outcome" in summaries:
    ev = {n: metrics.read_jsonl(os.path.join(workdir, n, artifacts.EVAL_LOG))
          for n in ("rl_pav", "rl_outcome")}
    se = rl_sample_efficiency(ev["rl_pav"], ev["rl_outcome"])
    lines += ["", "## RL: sample efficiency and Pass@N", "",
              f"Outcome-RL's final greedy accuracy {_fmt(se['target'])} at iteration "
              f"{se['outcome_steps']}; PAV-RL first reached it at iteration "
              f"{_fmt(se['pav_steps'])} (evaluations every few iterations): ratio "
              f"**{_fmt(se['ratio'], 2)}**"
              + (f" ({se['note']})." if se.get("note") else "."), ""]
    metrics.plot_series(
        {n: [(r["step"], r["eval/accuracy"]) for r in ev[n] if "eval/accuracy" in r]
         for n in ev}, os.path.join(workdir, "rl_accuracy.png"), xlabel="RL iteration",
        ylabel="greedy accuracy (validation)", title="PAV-RL vs outcome-only RL")
    pass_rows = {"RFT (RL start)": summaries["rl_pav"].get("initial_eval") or {},
                 "ORM-RL": summaries["rl_outcome"]["eval"], "PAV-RL": summaries["rl_pav"]["eval"]}
    ns = sorted({int(k.split("_")[-1]) for d in pass_rows.values() for k in d
                 if k.startswith("pass_at_")})
    if ns:
      lines += ["| policy | " + " | ".join(f"Pass@{n}" for n in ns) + " |",
                "|---|" + "---|" * len(ns)]
      for label, d in pass_rows.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(d.get(f"pass_at_{n}")) for n in ns) + " |")
      metrics.plot_series({k: [(n, d[f"pass_at_{n}"]) for n in ns if f"pass_at_{n}" in d]
                           for k, d in pass_rows.items()}, os.path.join(workdir, "pass_at_n.png"),
                          xlabel="N", ylabel="Pass@N", log_base=2, title="Pass@N")
    lines += ["", "![RL accuracy](rl_accuracy.png) ![Pass@N](pass_at_n.png)",
              "", f"Reward-hacking monitor alerts (PAV-RL): {summaries['rl_pav'].get('hacking_alerts')}"]

  # --- verifiers and provers --------------------------------------------------------------
  vq, vo = summaries.get("verifier_q"), summaries.get("verifier_orm")
  if vq or vo:
    lines += ["", "## Verifiers (held-out rollouts)", "", "| verifier | metric | value |",
              "|---|---|---|"]
    named = [("PRM-Q", vq), ("ORM", vo)]
    if "verifier_prover" in summaries:
      named.append(("prover's Q^mu", summaries["verifier_prover"]))
    evals = {label: (s or {}).get("eval", {}) for label, s in named}
    for label, ev in evals.items():
      lines += [f"| {label} | {k} | {_fmt(val, 4)} |" for k, val in sorted(ev.items())]
    for line in constant_label_verifiers(dict(named)) + uninformative_verifiers(evals):
      lines += ["", line]
    budget = (vq or vo or {}).get("budget", {})
    if budget:
      lines += ["", "Rollout budget: " + ", ".join(f"{k} {v}" for k, v in sorted(budget.items()))]
  train_data = os.path.join(workdir, "rollouts_train", artifacts.rollouts_dir("train"))
  if trajectories.read_manifest(train_data):
    sweep = prover_diagnostics.rollout_sweep(trajectories.load(train_data))
    lines += ["", "## Prover diagnostics (Theorem 3.1 terms of BoK(pi) from the train rollouts)",
              "", "| K | distinguishability | alignment |", "|---|---|---|"]
    lines += [f"| {r['param']} | {r['distinguishability']:.4g} | {r['alignment']:.4g} |"
              for r in sweep]

  # --- samples and timings -----------------------------------------------------------------
  if "search" in cfgs:
    samples = _samples(workdir, cfgs["search"])
    if samples:
      lines += ["", "## Sampled solutions (highest ORM score in the pool) with per-step Q^pi", ""]
      lines += samples
  lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
  lines += [f"| {n} | {_stage_status(n, summaries[n], actions)} | {timings.get(n, 0.0):.0f} |"
            for n in summaries]
  lines.append(f"| total | | {sum(timings.values()):.0f} |")
  path = os.path.join(workdir, "report.md")
  if metrics.is_lead_process():
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
  return path
