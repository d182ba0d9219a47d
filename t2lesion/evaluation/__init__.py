"""The evaluation stage: segmentation and lesion-detection metrics against the GT masks (docs/DESIGN.md §8).

Layered like nnU-Net v2's ``evaluation`` package; each module imports only those above it:

* :mod:`t2lesion.evaluation.segmentation`: the metric maths on one visit's arrays (voxel DC,
  PPV, TPR, AVD, TLV; lesions as 18-connected components of ≥ 3 voxels; LTPR, LPPV, LFPR,
  lesion DC; size groups; lesion load). Definitions in its docstring.
* :mod:`t2lesion.evaluation.table2`: the aggregation over the visits of a dataset (Table 2
  mean ± SD, r_vol/r_count with CI, Bland–Altman, ISBI-2015 score, Fig. 3a–c size-group table).
* :mod:`t2lesion.evaluation.files`: the file-level entry points that ``workflow_scripts/``
  call (read NIfTI masks and TSVs, write TSVs and figures; one source side by side with
  another).

The figures (matplotlib) are :mod:`t2lesion.plots.segmentation_figs`; they use the maths
and the aggregation, and only :mod:`~t2lesion.evaluation.files` imports them, when it
draws. This ``__init__`` imports nothing, so that a per-visit job loads only what it uses.
"""
