"""Fig. 3b as a sweep with the paper's MADE-style policy in the paper's didactic RL setting.

PAV-RL on planted with the exact prover mu_gamma (alpha 1, no KL, batch-mean baseline, 1
prompt x 64 samples; arXiv 2410.08146, Sec. 3.3, App. B), over gamma and 5 seeds:

  SIZE=made SETTING=paper GAMMAS="" SEEDS=0 RUNS=runs/didactic_made_paper \
    bash experiments/didactic/run.sh          # the SFT init (and one (a) seed)
  python -m pavjax.sweep experiments/didactic/sweep_made.py --root=runs/didactic_made_sweep
  python -m pavjax.sweep experiments/didactic/sweep_made.py --root=runs/didactic_made_sweep \
    --collect                                 # sweep.md: every seed, mean, spread, intervals

The transformer with pavjax's defaults is `sweep.py` beside this file.
"""

CONFIG = ("configs/rl.py:task=planted,size=made,reward=pav,prover=procedural,"
          "setting=paper")
FIXED = {"init_from": "runs/didactic_made_paper/sft/checkpoints", "train.num_steps": 200,
         "train.eval_every": 50, "rl.eval_pass_ns": "1,4,16"}
AXES = {"rl.prover.gamma": [1, 3, 5, 8, 10, 12, 15, 17], "seed": [0, 1, 2, 3, 4]}
COLLECT = ["eval.sample_accuracy", "eval.pass_at_4", "final_train.rl/accuracy"]
X = "rl.prover.gamma"
