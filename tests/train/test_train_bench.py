"""`python -m qwenvl.train.bench`: a JSON result on stdout, progress on stderr (silent with --quiet)."""

from __future__ import annotations

import json

from qwenvl.train.bench import main


def test_bench_reports_progress_and_json(capsys):
    main(["--steps", "1", "--batch", "2", "--max-len", "256", "--no-reference"])
    out, err = capsys.readouterr()
    assert json.loads(out)["ours_packed"]["s_per_step"] > 0
    assert "timing 1 steps of ours (packed)" in err
    main(["--steps", "1", "--batch", "2", "--max-len", "256", "--no-reference", "--quiet"])
    assert capsys.readouterr().err == ""
