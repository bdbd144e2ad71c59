"""The shared training loop's bookkeeping: steps run, logged and counted on the bar."""

import json
import types

import jax.numpy as jnp
import ml_collections
import pytest

from pavjax import metrics
from pavjax import training


class _Bar:
  def __init__(self, total, initial=0, desc=""):
    del desc
    self.total, self.n, self.updates = total, initial, []

  def update(self, k):
    self.n += k
    self.updates.append(k)

  def set_postfix(self, _):
    pass

  def close(self):
    pass


class _Checkpointer:
  def __init__(self):
    self.saved = []

  def should_save(self, step):
    return step % 4 == 0

  def save(self, step, state):
    self.saved.append((step, int(state.step)))

  def wait(self):
    pass


def _step(state, batch):
  return types.SimpleNamespace(step=state.step + 1), {"train/loss": jnp.float32(batch["x"])}


@pytest.mark.parametrize("start,halt", [(0, 0), (2, 0), (0, 5)])
def test_bar_counts_every_step_once_and_logs_means(tmp_path, monkeypatch, start, halt):
  bars = []
  monkeypatch.setattr(metrics, "progress",
                      lambda *a, **k: bars.append(_Bar(*a, **k)) or bars[-1])
  cfg = ml_collections.ConfigDict(dict(num_steps=7, halt_at_step=halt, log_every=3,
                                       nonfinite="stop", max_skips=10, eval_every=0))
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  ckpt = _Checkpointer()
  state, last = training.train_loop(
      types.SimpleNamespace(step=jnp.int32(start)), _step, lambda step, _: {"x": float(step)},
      train_cfg=cfg, checkpointer=ckpt, writer=writer)
  writer.close()
  end = halt or 7
  assert int(state.step) == end
  assert bars[0].n == end and all(k == 1 for k in bars[0].updates)
  assert [s for s, _ in ckpt.saved] == [s for s in range(start + 1, end + 1)
                                        if s % 4 == 0 or s == end]
  rows = [json.loads(line) for line in open(writer.path)]
  # Logged at multiples of 3, before each checkpoint, and at the end; each row is the
  # mean of batch_fn's 0-based steps since the previous row.
  logged = [s for s in range(start + 1, end + 1) if s % 3 == 0 or s % 4 == 0 or s == end]
  assert [r["step"] for r in rows] == logged
  prev = start
  for r in rows:
    assert r["train/loss"] == pytest.approx(sum(range(prev, r["step"])) / (r["step"] - prev))
    prev = r["step"]
  assert last["train/loss"] == rows[-1]["train/loss"]


class _Killed(Exception):
  pass


def test_a_killed_and_resumed_run_has_one_record_per_logged_step(tmp_path, monkeypatch):
  """Killed at step 6 with steps 5 logged after the last checkpoint (4), and a torn
  line left in the log: the resumed run redoes 5.. and each step appears once."""
  monkeypatch.setattr(metrics, "progress", lambda *a, **k: _Bar(*a, **k))
  cfg = ml_collections.ConfigDict(dict(num_steps=8, halt_at_step=0, log_every=1,
                                       nonfinite="stop", max_skips=10, eval_every=0))

  def dying(state, batch):
    if int(state.step) == 5:
      raise _Killed()
    return _step(state, batch)

  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  with pytest.raises(_Killed):
    training.train_loop(types.SimpleNamespace(step=jnp.int32(0)), dying,
                        lambda step, _: {"x": float(step)}, train_cfg=cfg,
                        checkpointer=_Checkpointer(), writer=writer)
  writer.close()
  with open(writer.path, "a", encoding="utf-8") as f:
    f.write('{"step": 6, "train/lo')  # killed mid-line
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  training.train_loop(types.SimpleNamespace(step=jnp.int32(4)), _step,
                      lambda step, _: {"x": float(step)}, train_cfg=cfg,
                      checkpointer=_Checkpointer(), writer=writer)
  writer.close()
  rows = metrics.read_jsonl(writer.path)
  assert [r["step"] for r in rows] == list(range(1, 9))
  assert all(r["train/loss"] == r["step"] - 1 for r in rows)
