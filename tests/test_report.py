"""Reports: papermill execution + HTML rendering without input cells (the Table 2 notebook, smoke profile)."""
from pathlib import Path

import pytest

from tinyclip import report
from tinyclip.studies import table2
from tinyclip.errors import TinyCLIPError


def test_table2_renders_without_code_and_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYCLIP_REPORTS_ROOT", str(tmp_path / "reports"))
    out = report.render("table2", profile="smoke", parameters={"measure_throughput": False})
    assert out == report.reports_dir("smoke") / "table2.html"
    page = out.read_text()
    assert "Published reference" in page and "Reproduced exactly at paper scale" in page
    assert "TinyCLIP-auto-ViT-45M-32-Text-18M" in page
    assert "import pandas" not in page          # input cells are excluded
    assert "Provenance." in page and "git commit" in page
    index = (tmp_path / "reports" / "smoke" / "index.html").read_text()  # each profile's site has its own index
    assert "href='table2.html'" in index and "Provenance" not in index


def test_stale_temps_of_one_page_go_and_nothing_else(tmp_path, monkeypatch):
    """What a render does first: the temporary files a render killed mid-write left beside its own page go."""
    from tinyclip.runs import remove_stale_temps

    monkeypatch.setenv("TINYCLIP_REPORTS_ROOT", str(tmp_path / "reports"))
    base = report.reports_dir("smoke")
    base.mkdir(parents=True)
    own, other = base / ".table2.html.abc123.tmp", base / ".redundancy.html.def456.tmp"
    page = base / "table2.html"
    for path in (own, other, page):
        path.write_text("x")
    remove_stale_temps(page)
    assert not own.exists() and other.exists() and page.exists()


def test_unknown_notebook_is_a_clear_error():
    with pytest.raises(TinyCLIPError, match="no notebook"):
        report.render("no-such-notebook", profile="smoke")


def test_paper_scale_rows_match_published_macs_and_sizes():
    rows = {r["model"]: r for r in table2.paper_scale_rows(measure_throughput=False)}
    for name, row in rows.items():
        if row["published_macs_g"] is not None:
            assert abs(row["macs_delta_pct"]) < 5, name
    # the auto chain's shapes sum to the paper's 94 / 63 / 32 M within 3 %
    for name, total in [("TinyCLIP-auto-ViT-63M-32-Text-31M", 94), ("TinyCLIP-auto-ViT-45M-32-Text-18M", 63),
                        ("TinyCLIP-auto-ViT-22M-32-Text-10M", 32)]:
        assert abs(rows[name]["params_total_m"] - total) <= 0.03 * total
    assert rows["TinyCLIP-ViT-40M-32-Text-19M"]["macs_ratio_vs_teacher"] > 2


