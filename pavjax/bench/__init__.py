"""Benchmarks: `python -m pavjax.bench.<name>` (decode, peer, rollouts, verifier_train, rl_step).

Each run measures the device's ceilings first (a large matmul, a large copy),
checks the workload's correctness, then times it (warm-up, median of several
device-synchronized runs) and prints a markdown table last. On a CPU backend the
defaults shrink to small models and batches, and only the ratios mean much.
"""
