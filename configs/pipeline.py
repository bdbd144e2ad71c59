"""The whole method in one command (README quick start):

  python -m pavjax.main --config=configs/pipeline.py:task=planted,size=tiny --workdir=runs/demo
  python -m pavjax.main --config=configs/pipeline.py:size=tiny --workdir=runs/demo_arith
  python -m pavjax.main --config=configs/pipeline.py --workdir=runs/pipeline        # one GPU

The first is README command 1 (2-core CPU, minutes): the planted task, where the
verifiers learn and the report's "What this run shows" table tests the method's
claims; the second runs the same stages on arith at a size that shows the machinery,
not the gains (experiments/tiny_pipeline).

Stages (each in <workdir>/<stage>/, skipped when complete, resumed when started,
rerun with everything downstream when its config changes): sft, rft,
rollouts_train, rollouts_validation, verifier_q, verifier_orm, search, rl_pav,
rl_outcome; then report.md. Override a stage's field with
--config.stages.<stage>.<field>=..., e.g. --config.stages.rl_pav.rl.alpha=5; the task,
shared by every stage, with --config.task.<field>=..., e.g.
--config.task.manual_dir=/data/gsm8k for task=jsonl_math.

Three models (arXiv 2410.08146, Sec. 5: a 2B prover served a 9B policy; verifiers are
networks of their own): `--config.models.prover=<dir>` names a prover policy other
than the policy (a Hugging Face or pavjax checkpoints dir of any size, sharing the
task's tokenizer); its rollouts train a Q^mu verifier (stages rollouts_prover_train,
rollouts_prover_validation, verifier_prover) that PAV search and PAV-RL then use in
place of the closed-form Best-of-K(pi) prover. `--config.models.verifier=<dir>` starts
the verifiers from that checkpoint's backbone instead of the RFT policy's.

Variants: task=arith (default), planted or toy; size=tiny (CPU, minutes), gpu (default:
one GPU), pod (a TPU pod slice: FSDP over every chip, larger model and batches; launch
with launch_tpu.sh); slice=<name of SLICES> with size=pod: the paper's setting on a
named TPU slice (below); difficulty=default|easy (arith only; tiny uses `easy`, one-digit
+ and - problems, so that a 0.8M model trained for minutes is imperfect but not
hopeless: see pavjax.tasks.arith.DIFFICULTIES; task=planted,size=tiny has its own
setting, `_tiny_planted`); `--config.seed=<k>` shifts every stage's seed (the same run
on another seed); hf=<dir>: every stage runs a Hugging
Face checkpoint's architecture, SFT starts from its weights, and arith uses its
tokenizer (README "Use a pretrained model"; size then sets only steps and budgets).
"""

import ml_collections

from pavjax import config_lib

# size -> (model size, step/budget scale). tiny is hand-tuned below for 2 CPU cores.
SIZES = {"tiny": ("tiny", 0), "gpu": ("25m", 1), "pod": ("350m", 4)}

# The paper's setting (arXiv 2410.08146, Sec. 5, App. D, E: a Gemma 2 9B policy, a 2B
# prover, 9B verifiers, n_mc = 20 rollouts, verifier and RL batches of 32) on TPU slices.
# Each entry was found with `python -m pavjax.aot` (README "TPU pods", and
# experiments/tpu_aot for the tables and the steps that did not fit before): with
#   --config=configs/pipeline.py:task=jsonl_math,size=pod,slice=<name>,hf=<gemma-2-9b>,
#            prover=<gemma-2-2b>,verifier=<gemma-2-9b> --topology=<topology>
# every step of every stage compiles within the chip's HBM (512 prompt + 1024 response
# tokens). Per slice: its topology (`--topology`), the mesh (data, fsdp, tensor) of
# every stage but search, the batches, rollouts' seq/fork batches (a fork's rows are
# fork_batch x n_mc), and search's own mesh, rows per beam call and beam widths (each
# beam candidate carries a KV cache, and a call's problems split over data parallelism).
# Compute is bfloat16 with remat everywhere; parameters stay float32 where a stage
# trains them (AdamW's small steps would vanish in bfloat16) and are bfloat16 where a
# stage only reads them (rollouts, search).
SLICES = {
    "v5e-8x8": dict(
        topology="v5e:8x8", mesh=(1, 16, 4), sft_batch=64, verifier_batch=32, rl_prompts=32,
        sample_batch=256, n_mc=20, seq_batch=32, fork_batch=8, prover_fork_batch=32,
        search_batch=256, search_mesh=(1, 8, 8), max_rows=384, beam_ns="2,4,8,16"),
    "v5p-2x2x2": dict(
        topology="v5p:2x2x2", mesh=(1, 8, 1), sft_batch=64, verifier_batch=32, rl_prompts=32,
        sample_batch=256, n_mc=20, seq_batch=32, fork_batch=16, prover_fork_batch=32,
        search_batch=256, search_mesh=(1, 2, 4), max_rows=192, beam_ns="2,4,8,16,32"),
}
TRAINED = ("sft", "rft", "verifier_q", "verifier_orm", "verifier_prover", "rl_pav",
           "rl_outcome")


