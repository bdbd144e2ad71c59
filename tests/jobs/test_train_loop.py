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


# --- finite divergence (training.DivergenceMonitor) -------------------------------------


def _monitor(action="stop", factor=10.0, window=100, zero_grad_steps=5, patience=1):
  return training.DivergenceMonitor(action, factor, window, zero_grad_steps, patience)


def test_a_loss_spike_far_above_the_running_median_stops_naming_its_step():
  mon = _monitor()
  for step in range(1, 21):  # 20 steps of history: the rule's minimum
    assert mon.update(step, 2.0 + 0.01 * (step % 3), 1.0) is None
  # median 2.01, MAD 0.01: the margin is 10 x max(|2.01|, 0.01) = 20.1 above the median.
  assert mon.update(21, 22.0, 1.0) is None
  with pytest.raises(training.DivergenceError, match=r"diverged at step 22: loss 23 is far"):
    mon.update(22, 23.0, 1.0)


def test_a_spike_must_last_patience_steps_in_a_row():
  """One bad batch (13x the median, as a small verifier batch once read) trains
  on; three spiking steps in a row with patience 3 stop, naming the streak."""
  mon = _monitor(patience=3)
  for step in range(1, 21):
    mon.update(step, 0.1, 1.0)
  assert mon.update(21, 1.37, 1.0) is None and mon.holding
  assert mon.update(22, 0.1, 1.0) is None and not mon.holding  # the streak ends
  assert mon.update(23, 5.0, 1.0) is None
  assert mon.update(24, 5.0, 1.0) is None
  with pytest.raises(training.DivergenceError,
                     match=r"step 25: loss 5 is far .*, 3 steps in a row since step 23"):
    mon.update(25, 5.0, 1.0)


def test_no_spike_is_judged_before_twenty_steps_of_history():
  mon = _monitor()
  for step in range(1, 20):
    mon.update(step, 1.0, 1.0)
  assert mon.update(20, 1e9, 1.0) is None  # 19 steps of history: not judged yet
  assert mon.losses[-1] == 1e9


def test_a_loss_centred_at_zero_is_judged_in_mads_and_a_flat_one_not_at_all():
  mon = _monitor(action="warn")
  for step in range(1, 41):
    mon.update(step, 0.1 * (-1) ** step, 1.0)  # median 0, MAD 0.1: threshold 0 + 10 x 0.1
  assert mon.update(41, 1.0, 1.0) is None  # not above 1.0
  # Now 20 x -0.1, 20 x 0.1 and 1.0: median 0.1, MAD 0.2, threshold 0.1 + 10 x 0.2 = 2.1.
  assert mon.update(42, 2.05, 1.0) is None
  assert "far above its running median 0.1 " in mon.update(43, 2.2, 1.0)
  flat = _monitor()
  for step in range(1, 41):
    flat.update(step, 0.0, 1.0)  # no scale: the rule stays silent
  assert flat.update(41, 5.0, 1.0) is None


def test_a_gradient_norm_of_exactly_zero_for_n_steps_in_a_row_stops():
  mon = _monitor(zero_grad_steps=5)
  for step in range(1, 5):
    mon.update(step, 2.7, 0.0)
  mon.update(5, 2.7, 1e-30)  # a tiny but nonzero norm breaks the streak
  for step in range(6, 10):
    assert mon.update(step, 2.7, 0.0) is None
  with pytest.raises(training.DivergenceError, match=r"step 10: gradient norm exactly 0 for 5"):
    mon.update(10, 2.7, 0.0)


def test_warn_logs_and_goes_on_and_off_judges_nothing(caplog):
  mon = _monitor(action="warn", zero_grad_steps=3)
  for step in range(1, 7):
    mon.update(step, 1.0, 0.0)
  assert [s for s, _ in mon.events] == [3]  # once per streak
  assert "train.divergence='warn'" in caplog.text
  off = training.DivergenceMonitor.from_config(ml_collections.ConfigDict({"divergence": "off"}))
  for step in range(1, 500):
    assert off.update(step, 1e9 if step > 100 else 1.0, 0.0) is None


def test_the_loop_stops_a_finite_divergence_before_checkpointing_it(tmp_path, monkeypatch):
  """Loss 1 for 30 steps, then 1e6 (finite): with patience 10 'stop' raises at
  step 40 naming the streak from step 31, and the periodic checkpoints of steps
  32 and 36 (inside the open streak) are held: none after step 28 is written."""
  monkeypatch.setattr(metrics, "progress", lambda *a, **k: _Bar(*a, **k))
  cfg = ml_collections.ConfigDict(dict(
      num_steps=60, halt_at_step=0, log_every=8, nonfinite="stop", max_skips=10, eval_every=0,
      divergence="stop", divergence_factor=10.0, divergence_window=100, zero_grad_steps=200,
      divergence_patience=10))

  def step_fn(state, batch):
    loss = jnp.float32(1.0 if batch["x"] < 30 else 1e6)
    return (types.SimpleNamespace(step=state.step + 1),
            {"train/loss": loss, "train/grad_norm": jnp.float32(1.0)})

  ckpt = _Checkpointer()
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  with pytest.raises(training.DivergenceError, match="diverged at step 40: .*since step 31"):
    training.train_loop(types.SimpleNamespace(step=jnp.int32(0)), step_fn,
                        lambda step, _: {"x": step}, train_cfg=cfg, checkpointer=ckpt,
                        writer=writer)
  assert [s for s, _ in ckpt.saved] == [4, 8, 12, 16, 20, 24, 28]


def test_a_rerun_with_nothing_left_to_run_returns_the_stored_end_record(tmp_path, monkeypatch):
  monkeypatch.setattr(metrics, "progress", lambda *a, **k: _Bar(*a, **k))
  cfg = ml_collections.ConfigDict(dict(num_steps=6, halt_at_step=0, log_every=3,
                                       nonfinite="stop", max_skips=10, eval_every=0))
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  _, last = training.train_loop(types.SimpleNamespace(step=jnp.int32(0)), _step,
                                lambda step, _: {"x": float(step)}, train_cfg=cfg,
                                checkpointer=_Checkpointer(), writer=writer)
  writer.close()
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  state, again = training.train_loop(types.SimpleNamespace(step=jnp.int32(6)), _step,
                                     lambda step, _: {"x": float(step)}, train_cfg=cfg,
                                     checkpointer=_Checkpointer(), writer=writer)
  writer.close()
  assert int(state.step) == 6
  assert again == last and again["train/loss"] == pytest.approx((4 + 5) / 2)  # logged at 4 (a save) and 6
