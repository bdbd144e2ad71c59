"""Compute accounting for search: FLOPs from token counters, and compute-efficiency ratios.

Convention (arXiv 2410.08146, Sec. 4, App. C leaves the unit open): a forward pass over one
token costs 2 x params FLOPs, for the policy (prefill and generated tokens), for
the verifier (every token it scores, `verifier_tokens`) and for a prover verifier
(every token it scores, `prover_tokens`: PAV with a separate prover policy's Q^mu
model; 0 for the closed-form Best-of-K prover, which costs no forward pass).
Attention's quadratic term is left out; at the sequence lengths used here it is a
small correction and it cancels in ratios between methods that read similar lengths.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence


def flops(counters: Mapping[str, float], policy_params: int, verifier_params: int,
          prover_params: int | None = None) -> float:
  """2 * params * tokens for the policy (prefill + generated), the verifier and the prover.

  `prover_params` (the prover verifier's size) defaults to `verifier_params`.
  """
  policy = counters.get("prefill_tokens", 0) + counters.get("policy_tokens", 0)
  prover_params = verifier_params if prover_params is None else prover_params
  return 2.0 * (policy_params * policy + verifier_params * counters.get("verifier_tokens", 0)
                + prover_params * counters.get("prover_tokens", 0))


def compute_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
  """Compute at which a (compute, accuracy) curve first reaches `target` accuracy.

  Points are sorted by compute; between the two points that bracket the first
  crossing, accuracy is interpolated linearly in log-compute. A curve whose
  cheapest point already reaches the target returns that point's compute (an
  upper bound); a curve that never reaches it returns None.
  """
  pts = sorted((float(c), float(a)) for c, a in curve)
  if not pts:
    return None
  if pts[0][1] >= target:
    return pts[0][0]
  for (c0, a0), (c1, a1) in zip(pts, pts[1:]):
    if a1 >= target > a0:
      frac = (target - a0) / (a1 - a0)
      return math.exp(math.log(c0) + frac * (math.log(c1) - math.log(c0)))
  return None


def efficiency(reference: Sequence[tuple[float, float]], method: Sequence[tuple[float, float]]
               ) -> dict[str, float | None]:
  """The paper's ratio: compute a method needs to match the reference's best point.

  The reference point is the reference curve's most expensive one (ORM
  best-of-128 in the paper). Returns the target accuracy, the compute each
  needs, `compute_ratio` = method / reference (< 1: cheaper) and `speedup` =
  reference / method (the paper's "5x"); ratios are None when never reached.
  `reference_rises` is False when the reference's own cheaper points already reach
  its final accuracy (a flat or falling curve): then no ratio means anything.
  """
  ref_compute, target = max(reference)
  need = compute_to_reach(method, target)
  # A reference curve that does not rise (its own cheaper points already reach the
  # target) makes the ratio meaningless: `reference_rises` says whether it does.
  return {"target_accuracy": target, "reference_compute": ref_compute, "method_compute": need,
          "compute_ratio": None if need is None else need / ref_compute,
          "speedup": None if need is None else ref_compute / need,
          "reference_rises": math.isclose(compute_to_reach(reference, target), ref_compute,
                                          rel_tol=1e-9)}