def test_mini_rows_reads_finished_runs_by_recipe_hash(tmp_path, monkeypatch):
    from tinyclip.recipe import load_recipe, resolve_device, resolve_recipe, teacher_recipe
    from tinyclip.runs import Run

    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path))
    assert table2.mini_rows("smoke") is None  # nothing trained yet
    recipe = load_recipe(table2.RECIPES_DIR / "smoke_manual.yaml")
    device = resolve_device(recipe.device)
    parts = [teacher_recipe(recipe), recipe]
    sizes = iter([400_000, 300_000, 200_000])
    for part in parts:
        for config, stage in zip(resolve_recipe(part, device=device, world_size=1), part.stages):
            run = Run(config)
            run.dir.mkdir(parents=True)
            if stage.name == "S50":
                assert table2.mini_rows("smoke") is None  # the chain is not complete yet
            total = next(sizes)
            run.finish({"run": run.hash, "student": stage.student, "samples": 100,
                        "params": {"vision": total // 2, "text": total // 2, "total": total},
                        "metrics": {"fmnist": {"acc1": 0.5}, "tux": {"text_retrieval_recall@1": 0.25,
                                                                     "image_retrieval_recall@1": 0.125}}})
    rows = table2.mini_rows("smoke")
    assert [r["row"] for r in rows] == ["teacher", "manual: S75", "manual: S50"]
    assert rows[2]["size_vs_teacher"] == 0.5 and rows[1]["fmnist_prompted_acc1"] == 50.0
    assert rows[1]["tux_i2t_r1"] == 25.0 and rows[1]["tux_t2i_r1"] == 12.5


def test_reproduce_trains_every_table2_recipe_in_parallel_then_renders(monkeypatch, tmp_path):
    """`make reproduce-table2` wiring: data build, the teacher alone, then the profile's Table 2 recipes on every
    seed side by side (resuming interrupted runs), then the report; a failed recipe is a one-line error and nothing
    is rendered."""
    import importlib

    from tinyclip import jobs

    build_module = importlib.import_module("tinyclip.data.build")  # the module (tinyclip.data.build is the function)
    monkeypatch.setenv("TINYCLIP_RUNS_ROOT", str(tmp_path / "runs"))
    calls = {}
    monkeypatch.setattr(build_module, "build", lambda profile: calls.setdefault("build", profile))

    def fake_run_many(recipes, seeds=(None,), *, parallel, resume, threads, on_done=None):
        if len(recipes) == 1 and "teacher" in str(recipes[0]):
            calls["teacher"] = (Path(recipes[0]).name, parallel, threads)
            return [{"recipe": str(recipes[0]), "seed": None, "returncode": 0, "error": None}]
        calls["run_many"] = ([Path(p).name for p in recipes], list(seeds), parallel, resume, threads)
        results = [{"recipe": str(p), "seed": s, "returncode": 0, "error": None} for p in recipes for s in seeds]
        for r in results:
            on_done(r)
        return results

    monkeypatch.setattr(jobs, "run_many", fake_run_many)
    monkeypatch.setattr(report, "render", lambda name, profile, params=None: tmp_path / f"{name}-{profile}.html")
    assert table2.reproduce("smoke", seeds=(0, 1, 2)) == tmp_path / "table2-smoke.html"
    assert calls["build"] == "smoke"
    names, seeds, parallel, resume, threads = calls["run_many"]
    assert names == ["smoke_manual.yaml", "smoke_scratch.yaml", "smoke_auto.yaml"] and seeds == [0, 1, 2]
    assert parallel == 2 and resume and threads >= 1
    assert calls["teacher"][0] == "smoke_teacher.yaml" and calls["teacher"][1] == 1  # first, alone

    monkeypatch.setattr(jobs, "run_many", lambda recipes, seeds=(None,), **kw: [
        {"recipe": str(recipes[0]), "seed": seeds[0], "returncode": 0 if "teacher" in str(recipes[0]) else 2,
         "error": "error: boom"}])
    with pytest.raises(TinyCLIPError, match="smoke_manual.yaml .seed 0. failed: error: boom"):
        table2.reproduce("smoke")
    calls.clear()
    table2.reproduce("paper")  # nothing to train: renders parts (a) and (b)
    assert "run_many" not in calls and "build" not in calls


def test_mini_findings_state_the_half_size_results():
    rows = [{"row": "teacher", "params_total_m": 13.0, "size_vs_teacher": 1.0, "samples": 100, "fmnist_prompted_acc1": 80.0},
            {"row": "manual: S50", "params_total_m": 7.0, "size_vs_teacher": 0.54, "samples": 40, "fmnist_prompted_acc1": 72.0},
            {"row": "scratch: S50-scratch", "params_total_m": 7.0, "size_vs_teacher": 0.54, "samples": 80,
             "fmnist_prompted_acc1": 60.0},
            {"row": "auto: A50", "params_total_m": 6.5, "size_vs_teacher": 0.5, "samples": 40, "fmnist_prompted_acc1": 74.0},
            {"row": "manual: S75", "params_total_m": 9.9, "size_vs_teacher": 0.76, "samples": 40, "fmnist_prompted_acc1": 79.0}]
    text = "\n".join(table2.mini_findings(rows))
    assert "manual: S50 (7.00 M, 54 % of the teacher) keeps 90.0 %" in text and "S75" not in text
    assert "(C2): +12.0 points" in text and "2x its stage's pairs" in text
    assert "(C3): +2.0 points for the auto student (6.50 M vs 7.00 M)" in text
    assert table2.mini_findings(rows[1:]) == []  # no teacher row: nothing to compare with
