"""evaluation.sample_responses: continuous batching gives the static calls' responses."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from pavjax import evaluation
from pavjax import sharding as shd
from pavjax import tasks
from pavjax.models import Transformer, TransformerConfig
from pavjax.sampling import Sampler, Temperature, TransformerLM


def test_continuous_batching_gives_the_static_responses():
  task = tasks.make_task(tasks.default_task_config("toy"))
  cfg = TransformerConfig(vocab_size=task.vocab_size, embed_dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=64)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  problems = list(task.split("validation"))[:21]  # 2 whole calls of 8 prompts and 5 more
  kw = dict(rng=jax.random.PRNGKey(7), mesh=mesh, method=Temperature(1.0),
            max_new_tokens=12, batch_size=16, num_samples=2)
  with shd.activate(mesh, shd.DEFAULT_RULES):
    static = evaluation.sample_responses(task, Sampler(TransformerLM(model), pad_id=task.pad_id),
                                         params, problems, **kw)
    cont = {blocks: evaluation.sample_responses(
        task, Sampler(TransformerLM(model), pad_id=task.pad_id), params, problems,
        batching="continuous", blocks=blocks, **kw) for blocks in (1, 2)}
  lengths = [len(r.tokens) for g in static for r in g]
  assert min(lengths) < max(lengths)  # a length-skewed workload
  for blocks, groups in cont.items():
    assert [[r.tokens for r in g] for g in groups] == [[r.tokens for r in g] for g in static]
    assert [[r.outcome for r in g] for g in groups] == [[r.outcome for r in g] for g in static]
    for g, h in zip(groups, static):
      for a, b in zip(g, h):
        assert a.problem == b.problem and a.finished == b.finished
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5), blocks
  with pytest.raises(ValueError, match="batching 'dynamic'"):
    evaluation.sample_responses(task, None, params, problems, batching="dynamic", **kw)
