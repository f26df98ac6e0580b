"""Every claims notebook executes through papermill under the smoke profile (scratch data, runs and reports roots)
and leaves a report, its verdicts in claims.json, and an index that lists it. Runs the notebooks share (the smoke
teacher, the Table 2 chains that the inheritance ablation reuses) are trained once for the module."""
from __future__ import annotations

import json
import time

import pytest

from tinyclip import report
from tinyclip.studies.claims import CLAIMS

pytestmark = pytest.mark.slow

SMOKE = {"seeds": [0, 1], "budget_scale": 0.1}   # two seeds: a code-path check, not a verdict
VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    from tinyclip.data import build

    base = tmp_path_factory.mktemp("nb")
    with pytest.MonkeyPatch.context() as mp:
        for name, sub in (("TINYCLIP_DATA_ROOT", "data"), ("TINYCLIP_RUNS_ROOT", "runs"),
                          ("TINYCLIP_REPORTS_ROOT", "reports")):
            mp.setenv(name, str(base / sub))
        mp.setenv("TINYCLIP_PROGRESS", "0")
        build("smoke")
        yield base


@pytest.mark.parametrize("name, params, claim_ids", [
    ("ablation_affinity", SMOKE, ["C1"]),
    ("ablation_inheritance", {**SMOKE, "mask_fractions": [0.25, 0.4]}, ["C2", "C3"]),
    ("multistage", SMOKE, ["C6"]),
    # 2 x 400 x 0.025 = 20 steps per run, a point every 5: the curve code path, not a measurement
    ("training_cost", {**SMOKE, "budget_scale": 0.025, "points": 4}, ["C7"]),
    ("table2", {"seeds": [0, 1], "measure_throughput": False}, ["C8", "C9"]),
    ("redundancy", {"seeds": [0, 1], "random_seeds": [0, 1], "cka_items": 128}, ["C4"]),
    ("teacher_choice", SMOKE, ["C5"]),
])
def test_notebook_renders_with_verdicts(roots, name, params, claim_ids):
    started = time.time()
    if name == "table2":  # its training is done by reproduce-table2, as `make reproduce-table2` does
        from tinyclip.studies import table2

        table2.train_students("smoke", params["seeds"])
    out = report.render(name, "smoke", params)
    elapsed = time.time() - started
    html = out.read_text()
    assert out == roots / "reports" / "smoke" / f"{name}.html"
    assert "jp-RenderedImage" in html or "<img" in html, "the report has no figure"
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html, "stderr leaked into the report"
    claims = {c["id"]: c for c in json.loads((roots / "reports" / "smoke" / "claims.json").read_text())}
    assert list(claims) == list(CLAIMS)  # every claim listed, in order
    for claim_id in claim_ids:
        entry = claims[claim_id]
        assert entry["verdict"] in VERDICTS and entry["notebook"] == name and entry["profile"] == "smoke"
        if claim_id == "C4":  # untrained removals on one teacher: items are the only resampled unit
            assert entry["n_seeds"] == 1
        elif claim_id != "C9":
            assert entry["n_seeds"] == len(params["seeds"])
            assert entry["ci_low"] <= entry["effect"] <= entry["ci_high"]
    manifest = json.loads((roots / "reports" / "smoke" / "manifest.json").read_text())
    assert manifest[name]["status"] == "ok" and manifest[name]["profile"] == "smoke"
    index = (roots / "reports" / "smoke" / "index.html").read_text()
    assert f"href='{name}.html'" in index
    print(f"{name}: {elapsed:.0f} s under the smoke profile")  # the budget (3 min) is read, not asserted


def test_failing_notebook_is_marked_failed_and_names_its_cell(roots, monkeypatch):
    from tinyclip.errors import TinyCLIPError

    # a parameter of the wrong type: the study cell raises, papermill stops there
    with pytest.raises(TinyCLIPError, match=r"notebook ablation_inheritance failed in cell \d+: TypeError"):
        report.render("ablation_inheritance", "smoke", {**SMOKE, "mask_fractions": ["x"], "train": False})
    manifest = json.loads((roots / "reports" / "smoke" / "manifest.json").read_text())
    assert manifest["ablation_inheritance"]["status"] == "failed"
    assert "failed" in (roots / "reports" / "smoke" / "index.html").read_text()
