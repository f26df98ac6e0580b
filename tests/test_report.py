"""Reports: papermill execution + HTML rendering without input cells (the Table 2 notebook, smoke profile)."""
import pytest

from tinyclip import report, table2
from tinyclip.errors import TinyCLIPError


def test_table2_renders_without_code_and_with_provenance():
    out = report.render("table2", profile="smoke", parameters={"measure_throughput": False})
    assert out == report.reports_dir("smoke") / "table2.html"
    page = out.read_text()
    assert "Published reference" in page and "Reproduced exactly at paper scale" in page
    assert "TinyCLIP-auto-ViT-45M-32-Text-18M" in page
    assert "import pandas" not in page          # input cells are excluded
    assert "Provenance." in page and "git commit" in page
    assert "table2.html" in (report.project_root() / "reports" / "index.html").read_text()


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
