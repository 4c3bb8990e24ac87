"""The benchmark harness: a tiny suite runs end to end, writes its report, and a
restart keeps finished points.
"""

import json

from fedrec.cli import main
from fedrec.simulation.benchmark import SUITES


def test_smoke_suite_writes_report_and_restart_skips_finished_points(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--suite", "strategies-smoke", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    labels = [p.label for p in SUITES["strategies-smoke"].points]
    assert [r["method"] for r in results["rows"]] == labels
    fedavg, ffa_dp = results["rows"]
    assert fedavg["client_epsilon"] is None and ffa_dp["client_epsilon"] > 0
    assert 0 < ffa_dp["bytes_up_per_client_round"] < fedavg["bytes_up_per_client_round"]  # FFA sends only B
    report = (out / "report.md").read_text()
    assert all(label in report for label in labels) and "Baselines" in report
    summaries = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    assert len(summaries) == 2
    capsys.readouterr()
    assert main(["benchmark", "--suite", "strategies-smoke", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("(done before, kept)") == 2
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")} == summaries


def test_unknown_suite_is_refused(capsys):
    assert main(["benchmark", "--suite", "nope", "--out", "x"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
