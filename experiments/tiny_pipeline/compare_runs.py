"""Do pipeline runs agree on every call? Verdicts of several report.md side by side.

  python experiments/tiny_pipeline/compare_runs.py runs/demo0/report.md runs/demo1/report.md

Reads each report's "What this run shows" table (claim -> verdict) and its "Paired
comparisons" table (comparison -> ahead / behind / no difference detected), and prints
one markdown table per section: a row per claim or comparison, each run's value and
verdict, and whether the verdicts agree. Rows one report lacks show as "absent".
"""

import argparse
import sys

SECTIONS = {"## What this run shows": (0, 2, 4), "## Paired comparisons": (0, 4, 5)}


def tables(path: str) -> dict[str, dict[str, tuple[str, str]]]:
  """Per section: first cell -> (value cell, verdict cell), in the report's order."""
  out, section = {}, None
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.rstrip("\n")
      if line.startswith("## "):
        section = line if line in SECTIONS else None
        continue
      if section and line.startswith("| ") and not line.startswith("|---"):
        cells = [c.strip() for c in line.strip("|").split("|")]
        key, value, word = SECTIONS[section]
        if cells[key] not in ("claim (arXiv 2410.08146)", "comparison (A vs B)"):
          out.setdefault(section, {})[cells[key]] = (cells[value], cells[word])
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("reports", nargs="+", help="report.md files, one per run")
  args = parser.parse_args(argv)
  runs = [tables(p) for p in args.reports]
  disagreements = 0
  for section in SECTIONS:
    rows = list(dict.fromkeys(k for r in runs for k in r.get(section, {})))
    if not rows:
      continue
    print(f"{section} ({len(runs)} runs)\n")
    print("| row | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | agree |")
    print("|---|" + "---|" * (len(runs) + 1))
    for row in rows:
      cells = [r.get(section, {}).get(row) for r in runs]
      words = {c[1] if c else "absent" for c in cells}
      agree = len(words) == 1
      disagreements += not agree
      shown = [f"{c[0]}: {c[1]}" if c else "absent" for c in cells]
      print(f"| {row} | " + " | ".join(shown) + f" | {'yes' if agree else '**no**'} |")
    print()
  print(f"{disagreements} row(s) where the runs' verdicts differ.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
