"""SFT of the policy on a task's reference solutions.

Launch (CPU, minutes):
  python -m pavjax.main --config=configs/sft.py:task=toy,size=test --workdir=runs/sft_toy
Variants (comma-separated): task=toy|planted|arith|jsonl_math, size=<model size in
pavjax.config_lib.MODEL_SIZES, or size=made: the paper's MADE-style 3x128 MLP>.
Override any field: --config.train.num_steps=500.
The didactic task on the paper's MADE policy:
  python -m pavjax.main --config=configs/sft.py:task=planted,size=made --workdir=runs/sft_made
"""

from pavjax import config_lib

# Per task: SFT defaults that suit it (lengths come from config_lib.TASK_LENGTHS).
_TASK_DEFAULTS = {
    "toy": dict(num_steps=300, batch_size=64, lr=3e-3),
    # One prompt, so greedy decoding would give one sequence: evaluate by sampling.
    "planted": dict(num_steps=50, batch_size=64, lr=1e-3,
                    method="temperature"),
    "arith": dict(num_steps=3000, batch_size=64, lr=2e-3),
    "jsonl_math": dict(num_steps=5000, batch_size=32, lr=3e-4),
}


def get_config(arg=None):
  variant = config_lib.parse_arg(arg, {"task": "toy", "size": "tiny", "difficulty": "",
                                       "hf": ""})
  task_name, size = variant["task"], variant["size"]
  if task_name not in _TASK_DEFAULTS:
    raise config_lib.ConfigError("task.name", f"no SFT defaults for {task_name!r}")
  d = _TASK_DEFAULTS[task_name]
  config = config_lib.base_config("sft", size)
  config.task = config_lib.task_config(task_name, variant["difficulty"])
  config_lib.set_task_lengths(config, task_name)
  config.train.num_steps = d["num_steps"]
  config.train.batch_size = d["batch_size"]
  config.optim.lr = d["lr"]
  config.sample.method = d.get("method", "greedy")
  if size in ("test", "tiny") and task_name in ("arith", "jsonl_math"):
    # CPU-sized: the README's first command finishes in about ten minutes on 2 cores.
    config.train.num_steps = 1500
    config.train.batch_size = 32
  config.train.log_every = max(1, min(50, config.train.num_steps // 10))
  config.checkpoint.every = max(1, config.train.num_steps // 4)
  config_lib.use_pretrained(config, variant["hf"])
  return config
