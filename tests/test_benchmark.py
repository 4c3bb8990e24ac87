"""The benchmark harness: the smoke suite runs end to end, writes report.md, results
and plots, and a restart keeps finished points.
"""

import json

from fedrec.cli import main
from fedrec.simulation.benchmark import SUITES


def test_smoke_suite_writes_report_and_plots_and_restart_skips_finished_points(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--suite", "smoke", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    labels = [p.label for p in SUITES["smoke"].points]
    rows = {r["method"]: r for r in results["rows"]}
    assert list(rows) == labels
    fedavg, fedavg_plain, ffa, ffa_plain = (rows[label] for label in labels)
    assert fedavg["epsilon"] > 0 and fedavg_plain["epsilon"] is None
    assert ffa["client_epsilon"] > 0 and fedavg["client_epsilon"] is None
    assert 0 < ffa_plain["bytes_up_per_client_round"] < 0.6 * fedavg_plain["bytes_up_per_client_round"]  # only B
    assert all(0.0 <= r["hr@10"] <= 1.0 and r["ranking_users"] == 4 for r in rows.values())
    assert set(fedavg["ranking_baselines"]) == {"most-popular", "bpr-mf", "federated-mf", "random"}
    report = (out / "report.md").read_text()
    assert all(label in report for label in labels) and "ranking baseline" in report
    assert {p.name for p in (out / "plots").iterdir()} == {
        "accuracy_vs_epsilon.png",
        "accuracy_vs_round.png",
        "bytes_per_round.png",
    }
    summaries = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    assert len(summaries) == len(labels)
    capsys.readouterr()
    assert main(["benchmark", "--suite", "smoke", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("(done before, kept)") == len(labels)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")} == summaries


def test_unknown_suite_is_refused(capsys):
    assert main(["benchmark", "--suite", "nope", "--out", "x"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
