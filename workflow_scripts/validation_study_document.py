"""docs/VALIDATION.md and its folder of tables and figures (rule validation_study_document)."""

from t2lesion.logs import rule_log
from t2lesion.validation.run import git_commit, run_document

with rule_log(snakemake.log[0], snakemake.threads):
    p, o = snakemake.params, snakemake.output
    disc = snakemake.input.discussion
    run_document(p.copies, o.folder, o.document, commit=git_commit(p.repo), config=p.config,
                 discussion_md=disc[0] if disc else None)
