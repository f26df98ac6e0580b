"""The inventory of every run the notebooks read: shared runs counted once, finished runs measured, unfinished
ones projected from the runs most like them, and the index paragraph built from it."""
from __future__ import annotations

import json

import pytest

from tinyclip.report import NOTEBOOKS
from tinyclip.studies import inventory as inv


def test_seconds_per_step_prefers_the_closest_finished_run():
    done = [{"kind": "manual", "student": "S50", "batch": 8, "curve": False, "steps": 10, "train_s": 20.0},
            {"kind": "manual", "student": "S25", "batch": 8, "curve": False, "steps": 10, "train_s": 10.0},
            {"kind": "auto", "student": "T", "batch": 8, "curve": False, "steps": 10, "train_s": 90.0}]
    same = {"kind": "manual", "student": "S50", "batch": 8, "curve": False}
    assert inv._seconds_per_step(done, same) == 2.0
    # no S75 has finished: the median of the manual runs of that batch
    assert inv._seconds_per_step(done, {**same, "student": "S75"}) == 1.5
    # nothing of that kind and batch: the median of all finished runs
    assert inv._seconds_per_step(done, {**same, "kind": "other", "batch": 4}) == 2.0
    assert inv._seconds_per_step([], same) is None


def test_smoke_inventory_counts_shared_runs_once_and_projects_nothing_without_finished_runs(runs):
    record = inv.inventory("smoke", seeds=(0,))
    assert set(record["notebook_runs"]) == set(NOTEBOOKS)
    # the teacher and the Table 2 chains are read by several notebooks but are one run each
    assert record["runs"] < sum(record["notebook_runs"].values())
    assert record["finished"] == 0 and record["unfinished"] + record["finished"] == record["runs"]
    assert record["train_min_measured"] == 0 and record["train_min_projected"] == 0
    assert record["unprojected"] == record["unfinished"]
    assert set(record["notebook_finished"]) == set(NOTEBOOKS) and not any(record["notebook_finished"].values())


def test_index_paragraph_states_projection_and_its_gaps(tmp_path, monkeypatch):
    from tinyclip import site

    path = tmp_path / "inventory.json"
    monkeypatch.setattr(site, "inventory_path", lambda profile: path)
    assert site._inventory_html("mini") == ""
    path.write_text(json.dumps({"runs": 70, "finished": 31, "unfinished": 39, "unprojected": 2, "unresolved": [],
                                "train_min_measured": 378.1, "train_min_projected": 651.0, "seeds": [0, 1, 2],
                                "setup_min": {"data build": 10.7}, "parallel": 2, "reproduce_all_h": 9.0,
                                "notebook_runs": {"table2": 16}, "notebook_finished": {"table2": 12}}))
    text = site._inventory_html("mini")
    assert "70 distinct runs" in text and "9.0 h" in text and "data build 11 min" in text
    assert "lower bound" in text and "2 unfinished runs" in text and "12 of 16" in text


def test_inventory_command_is_registered(capsys):
    from tinyclip.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["inventory", "--help"])
    assert exit_.value.code == 0 and "--parallel" in capsys.readouterr().out
