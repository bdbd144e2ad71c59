"""Training arrays cut after their last used column give the same losses and values."""

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import sharding as shd
from pavjax import tasks
from pavjax import training
from pavjax import trajectories
from pavjax import verifiers
from pavjax.jobs import train_verifier
from pavjax.models import Transformer, TransformerConfig

MODEL = TransformerConfig(vocab_size=16, embed_dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=40)


def test_covering_width_by_hand():
  assert tasks.covering_width(0, 128) == 8
  assert tasks.covering_width(7, 128) == 8
  assert tasks.covering_width(8, 128) == 16
  assert tasks.covering_width(85, 128) == 88
  assert tasks.covering_width(126, 128) == 128
  assert tasks.covering_width(85, 128, multiple=1) == 86
  assert tasks.covering_width(30, 28) == 28  # never wider than the arrays


def _params(model):
  return model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]


def test_trimmed_sft_arrays_keep_every_loss_token_and_the_loss():
  task = tasks.make_task(tasks.default_task_config("toy"))
  full = tasks.sft_arrays(task, task.split("train")[:16], MODEL.max_len)
  cut = full.trimmed()
  last = int(np.flatnonzero(full.mask.any(0))[-1])
  assert cut.inputs.shape[1] % 8 == 0 and last < cut.inputs.shape[1] < MODEL.max_len
  assert cut.mask.sum() == full.mask.sum()
  model = Transformer(MODEL)
  params = _params(model)

  def loss(d):
    logits = model.apply({"params": params}, jnp.asarray(d.inputs)).logits
    return training.token_cross_entropy(logits, jnp.asarray(d.targets), jnp.asarray(d.mask))

  np.testing.assert_allclose(loss(cut), loss(full), rtol=1e-5)


def test_predict_on_trimmed_tokens_equals_scores_on_full_width(monkeypatch):
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, MODEL.vocab_size, (6, MODEL.max_len)).astype(np.int32)
  positions = np.array([[3, 9, 17, -1]] * 3 + [[2, 5, -1, -1]] * 3, np.int32)
  model = Transformer(MODEL)
  params = _params(model)
  want = np.asarray(verifiers.score(model, params, jnp.asarray(tokens), jnp.asarray(positions)))
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  widths = []
  real_score = verifiers.score

  def score(model, params, tokens, positions):
    widths.append(tokens.shape[1])
    return real_score(model, params, tokens, positions)

  monkeypatch.setattr(verifiers, "score", score)
  got = verifiers.predict(model, params, tokens, positions, mesh, batch_size=4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert widths and set(widths) == {24}  # reads up to column 17
  # The verifier's training arrays are cut the same way.
  table = trajectories.Trajectories(
      tokens=tokens, prompt_len=positions[:, 0] + 1, length=np.full(6, MODEL.max_len, np.int32),
      prefix_ends=positions, outcome=np.zeros(6, np.float32), reason=np.zeros(6, np.int32),
      problem=np.zeros(6, np.int32), finished=np.zeros(6, bool),
      columns={"q_hat": np.zeros(positions.shape, np.float32)})
  for kind in ("q", "orm"):
    assert train_verifier.examples(table, kind)["tokens"].shape[1] == 24, kind
