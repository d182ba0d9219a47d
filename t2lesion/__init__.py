"""t2lesion: regenerate the T2-lesion endpoint analyses of MS trials from raw MRI.

Re-implements Krishnan et al., Sci. Rep. 2023 (multi-arm 3-D U-Net) as a library
whose stages mirror the Snakemake rules: ``bids``, ``synth``, ``preprocess``,
``patches``, ``model``, ``losses``, ``train``, ``infer``, ``evaluation``, ``stats``,
``plots``, ``gpu``.
"""

import os as _os

# TensorFlow turns its oneDNN kernels on by default only on some (Intel) CPUs. Without them
# its 3-D convolution gradients are 6-9x slower on the CPU (AMD EPYC here: one demo training
# step 18 s -> 2 s, BENCHMARKS.md). Set before any submodule imports Keras/TensorFlow; a
# user's own TF_ENABLE_ONEDNN_OPTS=0 still wins. Results stay deterministic for a fixed
# thread count (tests/test_train.py).
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