def _load(name):
  return config_lib.sibling_config(__file__, name)


def get_config(arg=None):
  v = config_lib.parse_arg(arg, {"task": "arith", "size": "gpu", "difficulty": "", "hf": "",
                                 "prover": "", "verifier": "", "slice": ""})
  task, size = v["task"], v["size"]
  if size not in SIZES:
    raise config_lib.ConfigError("size", f"{size!r} is not one of {sorted(SIZES)}")
  if v["slice"] and (size != "pod" or v["slice"] not in SLICES):
    raise config_lib.ConfigError("<arg>", f"slice={v['slice']!r} needs size=pod and one of "
                                 f"{sorted(SLICES)}")
  # arith's default level by size; the stage configs refuse a difficulty for other tasks.
  level = v["difficulty"] or (("easy" if size == "tiny" else "default") if task == "arith"
                              else "")
  model, scale = SIZES[size]
  tiny_planted = task == "planted" and size == "tiny"  # README command 1 (_tiny_planted)
  if tiny_planted:
    model = "test"  # ~100k parameters: 10-token responses need no more
  spec = f"task={task},size={model},difficulty={level},hf={v['hf']}"
  s = ml_collections.ConfigDict()
  s.sft = _load("sft").get_config(spec)
  s.rft = _load("rft").get_config(spec)
  for split in ("train", "validation"):
    for prefix, prover in (("rollouts", "policy"), ("rollouts_prover", "checkpoint")):
      r = _load("rollouts").get_config(spec + f",prover={prover}")
      r.rollouts.split = split
      s[f"{prefix}_{split}"] = r
  s.verifier_q = _load("train_verifier").get_config(spec + ",kind=q")
  s.verifier_orm = _load("train_verifier").get_config(spec + ",kind=orm")
  s.verifier_prover = _load("train_verifier").get_config(spec + ",kind=q")
  s.search = _load("search").get_config(spec)
  s.rl_pav = _load("rl").get_config(spec + ",reward=pav,prover=bok")
  s.rl_outcome = _load("rl").get_config(spec + ",reward=outcome")

  use_rft = not tiny_planted
  if tiny_planted:  # the method's gains in minutes
    _tiny_planted(s)
  elif size == "tiny":  # ~10 minutes on 2 CPU cores
    s.sft.train.num_steps = 600
    s.rft.rft.num_problems, s.rft.rft.num_samples = 256, 4
    s.rft.train.num_steps = 100
    for prefix in ("rollouts", "rollouts_prover"):
      s[f"{prefix}_train"].rollouts.num_problems = 96
      s[f"{prefix}_validation"].rollouts.num_problems = 32
      for split in ("train", "validation"):
        s[f"{prefix}_{split}"].rollouts.n_cov = s[f"{prefix}_{split}"].rollouts.n_mc = 4
    for name in ("verifier_q", "verifier_orm", "verifier_prover"):
      s[name].train.num_steps = 150
      s[name].checkpoint.every = 75
    s.search.search.num_problems = 32
    s.search.search.ns, s.search.search.beam_ns = "1,2,4,8,16", "2,4"
    s.search.search.beam_methods = "q_beam,pav_beam"
    s.search.search.sweep_n = 0
    for name in ("rl_pav", "rl_outcome"):
      s[name].train.num_steps = 30
      s[name].optim.lr = 1e-4  # 30 iterations: the GPU default (2e-5) barely moves
      s[name].train.eval_every = 15
      s[name].checkpoint.every = 15
      s[name].rl.eval_pass_ns = "1,4,16"
  else:
    s.sft.train.num_steps = 5000 * scale
    s.rft.train.num_steps = 500 * scale
    for prefix in ("rollouts", "rollouts_prover"):
      s[f"{prefix}_train"].rollouts.num_problems = 4096 * scale
      s[f"{prefix}_validation"].rollouts.num_problems = 256
    for name in ("verifier_q", "verifier_orm", "verifier_prover"):
      s[name].train.num_steps = 5000 * scale
    s.search.search.num_problems = 256
    for name in ("rl_pav", "rl_outcome"):
      s[name].train.num_steps = 500 * scale
      s[name].rl.num_prompts = 32 * scale
      s[name].train.batch_size = s[name].rl.num_prompts * s[name].rl.group_size
      s[name].rl.eval_pass_ns = "1,4,16,64"
  if size == "pod":
    for cfg in s.values():  # parameters and batch sharded over every chip
      cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
      cfg.model.dtype = "bfloat16"
      cfg.model.remat = True
    for name in ("sft", "rft", "verifier_q", "verifier_orm", "verifier_prover"):
      s[name].train.batch_size = 256
    for cfg in s.values():
      cfg.sample.batch_size = max(cfg.sample.batch_size, 1024)
  if v["slice"]:
    _use_slice(s, SLICES[v["slice"]])

  # One task for every stage: `--config.task.<field>=...` sets it (e.g. jsonl_math's
  # manual_dir); the pipeline hands a copy to each stage when it resolves them.
  task_cfg = s.sft.task
  if tiny_planted:
    task_cfg.sft_gamma = 10.0  # a weak SFT policy (_tiny_planted)
  for cfg in s.values():
    del cfg["task"]
  config = ml_collections.ConfigDict()
  config.job = "pipeline"
  config.task = task_cfg
  config.size = size
  config.difficulty = level
  config.only = ""  # comma-separated stages to run ('' = all, then the report)
  # False: no RFT stage; rollouts, verifiers, search and RL start from the SFT policy.
  config.use_rft = use_rft
  config.seed = 0  # added to every stage's own seed: the same run on another seed
  config.models = ml_collections.ConfigDict()
  config.models.prover = v["prover"]  # '' = the policy (Q^pi; PAV's prover BoK(pi))
  config.models.verifier = v["verifier"]  # '' = the verifiers start from the RFT policy
  config.stages = s
  return config


