"""report.md of a pipeline run: every number is read from the stages' own outputs.

Sections: accuracies (SFT, RFT, best-of-N rules, beams, ORM-RL, PAV-RL), each with
its number of problems n and a 95% interval; paired comparisons of the methods the
paper compares (on the same problems, the difference's interval and a verdict word);
compute efficiency of search vs ORM best-of-N, sample efficiency of PAV-RL vs
outcome RL, Pass@N of the RL policies vs their RFT start, verifier quality, prover
diagnostics (Theorem 3.1 terms of BoK provers from the rollouts), sampled
solutions with per-step Q^pi, and stage timings.

Intervals and verdicts come from `pavjax.stats`. A comparison is paired when both
sides stored their per-problem outcomes for the same problems (search: `rows.jsonl`;
SFT, RFT, RL: `per_problem` in their evaluations; RL over its whole curve:
`eval_outcomes.jsonl`, `rl_run_averages`); a workdir written before those
were stored still gets a report, with intervals from accuracy and n alone and its
comparisons marked unpaired (no verdict).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from pavjax import artifacts
from pavjax import metrics
from pavjax import models as models_lib
from pavjax import prover_diagnostics
from pavjax import stats
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


# --- accuracies with their intervals ---------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Measure:
  """An accuracy as the report shows it: its 95% interval over problems and, when the
  stage stored them, the per-problem scores a paired comparison needs.

  `interval.n` is 0 when the number of problems is unknown (no interval is shown).
  """

  accuracy: float
  interval: stats.Interval
  per_problem: tuple[float, ...] | None = None
  uids: tuple[str, ...] | None = None


def measure(accuracy: float, *, per_problem: Sequence[float] | None = None,
            uids: Sequence[str] | None = None, n: int | None = None) -> Measure:
  """The score interval of the per-problem scores when given (Wilson's for 0/1 outcomes),
  else Wilson's from accuracy and n, else none (n unknown)."""
  if per_problem is not None and len(per_problem):
    per = tuple(float(x) for x in per_problem)
    return Measure(float(np.mean(per)), stats.mean_interval(per), per,
                   tuple(str(u) for u in uids) if uids is not None else None)
  if n:
    return Measure(float(accuracy), stats.proportion(accuracy, int(n)))
  return Measure(float(accuracy), stats.Interval(float(accuracy), math.nan, math.nan, 0))


def eval_measure(ev: Mapping[str, Any] | None, num_eval: int | None = None,
                 key: str = "accuracy") -> Measure | None:
  """The Measure of an evaluation dict (SFT, RFT, RL; `key` its accuracy).

  n is the number of per-problem outcomes when the job stored them
  (`evaluation.per_problem_outcomes`), else the count of graded responses of
  `evaluation.summarize` (its `reason/*` counts: one greedy response per problem),
  else `num_eval` (the stage's `sample.num_eval`).
  """
  if not ev or ev.get(key) is None:
    return None
  per = ev.get("per_problem") if key == "accuracy" else None
  if per:
    return measure(ev[key], per_problem=per, uids=ev.get("problem_uids"))
  reasons = [v for k, v in ev.items() if k.startswith("reason/")]
  n = int(round(sum(reasons))) if reasons else num_eval
  return measure(ev[key], n=n)


def _cell(m: Measure | None, digits: int = 3) -> str:
  """'0.250 [0.102, 0.494]' (the interval left out when n is unknown)."""
  if m is None:
    return "n/a"
  return m.interval.text(digits) if m.interval.n else _fmt(m.accuracy, digits)


def paired(a: Measure | None, b: Measure | None) -> tuple[stats.Interval | None, str]:
  """(interval of a - b, verdict) when both stored per-problem outcomes of the same
  problems; else (None, why the comparison is unpaired)."""
  if a is None or b is None:
    return None, "n/a (not run)"
  if a.per_problem is None or b.per_problem is None:
    return None, "n/a (unpaired: per-problem outcomes not stored)"
  same = (len(a.per_problem) == len(b.per_problem) and
          (a.uids is None or b.uids is None or a.uids == b.uids))
  if not same:
    return None, "n/a (unpaired: not the same problems)"
  diff = stats.paired_difference(a.per_problem, b.per_problem)
  return diff, stats.verdict(diff)


def comparison_table(rows: Sequence[tuple[str, Measure | None, Measure | None]]) -> list[str]:
  """The paired comparisons: each (label, A, B) as A, B, A - B with its interval, verdict."""
  lines = ["| comparison (A vs B) | n | A | B | A - B [95% interval] | verdict |",
           "|---|---|---|---|---|---|"]
  for label, a, b in rows:
    diff, word = paired(a, b)
    if diff is not None:
      delta, n = diff.text(3, signed=True), str(diff.n)
    else:
      delta = ("n/a" if a is None or b is None else f"{a.accuracy - b.accuracy:+.3f} (point only)")
      n = "/".join(str(m.interval.n or "?") for m in (a, b) if m is not None) or "n/a"
    lines.append(f"| {label} | {n} | {_cell(a)} | {_cell(b)} | {delta} | {word} |")
  return lines


INTERVAL_NOTE = (
    "Intervals are 95% score intervals of the mean over the n problems (`pavjax.stats`; "
    "Wilson's for 0/1 outcomes). Where a stage kept only its accuracy and n (Pass@N, "
    "older workdirs), the interval is Wilson's for accuracy x n of n, conservative when "
    "the per-problem scores are fractions (best-of-N below max(N) averages random subsets "
    "of the pool). Comparisons are paired on the same problems: the score interval of the "
    "mean per-problem difference; the verdict is *ahead* or *behind* when the interval "
    "excludes 0, else *no difference detected*.")


def search_per_problem(workdir: str, curves: Mapping[str, list[dict]]
                       ) -> dict[tuple[str, int], list[float]]:
  """Per-problem scores of each (method, N) of the search curves, from its `rows.jsonl`.

  A rows file may also hold rows of an earlier config; a row is used only when its
  scores average to the curve's accuracy (the last such row of a (method, N)).
  """
  rows = metrics.read_jsonl(os.path.join(workdir, "search", artifacts.SEARCH_ROWS))
  out = {}
  for method, curve in curves.items():
    for point in curve:
      for r in rows:
        per = r.get("per_problem")
        if (r.get("method") == method and r.get("n") == point["n"] and not r.get("variant")
            and per and r.get("accuracy") == point["accuracy"]
            and abs(float(np.mean(per)) - point["accuracy"]) < 1e-9):
          out[(method, point["n"])] = [float(x) for x in per]
  return out


def search_measure(curves: Mapping[str, list[dict]], per_problem: Mapping, problems: Any,
                   method: str, n: int | None = None) -> tuple[Measure | None, int | None]:
  """(Measure, N) of a search method at N (its largest N when None)."""
  rows = curves.get(method) or []
  row = _last(rows) if n is None else next((r for r in rows if r["n"] == n), None)
  if row is None:
    return None, None
  per = per_problem.get((method, row["n"]))
  return measure(row["accuracy"], per_problem=per,
                 n=problems if isinstance(problems, int) else None), row["n"]


def _common_n(curves: Mapping[str, list[dict]], a: str, b: str) -> int | None:
  ns = {r["n"] for r in curves.get(a) or []} & {r["n"] for r in curves.get(b) or []}
  return max(ns) if ns else None


def search_comparisons(curves: Mapping[str, list[dict]], per_problem: Mapping, problems: Any
                       ) -> list[tuple[str, Measure | None, Measure | None]]:
  """The search comparisons the paper makes (Sec. 4), at the largest N both methods have
  (each at its own largest N when they share none): PAV beam vs ORM best-of-N,
  PAV-as-ORM vs ORM best-of-N, PAV beam vs Q^pi beam."""
  out = []
  for a, b, label in (("pav_beam", "bon:orm", "PAV beam search vs ORM best-of-N"),
                      ("bon:pav", "bon:orm", "PAV-as-ORM vs ORM best-of-N"),
                      ("pav_beam", "q_beam", "PAV beam search vs Q^pi beam search")):
    if not curves.get(a) or not curves.get(b):
      continue
    n = _common_n(curves, a, b)
    ma, na = search_measure(curves, per_problem, problems, a, n)
    mb, nb = search_measure(curves, per_problem, problems, b, n)
    at = f"N={na}" if na == nb else f"N={na} vs N={nb}"
    out.append((f"{label}, {at}", ma, mb))
  return out


def equal_compute_comparisons(curves: Mapping[str, list[dict]], per_problem: Mapping,
                              problems: Any, beam: str = "pav_beam", label: str = "PAV beam"
                              ) -> list[tuple[str, Measure | None, Measure | None]]:
  """Each beam width N against the cheapest ORM best-of-M that spends at least its FLOPs.

  The paper compares search methods at equal compute (arXiv 2410.08146, Sec. 4); giving
  the ORM at least as many FLOPs per problem as the beam makes "the beam is ahead" the
  conservative reading. Beam widths that cost more than ORM's largest N are left out.
  """
  orm = sorted((r for r in curves.get("bon:orm") or [] if "flops" in r),
               key=lambda r: r["flops"])
  out = []
  for point in curves.get(beam) or []:
    match = next((r for r in orm if r["flops"] >= point.get("flops", math.inf)), None)
    if match is None:
      continue
    mb, _ = search_measure(curves, per_problem, problems, beam, point["n"])
    mo, _ = search_measure(curves, per_problem, problems, "bon:orm", match["n"])
    out.append((f"{label} N={point['n']} ({point['flops']:.2g} FLOPs) vs ORM best-of-"
                f"{match['n']} ({match['flops']:.2g} FLOPs)", mb, mo))
  return out


def _claim_row(claim: str, what: str, interval: stats.Interval | None, unit: str,
               null: float = 0.0, digits: int = 3) -> str:
  """A row of the claims table: shown when the interval excludes `null` in the claimed
  direction, contradicted when it excludes it the other way, else not shown."""
  if interval is None or not interval.n or not math.isfinite(interval.estimate):
    return f"| {claim} | {what} | n/a | n/a | not measured |"
  if interval.low > null:
    word = "**shown**"
  elif interval.high < null:
    word = "contradicted"
  else:
    word = "not shown (no difference detected)"
  return (f"| {claim} | {what} | {interval.text(digits)} | {interval.n} {unit} | {word} |")


def _verifier_interval(ev: Mapping[str, Any], name: str) -> stats.Interval | None:
  if ev.get(f"{name}/n") is None:
    return None
  return stats.Interval(ev[name], ev[f"{name}/low"], ev[f"{name}/high"], int(ev[f"{name}/n"]))


def claims_section(summaries: Mapping[str, Any], compared_rl: tuple[Measure | None,
                                                                    Measure | None] | None,
                   equal_compute: Sequence[tuple[str, Measure | None, Measure | None]],
                   rl_curves: tuple[str, Measure, Measure] | None = None) -> list[str]:
  """"What this run shows": the method's claims, each with its 95% interval and a verdict.

  A claim is *shown* only when its interval excludes the null value, so a verdict here
  holds up to the run's noise; intervals are over problems (or parent prefixes) as the
  rows say.
  """
  rows = []
  for name, label in (("verifier_q", "PRM-Q"), ("verifier_orm", "ORM")):
    ev = (summaries.get(name) or {}).get("eval") or {}
    if not ev:
      continue
    rows.append(_claim_row(
        f"the {label} beats a constant on held-out prefixes (Sec. 4.2)",
        "constant's MSE - verifier's, per problem", _verifier_interval(ev, "constant_gain"),
        "problems", digits=4))  # MSEs of rare successes are small: 3 digits round to 0
    if name == "verifier_q":
      rows.append(_claim_row(
          "the PRM-Q orders sibling steps better than chance (Sec. 4, Fig. 2a)",
          "pair accuracy per parent prefix (chance 0.5)",
          _verifier_interval(ev, "siblings/parent_pair_accuracy"), "parents", null=0.5))
  if equal_compute:
    label, a, b = equal_compute[-1]  # the largest beam with an ORM budget to match
    diff, _ = paired(a, b)
    rows.append(_claim_row("PAV beam search beats ORM best-of-N at no more compute "
                           "(Sec. 4)", f"{label}: accuracy difference", diff, "problems"))
  if compared_rl is not None:
    diff, _ = paired(*compared_rl)
    rows.append(_claim_row("PAV-RL beats outcome-RL after the same iterations (Sec. 5)",
                           "final accuracy difference", diff, "problems"))
  if rl_curves is not None:
    label, a, b = rl_curves
    diff, _ = paired(a, b)
    rows.append(_claim_row("PAV-RL learns sooner than outcome-RL (Sec. 5)",
                           f"{label}: difference", diff, "problems"))
  if not rows:
    return []
  return ["## What this run shows", "",
          "Each claim of the method with its 95% interval: *shown* when the interval "
          "excludes the null value (0, or 0.5 for chance), *contradicted* when it excludes "
          "it the other way. The sections below carry the numbers behind each row.", "",
          "| claim (arXiv 2410.08146) | measured | value [95% interval] | n | verdict |",
          "|---|---|---|---|---|"] + rows + [""]


def _wilson_band(points: Sequence[tuple[float, float]], n: int
                 ) -> list[tuple[float, float, float]]:
  """(x, low, high) of each (x, accuracy) measured on n problems (none when n is unknown)."""
  if not n:
    return []
  out = []
  for x, acc in points:
    iv = stats.proportion(acc, n)
    out.append((x, iv.low, iv.high))
  return out


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


def rl_run_averages(pav: Sequence[Mapping[str, Any]], outcome: Sequence[Mapping[str, Any]]
                    ) -> tuple[Measure, Measure, list[int]] | None:
  """Each RL run's per-problem accuracy averaged over its evaluations after the start.

  From the runs' eval_outcomes.jsonl rows (step, per_problem, problem_uids). Only the
  steps both runs evaluated, after step 0 (the shared start), enter, and only when every
  one of them scored the same problems in the same order. The average over a run is a
  sample-efficiency measure (Sec. 5: accuracy over training iterations): the
  run that learns sooner is ahead over the whole curve, not only at its end. Its
  interval is over problems; the runs' own training seeds vary in the experiments.
  None when the runs share no such step or score different problems.
  """
  by_step = [{int(r["step"]): r for r in rows if r.get("per_problem")} for rows in (pav, outcome)]
  steps = sorted(s for s in set(by_step[0]) & set(by_step[1]) if s > 0)
  if not steps:
    return None
  uids = by_step[0][steps[0]].get("problem_uids")
  for rows in by_step:
    for step in steps:
      if (rows[step].get("problem_uids") != uids
          or len(rows[step]["per_problem"]) != len(by_step[0][steps[0]]["per_problem"])):
        return None
  means = [np.mean([rows[s]["per_problem"] for s in steps], axis=0) for rows in by_step]
  a, b = (measure(float(m.mean()), per_problem=m, uids=uids) for m in means)
  return a, b, steps


def uninformative_verifiers(evals: Mapping[str, Mapping[str, float]]) -> list[str]:
  """Report lines for each verifier whose held-out MSE does not beat a constant's.

  `evals` maps a label to a verifier's held-out metrics, which include
  `constant/mse` (the mean training label, scored on the same prefixes) and, from
  verifier jobs that compute it, `constant_gain` with its interval over problems. A
  verifier is flagged when that interval does not lie above 0 (when there is no
  interval, as in older workdirs, when its point MSE is not below the constant's).
  """
  lines = []
  for label, ev in evals.items():
    if "constant/mse" not in ev:
      continue
    gain = _verifier_interval(ev, "constant_gain")
    if gain is not None:
      if gain.low > 0.0:
        continue
      how = (f"the constant's MSE minus the verifier's is {gain.text(4, signed=True)} per "
             f"problem over {gain.n} problems")
    elif ev["mse"] < ev["constant/mse"]:
      continue
    else:
      how = "point estimates: this workdir kept no interval"
    on = (f" on {int(ev['num_prefixes'])} held-out prefixes" if ev.get("num_prefixes")
          else "")
    lines.append(f"**The {label} does not beat a constant:** held-out MSE {ev['mse']:.3f}, "
                 f"against {ev['constant/mse']:.3f} for predicting its mean training label "
                 f"everywhere{on} ({how}). Read the search and RL results that use it with "
                 "that in mind.")
  return lines


def efficiency_section(search: Mapping[str, Any], target: Measure | None = None) -> list[str]:
  """The "Compute efficiency" section from the search stage's results (none without any).

  Speed-ups against ORM best-of-max(N), or, when the search gave none because the ORM
  curve stays at accuracy 0 (`efficiency_note`), one line saying so instead. `target`
  (ORM best-of-max(N)'s accuracy with its interval) is named under the table: a
  speed-up is a ratio of points on two curves, each as uncertain as its interval.
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
    if target is not None and target.interval.n:
      lines += [f"The target, ORM best-of-max(N)'s accuracy, is {target.interval.text()} "
                f"(n={target.interval.n}): a speed-up is a ratio of points on two curves, not "
                "a tested difference; the paired comparisons above are the tests.", ""]
  return lines


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


def _stage_path(path: str, stages: Any) -> str:
  """A path into one of the pipeline's stages shown as `<stage>/...`; others as given.

  Stage configs record absolute paths of the directory they ran in: a workdir copied
  or moved elsewhere still names its own stages the same way."""
  parts = os.path.normpath(path).split(os.sep) if path else []
  for i in range(len(parts) - 1, -1, -1):
    if parts[i] in stages:
      return "/".join(parts[i:])
  return path


def models_section(cfgs: Mapping[str, Any], summaries: Mapping[str, Any],
                   models: Any = None) -> list[str]:
  """The three models of the run (policy, prover, verifiers): what each is, where it
  started, its parameter count; read from the stages' configs and summaries."""
  rows = []
  start = lambda cfg: _stage_path(cfg.init_from, cfgs) or "random init"
  if "sft" in cfgs:
    sft = cfgs["sft"]
    rows.append(("policy", _model_name(sft.model), start(sft),
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
      rows.append((label, _model_name(cfgs[name].model) + " + value head", start(cfgs[name]),
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
  """A stage's outcome, the same however many attempts (kills, reruns) it took: what
  this invocation did (ran, resumed, skipped) is in pipeline.json and the log."""
  del actions
  status = "complete"
  if name == "rft" and (summary or {}).get("fallback"):
    status = f"{status} (fallback: initial policy kept)"
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
  claims_at = len(lines)  # "What this run shows" goes here, once its numbers are known
  start = "RFT" if "rft" in summaries else "SFT"  # the policy search and RL start from
  rl_cfg = cfgs.get("rl_pav") or cfgs.get("rl_outcome")
  rl_method = (rl_cfg.sample.get("method", "greedy") if rl_cfg is not None and "sample" in rl_cfg
               else "greedy")  # how the RL jobs decode their evaluations
  rl_decoding = f"{rl_method} decoding"

  # --- accuracies -------------------------------------------------------------------
  search = summaries.get("search", {})
  curves = search.get("curves", {})
  problems = search.get("problems")
  search_per = search_per_problem(workdir, curves) if curves else {}
  num_eval = {name: cfg.sample.num_eval for name, cfg in cfgs.items()
              if "sample" in cfg and "num_eval" in cfg.sample}
  evals: dict[str, Measure | None] = {}
  rows = []
  for name, label in (("sft", "SFT"), ("rft", "RFT")):
    if name in summaries:
      cfg = cfgs.get(name)
      what = (f"{cfg.sample.method} decoding, validation problems" if cfg else "validation")
      if summaries[name].get("fallback"):  # RFT had no correct sample to train on
        label += " (fallback: initial policy kept)"
      evals[name] = eval_measure(summaries[name]["eval"], num_eval.get(name))
      rows.append((label, evals[name], what))
  labels = {"bon:orm": "ORM best-of-N", "bon:prm_min": "PRM-Q best-of-N (min over steps)",
            "bon:pav": "PAV-as-ORM best-of-N", "majority": "majority vote",
            "weighted:orm": "ORM-weighted vote", "pass": "Pass@N (oracle)",
            "q_beam": "Q^pi beam search", "pav_beam": "PAV beam search", "dvts": "PAV DVTS"}
  for method, label in labels.items():
    m, n = search_measure(curves, search_per, problems, method)
    if m is not None:
      rows.append((f"{label}, N={n}", m, "test problems, T=1 samples"))
  for name, label in (("rl_outcome", "ORM-RL (outcome reward)"), ("rl_pav", "PAV-RL")):
    if name in summaries:
      s = summaries[name]
      if name == "rl_pav" and name in cfgs:
        rl_cfg = cfgs[name].rl
        label += f" (prover {rl_cfg.prover.kind}, alpha {rl_cfg.alpha:g})"
      evals[name] = eval_measure(s["eval"], num_eval.get(name))
      evals[f"{name}/start"] = eval_measure(s.get("initial_eval"), num_eval.get(name))
      rows.append((f"{label}, {s['step']} iterations", evals[name],
                   f"{rl_decoding}, validation problems"))
  lines += ["## Accuracy", "",
            "| policy / method | accuracy | 95% interval | n | evaluated on |",
            "|---|---|---|---|---|"]
  lines += [f"| {a} | {_fmt(m.accuracy)} | {m.interval.bounds() if m.interval.n else 'n/a'} | "
            f"{m.interval.n or '?'} | {c} |" for a, m, c in rows if m is not None]
  lines += rft_fallback_lines(summaries)
  settings = search.get("settings", {})
  if settings:
    lines += ["", "Search settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()
                                                  if v not in ("", None)) + "."]
  if rows:
    lines += ["", INTERVAL_NOTE]

  # --- paired comparisons ------------------------------------------------------------
  compared = search_comparisons(curves, search_per, problems)
  equal_compute = equal_compute_comparisons(curves, search_per, problems)
  compared += equal_compute
  rl_pair = rl_curves = None
  if "rl_pav" in summaries and "rl_outcome" in summaries:
    rl_pair = (evals["rl_pav"], evals["rl_outcome"])
    compared.append((f"PAV-RL vs ORM-RL ({rl_method})", *rl_pair))
    averaged = rl_run_averages(
        *(metrics.read_jsonl(os.path.join(workdir, n, artifacts.EVAL_OUTCOMES_LOG))
          for n in ("rl_pav", "rl_outcome")))
    if averaged is not None:
      a, b, steps = averaged
      rl_curves = (f"accuracy averaged over {len(steps)} evaluations (iterations "
                   f"{steps[0]}-{steps[-1]})", a, b)
      compared.append((f"PAV-RL vs ORM-RL, {rl_curves[0]}", a, b))
  for name, label in (("rl_pav", "PAV-RL"), ("rl_outcome", "ORM-RL")):
    if name in summaries and evals.get(f"{name}/start") is not None:
      compared.append((f"{label} vs its start ({start}; {rl_method})", evals[name],
                       evals[f"{name}/start"]))
  if "sft" in summaries and "rft" in summaries:
    compared.append(("RFT vs SFT", evals["rft"], evals["sft"]))
  if compared:
    lines += ["", "## Paired comparisons", "",
              "Each comparison is on the same problems: the mean per-problem difference A - B "
              "with its 95% interval. *no difference detected* means the interval covers 0; "
              "*n/a (unpaired)* means a stage of this workdir kept no per-problem outcomes "
              "(a run older than them), so only the two points are shown.", ""]
    lines += comparison_table(compared)
  lines[claims_at:claims_at] = claims_section(summaries, rl_pair, equal_compute, rl_curves)

  # --- compute efficiency -------------------------------------------------------------
  lines += efficiency_section(search, search_measure(curves, search_per, problems, "bon:orm")[0])
  if curves:
    # The methods the accuracy table names; bands on those the comparisons test (a band
    # per curve would cover the plot).
    shown = {m: rows_ for m, rows_ in curves.items() if m in labels}
    banded = ("bon:orm", "bon:pav", "q_beam", "pav_beam", "dvts")
    n_band = problems if isinstance(problems, int) else 0
    for x_key, name, xlabel, log_base in (("n", "search_accuracy_vs_n.png", "N", 2),
                                          ("flops", "search_accuracy_vs_flops.png",
                                           "FLOPs per problem", 10)):
      pts = {labels[m]: [(r[x_key], r["accuracy"]) for r in rows_ if x_key in r]
             for m, rows_ in shown.items() if x_key == "n" or m != "pass"}
      metrics.plot_series(
          pts, os.path.join(workdir, name), xlabel=xlabel, log_base=log_base,
          ylabel=f"accuracy ({n_band or '?'} problems; 95% bands)",
          title=f"search: accuracy vs {'N' if x_key == 'n' else 'compute'}",
          bands={labels[m]: _wilson_band(pts[labels[m]], n_band) for m in banded
                 if labels.get(m) in pts})
    lines += ["", f"Search curves; the compared methods carry their 95% bands over the "
              f"{n_band or '?'} problems:", "", "![accuracy vs N](search_accuracy_vs_n.png)",
              "![accuracy vs FLOPs](search_accuracy_vs_flops.png)"]

  # --- RL ------------------------------------------------------------------------------
  if "rl_pav" in summaries and "rl_outcome" in summaries:
    ev = {n: metrics.read_jsonl(os.path.join(workdir, n, artifacts.EVAL_LOG))
          for n in ("rl_pav", "rl_outcome")}
    n_rl = {n: evals[n].interval.n if evals.get(n) is not None else 0 for n in ev}
    se = rl_sample_efficiency(ev["rl_pav"], ev["rl_outcome"])
    target = (f"{stats.proportion(se['target'], n_rl['rl_outcome']).text()} "
              f"(n={n_rl['rl_outcome']})" if se["target"] is not None and n_rl["rl_outcome"]
              else _fmt(se["target"]))
    lines += ["", "## RL: sample efficiency and Pass@N", "",
              f"Outcome-RL's final accuracy ({rl_decoding}) {target} at iteration "
              f"{se['outcome_steps']}; PAV-RL first reached it at iteration "
              f"{_fmt(se['pav_steps'])} (evaluations every few iterations): ratio "
              f"**{_fmt(se['ratio'], 2)}**"
              + (f" ({se['note']})." if se.get("note") else ".")
              + " The ratio reads points off two curves; whether the final policies differ, "
              "and whether one curve lies above the other on the same problems (accuracy "
              "averaged over the evaluations), are the paired comparisons above.", ""]
    points = {n: [(r["step"], r["eval/accuracy"]) for r in ev[n] if "eval/accuracy" in r]
              for n in ev}
    metrics.plot_series(
        points, os.path.join(workdir, "rl_accuracy.png"), xlabel="RL iteration",
        ylabel=f"accuracy ({rl_decoding}; 95% band)", title="PAV-RL vs outcome-only RL",
        bands={n: _wilson_band(pts, n_rl[n]) for n, pts in points.items()})
    pass_rows = {f"{start} (RL start)": summaries["rl_pav"].get("initial_eval") or {},
                 "ORM-RL": summaries["rl_outcome"]["eval"], "PAV-RL": summaries["rl_pav"]["eval"]}
    pass_n = {f"{start} (RL start)": n_rl["rl_pav"], "ORM-RL": n_rl["rl_outcome"],
              "PAV-RL": n_rl["rl_pav"]}
    ns = sorted({int(k.split("_")[-1]) for d in pass_rows.values() for k in d
                 if k.startswith("pass_at_")})
    if ns:
      lines += ["Pass@N with its 95% interval over the n validation problems (each problem's "
                "Pass@N averages random size-N subsets of its samples):", "",
                "| policy | n | " + " | ".join(f"Pass@{n}" for n in ns) + " |",
                "|---|---|" + "---|" * len(ns)]
      for label, d in pass_rows.items():
        cells = [_cell(measure(d[f"pass_at_{n}"], n=pass_n[label]))
                 if d.get(f"pass_at_{n}") is not None else "n/a" for n in ns]
        lines.append(f"| {label} | {pass_n[label] or '?'} | " + " | ".join(cells) + " |")
      pass_points = {k: [(n, d[f"pass_at_{n}"]) for n in ns if f"pass_at_{n}" in d]
                     for k, d in pass_rows.items()}
      metrics.plot_series(pass_points, os.path.join(workdir, "pass_at_n.png"),
                          xlabel="N", ylabel="Pass@N (95% band)", log_base=2, title="Pass@N",
                          bands={k: _wilson_band(pts, pass_n[k]) for k, pts in pass_points.items()})
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
  lines += ["", "## Stages", "", "Seconds are wall-clock over every attempt at a stage (a killed "
            "attempt counts until the last file it wrote).", "",
            "| stage | status | seconds |", "|---|---|---|"]
  lines += [f"| {n} | {_stage_status(n, summaries[n], actions)} | {timings.get(n, 0.0):.0f} |"
            for n in summaries]
  lines.append(f"| total | | {sum(timings.values()):.0f} |")
  path = os.path.join(workdir, "report.md")
  if metrics.is_lead_process():
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
  return path
