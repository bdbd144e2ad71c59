"""pavjax: process advantage verifiers in JAX."""

import setuptools

# Ranges admit Python 3.11 (jax 0.10.x, flax 0.12.x) and Python 3.12 with jax 0.11.x.
INSTALL_REQUIRES = [
    "jax>=0.7,<0.12",
    "flax>=0.11,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "ml-collections>=1.0,<2",
    "sentencepiece>=0.2,<0.3",
    "tensorflow-datasets>=4.9.7,<5",
    "array-record>=0.7",
    "numpy>=1.26",
    "chex>=0.1.88",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "absl-py>=2.1",
    # Pretrained checkpoints (pavjax.tasks.hf_tokenizer, pavjax.models): tokenizer.json,
    # chat templates, safetensors weights.
    "tokenizers>=0.20",
    "jinja2>=3.1.6",
    "safetensors>=0.4",
    # jsonl_math's answer grader (pavjax.tasks.grading); pulls latex2sympy2_extended, sympy.
    "math-verify>=0.8,<1",
]

setuptools.setup(
    name="pavjax",
    version="0.1.0",
    description="Process advantage verifiers (PAVs) for LLM reasoning, in JAX.",
    packages=setuptools.find_packages(include=["pavjax", "pavjax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch (the CPU wheel, pinned: a looser range pulls a multi-GB CUDA build) and
        # transformers are the reference the pretrained-checkpoint tests compare against.
        # jax[tpu] brings libtpu, whose compiler the AOT tests (tests/test_aot.py) run on
        # this CPU for a described TPU slice; the suite still runs on CPU devices
        # (tests/conftest.py sets JAX_PLATFORMS=cpu).
        "test": ["pytest>=8", "torch==2.13.0", "transformers>=5,<6", "jax[tpu]>=0.7,<0.12"],
        # On a GPU machine: pip install -e .[gpu]  (CUDA 12 wheels from PyPI).
        "gpu": ["jax[cuda12]>=0.7,<0.12"],
        "tpu": ["jax[tpu]>=0.7,<0.12"],
        # The peer benchmark (python -m pavjax.bench.peer) runs HF transformers beside pavjax.
        "bench": ["torch==2.13.0", "transformers>=5,<6"],
    },
)
