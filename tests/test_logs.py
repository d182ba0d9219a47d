"""A rule's log (t2lesion.logs.rule_log): what a failed job leaves there."""

from __future__ import annotations

import pytest

from t2lesion.errors import InputError
from t2lesion.logs import rule_log


def test_an_unexpected_error_reaches_the_log_with_its_traceback_and_still_fails_the_job(tmp_path):
    log = tmp_path / "logs" / "job.log"
    with pytest.raises(RuntimeError, match="All samples map outside moving image buffer"):
        with rule_log(log):
            def coregister():
                raise RuntimeError("ITK ERROR: All samples map outside moving image buffer")

            coregister()
    text = log.read_text()
    assert "ERROR t2lesion: the job failed" in text
    assert "Traceback (most recent call last)" in text and "in coregister" in text
    assert "RuntimeError: ITK ERROR: All samples map outside moving image buffer" in text


def test_an_input_error_is_its_problems_without_a_traceback(tmp_path, capsys):
    log = tmp_path / "job.log"
    with pytest.raises(SystemExit) as exit_:
        with rule_log(log):
            raise InputError(["a.nii.gz: only 1 slice", "b.tsv: row 3: age 'x' is not a number"])
    assert exit_.value.code == 1
    text = log.read_text()
    assert "a.nii.gz: only 1 slice" in text and "Traceback" not in text
    assert "2 problem(s); the full list is above" in text
    assert "b.tsv: row 3" in capsys.readouterr().err
