"""The command line: parsing is light (no torch), handlers resolve, the clip_benchmark result format."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tinyclip import cli

COMMANDS = [[], ["models"], ["inherit"], ["report"], ["data"], ["data", "build"], ["data", "card"], ["eval"],
            ["train-teacher"], ["distill"], ["smoke"], ["reproduce-table2"]]


def test_help_of_every_command_imports_neither_torch_nor_open_clip():
    """What makes ``--help`` answer at once (measured: 0.1-0.3 s; 6-9 s when torch was imported first)."""
    code = ("import sys\nfrom tinyclip.cli import main\n"
            f"for argv in {COMMANDS!r}:\n"
            "    try:\n        main(argv + ['--help'])\n    except SystemExit as exc:\n        assert exc.code == 0\n"
            "heavy = [m for m in ('torch', 'open_clip', 'numpy') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint('light')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("light")


def test_every_handler_resolves_and_the_constants_match_the_library():
    from tinyclip.data.profiles import EVAL_SETS, PROFILES

    parser = cli.build_parser()
    handlers = set()
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
            for p in ([q for a in nested for q in a.choices.values()] or [sub]):
                handlers.add(p.get_default("handler"))
    assert len(handlers) == 11
    for handler in handlers:
        args = type("Args", (), {"handler": handler})()
        assert callable(cli.handler_of(args)), handler
    assert cli.EVAL_SET_NAMES == tuple(EVAL_SETS)
    assert set(cli.DATA_PROFILES) <= set(PROFILES)


def test_importing_tinyclip_registers_the_configs_when_open_clip_comes():
    code = ("import importlib.util, sys\nimport tinyclip\nassert 'open_clip' not in sys.modules\n"
            "importlib.util.find_spec('open_clip')  # an availability check runs nothing\n"
            "import open_clip\nassert open_clip.get_model_config('TinyCLIP-smoke-teacher') is not None\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_eval_writes_clip_benchmark_result_files(env, tmp_path, capsys):
    pytest.importorskip("clip_benchmark")
    from clip_benchmark.cli import main_build

    out = tmp_path / "cb"
    code = cli.main(["eval", "--model", "TinyCLIP-smoke-S50", "--profile", "smoke", "--data-root", str(env),
                     "--tasks", "fmnist,tux", "--max-items", "16", "--batch-size", "16",
                     "--format", "clip_benchmark", "--out", str(out)])
    assert code == 0
    files = sorted(out.glob("*.json"))
    assert [f.name for f in files] == ["wds_fmnist_random-init_TinyCLIP-smoke-S50_en_zeroshot_classification.json",
                                       "wds_tux_random-init_TinyCLIP-smoke-S50_en_zeroshot_retrieval.json"]
    fmnist = json.loads(files[0].read_text())
    assert set(fmnist) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert fmnist["dataset"] == "wds/fmnist" and fmnist["task"] == "zeroshot_classification"
    assert set(fmnist["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert 0.0 <= fmnist["metrics"]["acc1"] <= 1.0
    tux = json.loads(files[1].read_text())
    assert "image_retrieval_recall@1" in tux["metrics"]
    # clip_benchmark's own `build` reads them into its benchmark table
    table = tmp_path / "benchmark.csv"
    main_build(type("Args", (), {"files": [str(out)], "output": str(table)})())
    rows = list(csv.DictReader(table.open()))
    assert sorted(r["dataset"] for r in rows) == ["wds/fmnist", "wds/tux"]
    assert {r["model_fullname"] for r in rows} == {"TinyCLIP-smoke-S50 random-init"}


def test_clip_benchmark_format_needs_an_output_folder(env, capsys):
    assert cli.main(["eval", "--model", "TinyCLIP-smoke-S50", "--profile", "smoke", "--data-root", str(env),
                     "--format", "clip_benchmark"]) == 2
    assert "give the folder as --out" in capsys.readouterr().err