def _tiny_planted(s) -> None:
  """The planted task on 2 CPU cores (README command 1), sized so that its claims hold.

  Every planted problem is the same prompt, so RFT on a handful of correct samples would
  teach the policy the planted sequence outright; the pipeline skips RFT here
  (`use_rft`), and search and RL start from a weak SFT policy: references drawn from
  mu_{sft_gamma} (arXiv 2410.08146, Sec. 3.3), which finds the sequence rarely.
  """
  s.sft.train.num_steps = 100
  # Held out: the whole validation split with 64 seeds each. A verifier's gain over the
  # constant comes from the few prefixes near the planted sequence, so it varies much
  # from problem to problem and its interval needs many seeds (at 8 seeds one of two
  # seeds' PRM-Q intervals reached 0; at 32, one of two seeds' ORM intervals did).
  for split, n, n_cov in (("train", 512, 4), ("validation", 256, 64)):
    for prefix in ("rollouts", "rollouts_prover"):
      r = s[f"{prefix}_{split}"].rollouts
      r.num_problems, r.n_cov, r.n_mc = n, n_cov, 8
  for name in ("verifier_q", "verifier_orm", "verifier_prover"):
    s[name].train.num_steps = 600
    s[name].checkpoint.every = 200
  s.search.search.num_problems = 256  # the whole test split: each is the same prompt
  # ORM best-of-128 spends about a width-8 beam's FLOPs (the verifier re-reads every
  # candidate's prefix), so every beam width has an ORM budget to compare with.
  s.search.search.ns, s.search.search.beam_ns = "1,2,4,8,16,32,64,128", "2,4,8"
  s.search.search.beam_methods = "q_beam,pav_beam"
  s.search.search.sweep_n = 0
  for name in ("rl_pav", "rl_outcome"):
    s[name].train.num_steps = 60
    s[name].train.eval_every = 5
    s[name].checkpoint.every = 30
    s[name].rl.eval_pass_ns = "1,4,16"


def _use_slice(s, pod) -> None:
  """The paper's setting on one of SLICES: mesh, batches, rollout sizes, dtypes."""
  data, fsdp, tensor = pod["mesh"]
  for name, cfg in s.items():
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = data, fsdp, tensor
    cfg.model.dtype, cfg.model.remat = "bfloat16", True
    if "param_dtype" in cfg.model:  # Hugging Face models (hf=<dir>) choose their storage
      cfg.model.param_dtype = "float32" if name in TRAINED else "bfloat16"
    cfg.sample.batch_size = pod["sample_batch"]
  for name in ("sft", "rft"):
    s[name].train.batch_size = pod["sft_batch"]
  for name in ("verifier_q", "verifier_orm", "verifier_prover"):
    s[name].train.batch_size = pod["verifier_batch"]
    s[name].verifier.eval_batch_size = pod["verifier_batch"]
  for prefix, fork in (("rollouts", pod["fork_batch"]), ("rollouts_prover",
                                                         pod["prover_fork_batch"])):
    for split in ("train", "validation"):
      r = s[f"{prefix}_{split}"].rollouts
      r.n_mc, r.seq_batch, r.fork_batch = pod["n_mc"], pod["seq_batch"], fork
  s.search.sample.batch_size = pod["search_batch"]
  s.search.search.score_batch = pod["verifier_batch"]
  # Step-wise beam search keeps a KV cache per candidate (N x C per problem), and the
  # problems of a call are split over the data-parallel devices: the search stage
  # trades them for tensor parallelism, and max_rows holds at least one problem per such
  # device at the widest beam (v5e: 384 rows = 8 problems x 16 x 3).
  s.search.mesh.data, s.search.mesh.fsdp, s.search.mesh.tensor = pod["search_mesh"]
  s.search.search.max_rows = pod["max_rows"]
  s.search.search.beam_ns = pod["beam_ns"]
  for name in ("rl_pav", "rl_outcome"):
    s[name].rl.num_prompts = pod["rl_prompts"]
    s[name].train.batch_size = s[name].rl.num_prompts * s[name].rl.group_size
