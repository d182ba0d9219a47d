"""t2lesion: regenerate the T2-lesion endpoint analyses of MS trials from raw MRI.

Re-implements Krishnan et al., Sci. Rep. 2023 (multi-arm 3-D U-Net) as a library
whose stages mirror the Snakemake rules: ``bids``, ``synth``, ``preprocess``,
``patches``, ``model``, ``losses``, ``train``, ``infer``, ``metrics``, ``stats``,
``plots``, ``gpu``.
"""

__version__ = "0.1.0"
