"""``fedrec simulate`` checks its inputs first: every user error is one line on stderr and
exit code 2, before anything is written and before Flower, Ray or a model starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedrec.cli import main

ITEMS = "item,title\n1,A\n2,B\n3,C\n"
GOOD = "user,item,rating,timestamp\n" + "".join(
    f"{u},{i},{4 if i != 3 else 1},{i}\n" for u in (1, 2, 3) for i in (1, 2, 3)
)


def _csv(tmp: Path, interactions: str, items: str = ITEMS) -> list[str]:
    (tmp / "inter.csv").write_text(interactions)
    (tmp / "items.csv").write_text(items)
    return ["--set", f"dataset={tmp / 'inter.csv'}", "--set", f"items-path={tmp / 'items.csv'}"]


def _tables(tmp: Path, rows: int, width: int) -> list[str]:
    np.savez(tmp / "tables.npz", **{"mf.item_embeddings": np.zeros((rows, width), np.float32)})
    hybrid = ["--set", "llm-input=hybrid", "--set", "mf-dim=8"]
    return [*_csv(tmp, GOOD), *hybrid, "--set", f"item-tables={tmp / 'tables.npz'}"]


def _ease_weights(tmp: Path, dislike_weight: float, recency: tuple[float, float] = (4.0, 0.1)) -> list[str]:
    arrays = {"ease.item-weights": np.zeros((3, 3), np.float32), "ease.dislike-weight": np.array([dislike_weight])}
    arrays["ease.recency"] = np.array(recency)
    np.savez(tmp / "weights.npz", **arrays)
    return [*_csv(tmp, GOOD), "--set", "rerank-top=2", "--set", f"item-tables={tmp / 'weights.npz'}"]


def _finished_run(tmp: Path) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "summary.json").write_text("{}\n")
    return []


def _interrupted_run(tmp: Path) -> list[str]:
    (tmp / "out" / "checkpoint").mkdir(parents=True)
    (tmp / "out" / "rounds.jsonl").write_text('{"round": 0}\n')
    return []


BAD_INPUTS: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "unknown config key": (lambda t: ["--set", "bogus=1"], "bogus"),
    "negative learning rate": (lambda t: ["--set", "learning-rate=-1"], "learning-rate"),
    "non-numeric rating": (
        lambda t: _csv(t, GOOD + "4,1,great,7\n"),
        r"inter\.csv line 11: column 'rating' must be a finite number, found 'great'",
    ),
    "infinite timestamp": (lambda t: _csv(t, GOOD + "4,1,4,inf\n"), r"inter\.csv line 11: column 'timestamp'"),
    "empty rating": (lambda t: _csv(t, GOOD + "4,1,,7\n"), r"inter\.csv line 11: empty value in column 'rating'"),
    "duplicate interaction": (lambda t: _csv(t, GOOD + "1,1,2,9\n"), r"inter\.csv line 11: duplicate \(user, item\)"),
    "unknown item": (lambda t: _csv(t, GOOD + "4,9,4,7\n"), r"inter\.csv line 11: item 9 is missing from"),
    "duplicate item id": (lambda t: _csv(t, GOOD, ITEMS + "2,D\n"), r"items\.csv line 5: duplicate item id 2"),
    "missing column": (lambda t: _csv(t, "user,item,rating\n1,1,4\n"), r"missing column\(s\) \['timestamp'\]"),
    "missing items file": (
        lambda t: ["--set", f"dataset={_csv(t, GOOD)[1][8:]}", "--set", f"items-path={t / 'nope.csv'}"],
        r"nope\.csv does not exist",
    ),
    "more clients than users": (lambda t: ["--set", "num-clients=40"], r"40 clients but only 30 users"),
    "results folder holds a finished run": (_finished_run, r"already holds a finished run \(summary\.json\)"),
    "results folder holds an interrupted run": (_interrupted_run, r"holds an interrupted run: continue it with"),
    "item tables missing": (
        lambda t: [*_tables(t, 3, 8)[:-2], "--set", f"item-tables={t / 'gone.npz'}"],
        r"item-tables: .*gone\.npz: not a readable item-tables file",
    ),
    "item tables of another width": (lambda t: _tables(t, 3, 4), r"width 4, but mf-dim is 8"),
    "item tables of another catalog": (lambda t: _tables(t, 5, 8), r"holds 5 items, but the dataset's catalog has 3"),
    "ease weights with a dislike weight above 1": (
        lambda t: _ease_weights(t, 1.5),
        r"item-tables: .*weights\.npz: 'ease\.dislike-weight' must be one value in \[0, 1\], not \[1\.5\]",
    ),
    "ease weights with a negative recency half-life": (
        lambda t: _ease_weights(t, 0.5, (-4.0, 0.1)),
        r"item-tables: .*weights\.npz: 'ease\.recency' must be a half-life >= 0 and a floor in \[0, 1\], not \[-4\.0",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    make, message = BAD_INPUTS[case]
    args = make(tmp_path)
    out = tmp_path / "out"
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert main(["simulate", "--preset", "smoke", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedrec: "), err
    assert re.search(message, err), err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before  # nothing written


def test_check_validates_without_writing_and_resume_of_a_folder_without_a_run_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["simulate", "--preset", "smoke", *_csv(tmp_path, GOOD), "--check", "--out", str(out)]) == 0
    assert f"3 users on 3 clients; results folder {out}" in capsys.readouterr().out
    assert not out.exists()
    assert main(["simulate", "--resume", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere/config.toml does not exist" in err


def test_a_client_state_dir_holding_ledgers_is_warned_about(tmp_path, capsys):
    state = tmp_path / "old-run" / "nodes"
    (state / "partition-0").mkdir(parents=True)
    args = ["simulate", "--preset", "smoke", *_csv(tmp_path, GOOD), "--check", "--out", str(tmp_path / "out")]
    args += ["--set", f"client-state-dir={state}"]
    assert main(args) == 0 and "warning" not in capsys.readouterr().err  # no ledger there yet
    (state / "partition-0" / "privacy-ledger.json").write_text("{}")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.startswith("fedrec: warning: client-state-dir") and "holds 1 nodes' privacy ledgers" in err, err


@pytest.mark.parametrize(
    ("settings", "warning"),
    [
        (["secure-aggregation=true", "num-shares=3", "reconstruction-threshold=3"], "tolerates no drop-out"),
        (["client-sampling=poisson", "fraction-train=0.2"], r"expects 0\.60 clients per round .* 51% of the rounds"),
    ],
)
def test_fragile_settings_are_warned_about_at_start_up(tmp_path, capsys, settings, warning):
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    out = tmp_path / "out"
    assert main(["simulate", "--preset", "smoke", *_csv(tmp_path, GOOD), *overrides, "--check", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedrec: warning: ") and re.search(warning, err), err
