"""SFT of the policy on a task's reference solutions.

Launch (CPU, minutes):
  python -m pavjax.main --config=configs/sft.py:task=toy,size=test --workdir=runs/sft_toy
Variants (comma-separated): task=toy|planted|arith|jsonl_math, size=<model size in
pavjax.config_lib.MODEL_SIZES, or size=made: the paper's MADE-style 3x128 MLP>.
Override any field: --config.train.num_steps=500.
Your own GSM8K- or MATH-style JSONL (README "Bring your own JSONL"): on 2 CPU cores in
about 2.5 minutes (800 synthetic problems), then on one GPU; lengths come from the data,
and the run ends with test accuracy:
  python experiments/byo_jsonl/make_data.py --out=/tmp/gsm_synth
  python -m pavjax.main --config=configs/sft.py:task=jsonl_math,size=tiny --workdir=runs/gsm \
    --config.task.manual_dir=/tmp/gsm_synth
  python -m pavjax.main --config=configs/sft.py:task=jsonl_math,size=small \
    --workdir=runs/gsm_gpu --config.task.manual_dir=/data/gsm8k
The didactic task on the paper's MADE policy:
  python -m pavjax.main --config=configs/sft.py:task=planted,size=made --workdir=runs/sft_made
setting=paper (planted only): Adam at a constant 1e-3 from step 1 (pavjax's default schedule
warms up over 50 steps, i.e. over the whole 50-step run, then has no room to decay).
"""

from pavjax import config_lib

# Per task: SFT defaults that suit it (lengths come from config_lib.TASK_LENGTHS).
_TASK_DEFAULTS = {
    "toy": dict(num_steps=300, batch_size=64, lr=3e-3),
    # One prompt, so greedy decoding would give one sequence: evaluate by sampling.
    "planted": dict(num_steps=50, batch_size=64, lr=1e-3,
                    method="temperature"),
    "arith": dict(num_steps=3000, batch_size=64, lr=2e-3),
    # Lengths from the data (config_lib.TASK_LENGTHS); test accuracy on up to 512 problems.
    "jsonl_math": dict(num_steps=5000, batch_size=32, lr=3e-4, num_eval=512),
}


def get_config(arg=None):
  variant = config_lib.parse_arg(arg, {"task": "toy", "size": "tiny", "difficulty": "",
                                       "hf": "", "setting": "pavjax"})
  if variant["setting"] not in ("pavjax", "paper"):
    raise config_lib.ConfigError("setting", f"{variant['setting']!r} is not pavjax or paper")
  if variant["setting"] == "paper" and variant["task"] != "planted":
    raise config_lib.ConfigError("setting", "paper is the didactic task's SFT (task=planted)")
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
  config.sample.num_eval = d.get("num_eval", config.sample.num_eval)
  if size in ("test", "tiny") and task_name == "arith":
    # CPU-sized: the README's first command finishes in about ten minutes on 2 cores.
    config.train.num_steps = 1500
    config.train.batch_size = 32
  if size in ("test", "tiny") and task_name == "jsonl_math":
    # CPU-sized, from scratch: the README's bring-your-own-data command (800 synthetic
    # problems) trains in a few minutes on 2 cores (README, "Bring your own JSONL").
    config.train.num_steps = 600
    config.train.batch_size = 32
    config.optim.lr = 2e-3
  if variant["setting"] == "paper":
    config.optim.warmup_steps = 0
    config.optim.end_lr_frac = 1.0
  config.train.log_every = max(1, min(50, config.train.num_steps // 10))
  config.checkpoint.every = max(1, config.train.num_steps // 4)
  config_lib.use_pretrained(config, variant["hf"])
  return config
