"""The deep-learning stage (docs/DESIGN.md §3–7): model, loss, folds, patches, data loader, training
and inference of the multi-arm 3-D U-Net. Everything an ML engineer needs is in here; the
GPU lease shared by every GPU rule is :mod:`t2lesion.gpu`.

Modules import Keras (except ``backend``, which chooses Keras' backend before Keras is
imported: config ``dl.backend``); import them explicitly (``from t2lesion.unet import model``)
so the rest of the pipeline never pays for a backend import.
"""
