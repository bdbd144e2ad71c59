"""Test-time search: best-of-N rules, votes, beam search and DVTS against compute.

Launch (after SFT and the two verifiers):
  python -m pavjax.main --config=configs/search.py:task=arith,size=tiny \
    --config.policy.checkpoint=runs/sft_arith/checkpoints \
    --config.verifiers.q=runs/prm_arith/checkpoints \
    --config.verifiers.orm=runs/orm_arith/checkpoints --workdir=runs/search_arith
PAV with a separate prover policy mu (a q verifier trained on mu's rollouts):
    --config.search.prover=verifier --config.verifiers.prover=runs/prm_mu_arith/checkpoints
Variants: task=..., size=....
"""

import ml_collections

from pavjax import config_lib

# Per task: (max_steps, max_step_tokens) of beam search. arith: the reference
# solutions have <= 4 lines of <= ~18 tokens; planted: one token per step.
STEP_LIMITS = {"arith": (6, 24), "planted": (10, 1), "toy": (4, 4), "jsonl_math": (16, 64)}


def get_config(arg=None):
  v = config_lib.parse_arg(arg, {"task": "arith", "size": "tiny", "difficulty": "",
                                 "hf": ""})
  config = config_lib.base_config("search", v["size"])
  del config["optim"], config["train"], config["checkpoint"]
  config.task = config_lib.task_config(v["task"], v["difficulty"])
  config_lib.set_task_lengths(config, v["task"])

  config.policy = ml_collections.ConfigDict()
  config.policy.checkpoint = ""  # checkpoints dir of the base policy (SFT / RL)
  config.verifiers = ml_collections.ConfigDict()
  config.verifiers.q = ""  # checkpoints dir of the Q^pi verifier (train_verifier kind=q)
  config.verifiers.orm = ""  # checkpoints dir of the ORM (train_verifier kind=orm)
  # checkpoints dir of a q verifier trained on rollouts of the prover policy mu (its
  # Q^mu); read only when search.prover=verifier
  config.verifiers.prover = ""

  s = config.search = ml_collections.ConfigDict()
  s.split = "test"
  s.num_problems = 128  # 0 = the whole split
  s.ns = "2,4,8,16,32,64,128"  # best-of-N budgets (one pool of max(ns) per problem)
  s.num_subsets = 32  # random size-N subsets of the pool averaged per N < max(ns)
  s.beam_ns = "2,4,8,16,32"  # beam widths N
  s.beam_methods = "q_beam,pav_beam,dvts"  # of q_beam | pav_beam | orm_beam | dvts
  s.expansions = 3  # C: next steps sampled per beam row (paper: 3)
  s.alpha = 0.5  # weight of A^mu in Q^pi + alpha * A^mu (paper: 0.5 for small models)
  # prover mu of A^mu in pav_beam, dvts and bon:pav: bok (Best-of-bok_k of pi, closed form
  # from Q^pi) | verifier (Q^mu of the prover policy from verifiers.prover; bok_k unused)
  s.prover = "bok"
  s.bok_k = 4  # Best-of-K prover (paper: Bo4 best)
  s.max_steps, s.max_step_tokens = STEP_LIMITS.get(v["task"], (8, 32))
  s.dvts_width = 4  # DVTS: rows per independent sub-beam (N / width sub-beams)
  s.max_rows = 4096  # candidate rows (problems x N x C) per beam call
  # static: each call's problems step in lockstep | continuous: max_rows rows as problem
  # slots, a problem going on as soon as its own candidates end (same results, faster)
  s.batching = "static"
  s.score_batch = 256  # sequences per verifier scoring call
  s.sweep_n = 8  # N of the alpha and K sweeps of PAV beam (0 = no sweep)
  s.alphas = "0,0.25,0.5,0.75,1"
  s.bok_ks = "2,4,8,16,32"  # (the K sweep is skipped with prover=verifier)
  config.sample.method = "temperature"
  config.sample.batch_size = 1024  # pool sampling rows per call
  config_lib.use_pretrained(config, v["hf"])
  return config
