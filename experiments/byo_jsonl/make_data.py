"""Writes GSM8K-style JSONL files of synthetic arithmetic word problems.

  python experiments/byo_jsonl/make_data.py --out=/tmp/gsm_synth  # train.jsonl, test.jsonl

Each problem is a short story with one-digit givens and two or three computed
quantities; the answer field is written the way GSM8K writes it: one step per line,
calculator annotations `<<a+b=c>>` in the steps, and `#### <answer>` last. Nothing is
downloaded; the same seed gives the same files. The README's "Bring your own JSONL"
command was measured on these files.
"""

from __future__ import annotations

import argparse
import json
import os
import random

NAMES = ("Tom", "Ann", "Sam", "Mia", "Leo", "Ava", "Max", "Zoe")
ITEMS = ("apple", "pen", "card", "book", "shell", "stamp", "marble", "sticker")


def _story(rng: random.Random) -> tuple[str, list[str], int]:
  """One problem: (question, steps, answer)."""
  name, other = rng.sample(NAMES, 2)
  item = rng.choice(ITEMS)
  kind = rng.randrange(4)
  a, b = rng.randint(2, 9), rng.randint(2, 9)
  if kind == 0:  # add, then give away
    c = rng.randint(1, a + b - 1)
    s, r = a + b, a + b - c
    question = (f"{name} has {a} {item}s and buys {b} more. Then {name} gives {c} {item}s "
                f"to {other}. How many {item}s does {name} have now?")
    steps = [f"After buying, {name} has {a} + {b} = <<{a}+{b}={s}>>{s} {item}s.",
             f"After giving {c} away, {name} has {s} - {c} = <<{s}-{c}={r}>>{r} {item}s."]
    return question, steps, r
  if kind == 1:  # boxes times size
    p = a * b
    question = (f"{name} buys {a} boxes of {item}s. Each box holds {b} {item}s. "
                f"How many {item}s does {name} buy?")
    steps = [f"{a} boxes of {b} {item}s hold {a} * {b} = <<{a}*{b}={p}>>{p} {item}s."]
    return question, steps, p
  if kind == 2:  # boxes times size, plus loose ones
    c = rng.randint(1, 9)
    p, r = a * b, a * b + c
    question = (f"{name} has {a} bags with {b} {item}s in each bag and {c} loose {item}s. "
                f"How many {item}s does {name} have in all?")
    steps = [f"The bags hold {a} * {b} = <<{a}*{b}={p}>>{p} {item}s.",
             f"With the loose ones, {name} has {p} + {c} = <<{p}+{c}={r}>>{r} {item}s."]
    return question, steps, r
  c = rng.randint(2, 9)  # two friends, then a share
  s, r = a + b, a + b + c
  question = (f"{name} has {a} {item}s, {other} has {b} {item}s and their teacher gives "
              f"them {c} more. How many {item}s do they have together?")
  steps = [f"{name} and {other} have {a} + {b} = <<{a}+{b}={s}>>{s} {item}s.",
           f"With the teacher's {c}, they have {s} + {c} = <<{s}+{c}={r}>>{r} {item}s."]
  return question, steps, r


def write(out: str, num_train: int, num_test: int, seed: int) -> dict[str, int]:
  """Writes `<out>/train.jsonl` and `<out>/test.jsonl`; returns the line counts."""
  rng = random.Random(seed)
  os.makedirs(out, exist_ok=True)
  counts = {}
  for split, count in (("train", num_train), ("test", num_test)):
    with open(os.path.join(out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      for _ in range(count):
        question, steps, answer = _story(rng)
        f.write(json.dumps({"question": question,
                            "answer": "\n".join(steps + [f"#### {answer}"])}) + "\n")
    counts[split] = count
  return counts


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder for train.jsonl and test.jsonl")
  parser.add_argument("--num_train", type=int, default=800)
  parser.add_argument("--num_test", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  counts = write(args.out, args.num_train, args.num_test, args.seed)
  print(f"wrote {counts} problems to {args.out}")


if __name__ == "__main__":
  main()
