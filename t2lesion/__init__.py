"""t2lesion: regenerate the T2-lesion endpoint analyses of MS trials from raw MRI.

Re-implements Krishnan et al., Sci. Rep. 2023 (multi-arm 3-D U-Net) as a library whose
modules mirror the Snakemake rules (docs/DESIGN.md says what each stage does and why):

``config``      the config, checked against schemas/config.schema.yaml; the trials it names
``plan``        the workflow's plan: visits, sources and every path the rules use
``bids``        BIDS input: file names, tables, validation
``synth/``      the synthetic trial with known truth (anatomy, lesions, acquisition, clinical)
``preprocess/`` N4, registration, skull stripping, resampling, normalisation
``classical``   the classical FLAIR segmenter (source ``classical``)
``unet/``       the multi-arm U-Net: hyper-parameters, layers, model, losses, patches,
                augmentation, batches and their worker processes, data, training, the
                decision threshold, ensembled MC-dropout inference, the Keras backend of its jobs
``gpu``         the GPU lease every GPU job shares
``evaluation/`` lesion metrics (Table 2, Fig. 3a-c)
``tracking``    new and enlarging T2 lesions between visits
``review``      the reader's review queue: visits ranked by doubt, review bundles
``corrections`` readers' corrections back in: the ``reviewed`` source
``stats/``      endpoint statistics: long table, change, ANCOVA, Cox, Kaplan-Meier, counts, Table 1
``plots/``      figures; ``report``: summary.md; ``formatting``: numbers for reading
``io``, ``logs``, ``errors``: atomic outputs, job logs, input errors"""

import os as _os

# TensorFlow turns its oneDNN kernels on by default only on some (Intel) CPUs. Without them
# its 3-D convolution gradients are 6-9x slower on the CPU (AMD EPYC here: one demo training
# step 18 s -> 2 s, BENCHMARKS.md). Set before any submodule imports Keras/TensorFlow; a
# user's own TF_ENABLE_ONEDNN_OPTS=0 still wins. Results stay deterministic for a fixed
# thread count (tests/test_train.py).
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
