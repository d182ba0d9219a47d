"""Generate the small fixed cohort of the R known-answer tests (run once; the TSVs are committed).

    python tests/data/stats_ref/make_cohort.py

120 participants (60 per arm) from ``t2lesion.synth.clinical``, sources ``gt`` and a noisy
``classical``; event times put on a 6-week grid (ties, so Efron matters); some
deliberate gaps that exercise the exclusion rules: sub-005 region ``n/a``, sub-010
age ``n/a``, sub-015 sex spelled ``female``, sub-020 without GT (no ``gt`` rows),
sub-025 without a CDP24 outcome row.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from t2lesion.synth.clinical import CohortParams, long_table_from_trajectory, simulate_cohort

HERE = Path(__file__).parent

p, tl, o = simulate_cohort(60, 11, CohortParams(weeks=[0, 48, 96]))
rng = np.random.default_rng(11)
gt = long_table_from_trajectory(tl, "gt", rng)
pr = gt.assign(source="classical", tlv_ml=gt["tlv_ml"] * np.exp(rng.normal(0.05, 0.1, len(gt))),
               tlc=gt["tlc"] + rng.integers(-2, 3, len(gt)).clip(-gt["tlc"]))
long = pd.concat([gt, pr], ignore_index=True)
long["tlv_ml"] = long["tlv_ml"].round(6)
long["session"] = "ses-" + long["session"]
long = long[~((long.source == "gt") & (long.participant_id == "sub-020"))]
p = p.drop(columns="tlv_bl_ml").astype({"region": object, "age": object, "sex": object})
p.loc[p.participant_id == "sub-005", "region"] = "n/a"
p.loc[p.participant_id == "sub-010", "age"] = "n/a"
p.loc[p.participant_id == "sub-015", "sex"] = "female" if p.loc[14, "sex"] == "F" else "male"
o = o[o.endpoint.isin(["CDP24", "CCDP24"])].copy()
o["time_weeks"] = np.ceil(o["time_weeks"] / 6) * 6
o = o[~((o.participant_id == "sub-025") & (o.endpoint == "CDP24"))]
p.to_csv(HERE / "participants.tsv", sep="\t", index=False)
long.to_csv(HERE / "long.tsv", sep="\t", index=False)
o.to_csv(HERE / "outcomes.tsv", sep="\t", index=False)
