"""The validation study on known truth (issue 25, docs/DESIGN.md §15): analyses of the synthetic
trial's outputs against its ground truth, pure functions on arrays and tables.

* :mod:`t2lesion.validation.agreement`: TLV agreement of a source with GT per visit, ICC(2,1)
  and ICC(3,1) with their F-distribution CIs (Shrout & Fleiss 1979), Bland–Altman in mL and in
  percent.
* :mod:`t2lesion.validation.uncertainty`: does the U-Net's uncertainty map flag its errors
  (exact rank AUROC of voxel errors; Spearman of per-visit Dice against mean uncertainty).
* :mod:`t2lesion.validation.detection`: new-lesion detection in the MSSEG-2 manner (lesion-wise
  sensitivity, precision, F1 by size bin).
* :mod:`t2lesion.validation.document`: docs/VALIDATION.md from a folder of the validation
  TSVs, with every target of the issue met or missed by how much.

This ``__init__`` imports nothing, so that a job loads only the module it uses.
"""
