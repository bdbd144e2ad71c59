"""Fig. 3b as a sweep: PAV-RL on planted with the exact prover mu_gamma, over gamma and seeds.

  python -m pavjax.sweep experiments/didactic/sweep.py --root=runs/didactic_sweep
(needs the SFT init of experiments/didactic/run.sh at runs/didactic/sft).
"""

CONFIG = "configs/rl.py:task=planted,size=test,reward=pav,prover=procedural"
FIXED = {"init_from": "runs/didactic/sft/checkpoints", "train.num_steps": 200,
         "train.eval_every": 50, "rl.eval_pass_ns": "1,4,16"}
AXES = {"rl.prover.gamma": [1, 3, 5, 8, 10, 12, 15, 17], "seed": [0, 1]}
COLLECT = ["eval.sample_accuracy", "eval.pass_at_4", "final_train.rl/accuracy"]
X = "rl.prover.gamma"
