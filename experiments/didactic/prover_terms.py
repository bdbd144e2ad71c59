"""Theorem 3.1 terms for choosing a prover (arXiv 2410.08146, Sec. 3.2), from the command line.

  python experiments/didactic/prover_terms.py --planted [--base_gamma=5] [--lr=1] [--plot=out.png]
  python experiments/didactic/prover_terms.py --rollouts=DIR [--prover=NAME=DIR ...] [--plot=PNG]

--planted: the exact sweep on the planted task (`prover_diagnostics.planted_sweep`),
procedural provers mu_gamma and Best-of-K provers of pi = mu_{base_gamma}, with the
exact one-step NPG improvement. --rollouts: the terms of BoK(pi) provers from a
rollout trajectory table's Monte-Carlo Q_hat (`rollout_sweep`), and with --prover the
terms of other-policy provers from tables of the same seeds (`prover_sweep`). What
the planted sweep shows is in README.md beside this file ("Theorem 3.1 terms").
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from pavjax import prover_diagnostics
from pavjax import trajectories

PLANTED_COLUMNS = ("kind", "param", "v_mu_root", "distinguishability", "alignment", "bound",
                   "predicted", "first_order", "improvement", "gain_vs_outcome", "flat")
ROLLOUT_COLUMNS = ("kind", "param", "distinguishability", "alignment", "bound", "flat",
                   "num_parents", "num_children")


def curve_shape(xs: Sequence[float], ys: Sequence[float], rel_tol: float = 0.01) -> str:
  """Plain-words shape of a curve: 'inverted U (peak at x=..)', 'increasing', ...

  An inverted U needs an interior peak that beats both ends by more than
  `rel_tol` of the curve's range; no smoothing or tuning, so a noisy or flat
  curve is called what it is.
  """
  ys = np.asarray(ys, np.float64)
  if len(ys) < 3:
    return "too few points"
  span = float(ys.max() - ys.min())
  if span == 0.0:
    return "flat"
  top = int(np.argmax(ys))
  tol = rel_tol * span
  if 0 < top < len(ys) - 1 and ys[top] - ys[0] > tol and ys[top] - ys[-1] > tol:
    return f"inverted U (peak at {xs[top]:g})"
  diffs = np.diff(ys)
  if np.all(diffs >= -tol):
    return f"increasing (max at {xs[top]:g})"
  if np.all(diffs <= tol):
    return f"decreasing (max at {xs[top]:g})"
  return f"no clear shape (max at {xs[top]:g})"


def describe_planted(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Plain-words reading of a `planted_sweep`: shapes over gamma and K, helpful provers."""
  lines = []
  for kind, name in (("gamma", "gamma"), ("bok", "K")):
    sel = [r for r in rows if r["kind"] == kind]
    if not sel:
      continue
    xs = [r["param"] for r in sel]
    for key in ("distinguishability", "alignment", "bound", "improvement"):
      lines.append(f"{key} over {name}: {curve_shape(xs, [r[key] for r in sel])}")
    helps = [r["param"] for r in sel if r["gain_vs_outcome"] > 0 and not r["flat"]]
    lines.append(f"{name} that beat outcome-only (gain > 0, not flat): "
                 f"{', '.join(f'{x:g}' for x in helps) or 'none'}")
  return lines


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """Fixed-width text table; floats in 4 significant digits (scientific when tiny)."""

  def cell(v):
    if isinstance(v, (bool, np.bool_)):
      return "yes" if v else ""
    if isinstance(v, (float, np.floating)):
      if math.isnan(v):
        return "nan"
      return f"{v:.4g}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3e}"
    return str(v)

  cells = [[cell(r[c]) for c in columns] for r in rows]
  widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]
  lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
  lines.append("  ".join("-" * w for w in widths))
  lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
  return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
  """Terms (and the exact improvement, when present) against gamma and K; one panel per kind.

  Rows of other kinds (outcome, checkpoint) have no x axis and are not drawn.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  kinds = [k for k in ("gamma", "bok") if any(r["kind"] == k for r in rows)]
  fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
  for ax, kind in zip(axes[0], kinds):
    sel = [r for r in rows if r["kind"] == kind]
    xs = [r["param"] for r in sel]
    for key in ("distinguishability", "alignment", "bound", "improvement"):
      if key in sel[0]:
        ax.plot(xs, [r[key] for r in sel], marker="o", label=key)
    if kind == "bok":
      ax.set_xscale("log", base=2)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("gamma" if kind == "gamma" else "K (BoK prover)")
    ax.legend(fontsize=8)
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--planted", action="store_true", help="exact sweep on the planted task")
  parser.add_argument("--base_gamma", type=float, default=5.0, help="pi = mu_{base_gamma}")
  parser.add_argument("--lr", type=float, default=1.0, help="NPG step size of `improvement`")
  parser.add_argument("--alpha", type=float, default=1.0, help="weight of A^mu in the reward")
  parser.add_argument("--gammas",
                      default=",".join(str(g) for g in prover_diagnostics.DEFAULT_GAMMAS),
                      help="comma-separated procedural provers mu_gamma to score")
  parser.add_argument("--bok_ks",
                      default=",".join(str(k) for k in prover_diagnostics.DEFAULT_BOK_KS),
                      help="comma-separated K of the Best-of-K provers to score")
  parser.add_argument("--rollouts", default="", help="rollout trajectory table directory")
  parser.add_argument("--prover", action="append", default=[], metavar="NAME=DIR",
                      help="(repeatable) rollouts of the --rollouts seeds with another prover "
                           "(prover.kind=checkpoint), scored as kind 'checkpoint'")
  parser.add_argument("--plot", default="", help="write a PNG of the terms here")
  args = parser.parse_args(argv)
  gammas = [float(g) for g in args.gammas.split(",") if g]
  bok_ks = [int(k) for k in args.bok_ks.split(",") if k]
  if not args.planted and not args.rollouts:
    parser.error("give --planted and/or --rollouts=DIR")
  provers = {}
  for spec in args.prover:
    name, eq, directory = spec.partition("=")
    if not (name and eq and directory):
      parser.error(f"--prover={spec}: expected NAME=DIR")
    if name in provers:
      parser.error(f"--prover: name {name!r} given twice")
    provers[name] = directory
  if provers and not args.rollouts:
    parser.error("--prover needs --rollouts=DIR (the base policy's rollouts of the same seeds)")
  plot_rows = []
  if args.planted:
    rows = prover_diagnostics.planted_sweep(base_gamma=args.base_gamma, gammas=gammas,
                                            bok_ks=bok_ks, lr=args.lr, alpha=args.alpha)
    r0 = rows[0]
    print(f"planted: pi = mu_{args.base_gamma:g}, V^pi(root) = {r0['v_pi_root']:.4f}, "
          f"expected live steps = {r0['mass']:.3f}, E[(A^pi)^2] = {r0['adv_pi_sq']:.4g}, "
          f"lr = {args.lr:g}, alpha = {args.alpha:g} (terms are per-episode sums)")
    print(format_table(rows, PLANTED_COLUMNS))
    for line in describe_planted(rows):
      print(line)
    plot_rows += rows
  if args.rollouts:
    base = trajectories.load(args.rollouts)
    rows = prover_diagnostics.rollout_sweep(base, bok_ks=bok_ks)
    if provers:
      rows += prover_diagnostics.prover_sweep(
          base, {n: trajectories.load(d) for n, d in provers.items()})
    print(f"rollouts: {args.rollouts} (terms are means over parents)")
    print(format_table(rows, ROLLOUT_COLUMNS))
    if not args.planted:
      plot_rows += rows
  if args.plot:
    plot(plot_rows, args.plot)
    print(f"wrote {args.plot}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
