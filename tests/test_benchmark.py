"""The benchmark harness: the smoke suite runs end to end (a retriever, a reranker that
reads its tables, a text LLM), writes report.md, results and plots, and a restart keeps
finished points and resumes an interrupted one.
"""

import json

import pytest

from fedrec.bench.report import paired_table
from fedrec.bench.run import eta_note, point_overrides
from fedrec.bench.suites import SUITES, Point, Suite
from fedrec.cli import main
from fedrec.config import resolve_config


def test_smoke_suite_writes_report_and_plots_and_restart_skips_finished_points(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--suite", "smoke", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    labels = [p.label for p in SUITES["smoke"].points]
    rows = {r["method"]: r for r in results["rows"]}
    assert list(rows) == labels
    retriever, fedavg, ffa = (rows[label] for label in labels)
    assert retriever["recommender"] == "mf" and retriever["adapter_to_full_model"] is None
    assert fedavg["epsilon"] > 0 and ffa["epsilon"] is None  # record-level DP on one LLM point only
    assert ffa["client_epsilon"] > 0 and fedavg["client_epsilon"] is None  # client-level DP on the other
    assert 0 < ffa["bytes_up_per_client_round"] < 0.6 * fedavg["bytes_up_per_client_round"]  # only B travels
    assert all(0.0 <= r["hr@10"] <= 1.0 and r["ranking_users"] == 4 for r in rows.values())
    assert set(fedavg["ranking_baselines"]) == {"most-popular", "bpr-mf", "federated-mf", "random"}
    # the reranker read the retriever point's tables: its composed epsilon adds that run's
    assert fedavg["composed_epsilon"] == pytest.approx(fedavg["epsilon"] + retriever["epsilon"])
    assert fedavg["retriever_hr@10"] is not None and "ndcg@10_diff" in fedavg["minus_retriever"]
    assert ffa["retriever_hr@10"] is None and ffa["composed_epsilon"] is None
    report = (out / "report.md").read_text()
    assert all(label in report for label in labels) and "ranking baseline" in report
    assert report.count(fedavg["method"]) == 2  # in the main table and the rerank table
    assert f"Run time: {sum(r['seconds'] for r in rows.values()) / 60:.1f} min" in report
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
    interrupted = out / ffa["folder"] / "summary.json"  # as if killed after its last checkpoint, before the summary
    finished = json.loads(interrupted.read_text())
    interrupted.unlink()
    assert main(["benchmark", "--suite", "smoke", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("(resumed)") == 1
    assert json.loads(interrupted.read_text())["metrics"] == finished["metrics"]


def test_unknown_suite_is_refused(capsys):
    assert main(["benchmark", "--suite", "nope", "--out", "x"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


def test_every_suite_point_resolves_to_a_valid_config(tmp_path):
    for name, suite in SUITES.items():
        labels = [p.label for p in suite.points]
        assert len(set(labels)) == len(labels), name
        for point in suite.points:
            cfg = resolve_config(suite.preset, overrides=point_overrides(suite, point, tmp_path))
            if cfg.data.partitioner == "user":
                assert cfg.federation.num_clients == cfg.data.max_users, point.label  # one client per user
            assert cfg.evaluation.eval_prefix_store == str(tmp_path / "prefix-store"), point.label
            if point.item_tables_from:
                source = next(p for p in suite.points if p.label == point.item_tables_from)
                recommender = source.overrides["recommender"]
                assert recommender in ("mf", "ease"), point.label
                file = {"mf": "item-tables.npz", "ease": "item-weights.npz"}[recommender]  # what that run saves
                tables = cfg.collaborative.item_tables
                assert tables.startswith(str(tmp_path)) and tables.endswith(f"/{file}"), point.label


def test_the_rerank_headline_is_part_of_the_ablations_so_one_out_folder_serves_both(tmp_path):
    headline, ablations = SUITES["rerank"], SUITES["rerank-ablations"]
    assert headline.preset == ablations.preset and headline.base == ablations.base
    points = {p.label: p for p in ablations.points}
    assert len(points) > len(headline.points)
    for point in headline.points:  # same label, same run: a shared --out keeps the finished point
        assert points[point.label] == point
        assert point_overrides(headline, point, tmp_path) == point_overrides(ablations, point, tmp_path)


def test_a_point_may_read_only_an_earlier_points_item_tables():
    retriever = Point("retriever", {"recommender": "mf"})
    reranker = Point("reranker", {"rerank-top": 5}, item_tables_from="retriever")
    Suite("smoke", {}, (retriever, reranker), "fine")
    with pytest.raises(ValueError, match="'reranker' reads the item tables of 'retriever': no earlier point"):
        Suite("smoke", {}, (reranker, retriever), "backwards")


def test_eta_note_extrapolates_the_mean_point_time():
    assert eta_note([], 3) == ""
    assert eta_note([60.0, 180.0], 3) == " (4.0 min so far, about 6 min left)"


def test_paired_table_compares_every_two_rerankers_on_the_same_cases():
    def reranker(method, ranks):
        return {"method": method, "retriever_hr@10": 0.5, "ranks": ranks}

    a, b = reranker("text", [0, 15, 3, 40]), reranker("hybrid", [0, 2, 3, 9])
    plain = {"method": "mf", "retriever_hr@10": None, "ranks": [0, 0, 0, 0]}  # not a reranker
    table = paired_table([a, plain, b, reranker("other cases", [1, 2])])
    assert table.count("\n") == 2 and "| hybrid − text | +0." in table  # one pair: the third row differs in cases
    assert "| +0.500 ± 0.289 |" in table  # HR@10: ranks 2 and 9 now hit, 15 and 40 did not
    assert paired_table([a]) == ""
