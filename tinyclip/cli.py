"""The ``tinyclip`` command line: the sub-commands' arguments here, their handlers next to the code they run.

Parsing imports nothing heavy (no torch, no open_clip), so ``tinyclip --help`` and every ``tinyclip CMD --help``
answer at once; a handler, named ``"module:function"``, is imported only when its command runs and returns the
exit code. A :class:`~tinyclip.errors.TinyCLIPError` becomes one ``error: ...`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import TinyCLIPError

DATA_PROFILES = ("smoke", "mini")            # built here; paper reads the user's shards
EVAL_SET_NAMES = ("fmnist", "tux", "openmoji")   # tinyclip.data.profiles.EVAL_SETS (checked by a test)


def _command(subparsers, name: str, handler: str, help_text: str, **kwargs) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, **kwargs)
    parser.set_defaults(handler=handler)
    return parser


def _models(sub) -> None:
    p = _command(sub, "models", "tinyclip.zoo:_cmd_models", "the model zoo: parameters, MACs and published references")
    p.add_argument("names", nargs="*", help="models to describe (default: the whole zoo)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per model")


def _inherit(sub) -> None:
    p = _command(sub, "inherit", "tinyclip.inherit.manual:_cli_inherit",
                 "make a student by manual weight inheritance (paper §3.2) and export it as local-dir",
                 description="Build STUDENT from TEACHER's weights by manual inheritance (paper §3.2) and write an "
                             "open_clip local-dir folder (load it with open_clip.create_model('local-dir:DIR')). "
                             "The last line of output is a JSON summary.")
    p.add_argument("--teacher", required=True, help="registered open_clip config name or local-dir:PATH")
    p.add_argument("--teacher-weights", metavar="FILE",
                   help=".pt/.safetensors state dict for a named teacher (open_clip format); "
                        "without it the teacher is randomly initialised")
    p.add_argument("--student", required=True, help="registered open_clip config name or local-dir:PATH")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (replaced if it is an export)")
    p.add_argument("--depth-rule", default="even", help="even (paper, default) or interval_front (official code)")
    p.add_argument("--width-rule", default="leading", help="leading (paper and official, default) or l2norm")


def _report(sub) -> None:
    p = _command(sub, "report", "tinyclip.report:_cmd_report",
                 "execute a notebook (papermill) and render its HTML report")
    p.add_argument("name", help="notebook name under notebooks/ (without .ipynb)")
    p.add_argument("--profile", default="mini", choices=["smoke", "mini", "paper"])
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="notebook parameter (YAML-parsed value); repeatable")
    p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")


def _inventory(sub) -> None:
    p = _command(sub, "inventory", "tinyclip.studies.inventory:_cmd_inventory",
                 "every run the notebooks read, once: finished, unfinished, and the projected reproduce-all time")
    p.add_argument("--profile", default="mini", choices=["smoke", "mini", "paper"])
    p.add_argument("--parallel", type=int, default=2, help="jobs side by side in the projection (default 2)")


def _data(sub) -> None:
    data = sub.add_parser("data", help="build and describe the profiles' data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default="mini", choices=DATA_PROFILES)
    common.add_argument("--data-root", default=None, help="folder holding <profile>/ and cache/ "
                                                          "(default: $TINYCLIP_DATA_ROOT or data/ in the checkout)")
    common.add_argument("--out", default=None, help="the data set folder (default: <data root>/<profile>)")
    b = _command(data_sub, "build", "tinyclip.data.cli:_build", "fetch, render and write a profile's data set",
                 parents=[common])
    b.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    b.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    c = _command(data_sub, "card", "tinyclip.data.cli:_card",
                 "print the data card (counts, licences, skips, overlap, content digest)", parents=[common])
    c.add_argument("--json", action="store_true", help="the full card as JSON")


def _eval(sub) -> None:
    p = _command(sub, "eval", "tinyclip.eval:_cli_eval",
                 "zero-shot classification and retrieval metrics (clip-benchmark)")
    p.add_argument("--model", required=True, help="an open_clip model name or local-dir:DIR")
    p.add_argument("--weights", default=None, help="a checkpoint file (.pt/.safetensors) for --model")
    p.add_argument("--profile", default="mini", choices=DATA_PROFILES)
    p.add_argument("--data-root", default=None, help="folder holding <profile>/ (default: data/)")
    p.add_argument("--eval-root", default=None, help="the evaluation sets folder (default: <data root>/<profile>/eval)")
    p.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(EVAL_SET_NAMES)}")
    p.add_argument("--imagenet", default=None, help="ImageNet val (clip-benchmark wds or torchvision folder)")
    p.add_argument("--max-items", type=int, default=None, help="evaluate the first N items of each set")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--format", default="tinyclip", choices=["tinyclip", "clip_benchmark"],
                   help="tinyclip: one JSON report (printed, and written to --out); clip_benchmark: one "
                        "clip_benchmark result file per data set in the folder --out (required), which "
                        "`clip_benchmark build` and its users' tooling read")
    p.add_argument("--out", default=None, help="tinyclip format: also write the report here; clip_benchmark: "
                                               "the folder for the result files")


def _training(sub) -> None:
    for name, handler, help_text in (
            ("train-teacher", "tinyclip.commands:cli_train_teacher",
             "train a CLIP teacher from scratch (contrastive loss) from a recipe"),
            ("distill", "tinyclip.commands:cli_distill", "multi-stage distillation (paper §3.3) from a recipe")):
        p = _command(sub, name, handler, help_text, description=help_text)
        p.add_argument("--recipe", action="append", required=True, metavar="FILE",
                       help="recipe YAML (repeat to run several, see --parallel)")
        p.add_argument("--seed", action="append", type=int, metavar="N",
                       help="override the recipe's seed (repeat to run several seeds)")
        p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
        p.add_argument("--force", action="store_true", help="retrain finished stages instead of reusing them")
        p.add_argument("--stage", metavar="NAME", help="stop after this stage (and --force only it)")
        p.add_argument("--parallel", type=int, default=1, metavar="N",
                       help="run the recipe × seed jobs in N processes at a time")
        p.add_argument("--threads", type=int, metavar="N", help="torch threads per process")
    p = _command(sub, "smoke", "tinyclip.commands:cli_smoke",
                 "smoke profile end to end: data, teacher, 2-stage chain, eval; prints JSON (teacher, students, "
                 "wall_s) as its last line")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads")
    p.add_argument("--auto", action="store_true", help="the automatic-inheritance chain (recipes/smoke_auto.yaml), "
                   "then reload and re-evaluate its pruned student; adds target_sparsity, achieved_sparsity and "
                   "pruned_vs_masked_max_abs_diff of the final stage")


def _table2(sub) -> None:
    p = _command(sub, "reproduce-table2", "tinyclip.studies.table2:_cmd_reproduce",
                 "data, the Table 2 recipes, and reports/table2.html")
    p.add_argument("--profile", default="mini", choices=["smoke", "mini", "paper"])
    p.add_argument("--parallel", type=int, default=None,
                   help="runs trained side by side (default: 2, cores / 2 torch threads each)")
    p.add_argument("--no-train", action="store_true", help="only render what has finished")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N",
                   help="student seeds of every Table 2 recipe (default: 0 1 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyclip", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_models, _inherit, _report, _inventory, _data, _eval, _training, _table2):
        add(subparsers)
    return parser


def handler_of(args: argparse.Namespace):
    """The function that runs a parsed command (its module imported now, not at parse time)."""
    module, _, name = args.handler.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import tinyclip  # noqa: F401  (registers the model configs with open_clip when it is imported)

        return int(handler_of(args)(args) or 0)
    except TinyCLIPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
