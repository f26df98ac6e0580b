"""The recipe schema: which keys each recipe mapping may hold, their types and ranges, and YAML reading.

:mod:`tinyclip.recipe` parses a recipe; every value passes through one of the checks here first, so a misspelt
nested key (``logit_scale: {mode: fixed, vlaue: 50}``), a string where a number or a boolean belongs, or a value
out of range is a one-line :class:`TinyCLIPError` naming the key and what to write instead, before any work
and before any file is written.
"""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

from .errors import TinyCLIPError

DATA_KEYS = ("profile", "root", "weights", "augment", "fixed_views", "loader", "workers")
EVAL_KEYS = ("tasks", "every", "batch_size", "imagenet", "max_items")
INHERIT_KEYS = ("depth_rule", "width_rule")
LOGIT_KEYS = {"fixed": ("mode", "value"), "learned": ("mode", "max")}
LOADERS = ("auto", "memory", "stream")


def fail(where: str, message: str) -> TinyCLIPError:
    return TinyCLIPError(f"{where}: {message}")


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error names the file, line and column and the problem, in one line."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise TinyCLIPError(f"recipe {path} is not valid YAML at {where}: {problem}; fix the syntax there") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TinyCLIPError(f"recipe {path} is not valid YAML ({' '.join(str(exc).split())[:160]})") from None


def check_keys(raw: Any, allowed: Iterable[str], where: str, example: str = "") -> dict[str, Any]:
    """``raw`` must be a mapping whose keys are all in ``allowed``; names the unknown ones and the known ones."""
    allowed = list(allowed)
    if not isinstance(raw, dict):
        raise fail(where, f"expected a mapping{' such as ' + example if example else ''}, got {raw!r}")
    unknown = sorted(str(k) for k in set(raw) - set(allowed))
    if unknown:
        raise fail(where, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"known: {', '.join(allowed)}")
    return raw


def number(value: Any, where: str, kind: type = float, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> Any:
    """``value`` as ``kind`` (int or float), finite and inside the given bounds (closed unless ``*_open``).

    YAML 1.1 reads ``1e-4`` (no dot) as a string; it is accepted as the number it obviously is. Booleans are
    refused (YAML turns ``yes`` into True, and True would pass as 1)."""
    if isinstance(value, bool):
        raise fail(where, f"expected a number, got {value!r}")
    try:
        result = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise fail(where, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is int and isinstance(value, float) and value != int(value):
        raise fail(where, f"expected an integer, got {value!r}")
    if kind is int and isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
        raise fail(where, f"expected an integer, got {value!r}")
    if kind is float and not math.isfinite(result):
        raise fail(where, f"expected a finite number, got {value!r}")
    below = low is not None and (result < low or (low_open and result == low))
    above = high is not None and (result > high or (high_open and result == high))
    if below or above:
        if low is not None and high is not None:
            bounds = f"lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            bounds = f"be {'>' if low_open else '≥'} {low:g}"
        else:
            bounds = f"be {'<' if high_open else '≤'} {high:g}"
        raise TinyCLIPError(f"{where} must {bounds}, got {value!r}")
    return result


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, f"expected true or false, got {value!r}")
    return value


def choice(value: Any, choices: Iterable[str], where: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise fail(where, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def optional_str(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise fail(where, f"expected a string or null, got {value!r}")
    return value


def check_data(raw: Any, where: str) -> dict[str, Any]:
    """The ``data:`` mapping (:class:`tinyclip.recipe.DataSpec` fields), typed and range-checked."""
    raw = check_keys(raw, DATA_KEYS, f"{where}: data", "{profile: smoke, augment: false}")
    out = dict(raw)
    out["profile"] = optional_str(raw.get("profile"), f"{where}: data.profile")
    out["root"] = optional_str(raw.get("root"), f"{where}: data.root")
    weights = raw.get("weights")
    if weights is not None:
        if not isinstance(weights, dict) or not weights:
            raise fail(where, f"data.weights: expected a mapping source -> weight, got {weights!r}")
        out["weights"] = {str(k): number(v, f"{where}: data.weights.{k}", low=0.0) for k, v in weights.items()}
        if not any(out["weights"].values()):
            raise fail(where, "data.weights: at least one source needs a weight > 0")
    if "augment" in raw:
        out["augment"] = boolean(raw["augment"], f"{where}: data.augment")
    for key in ("fixed_views", "workers"):
        if key in raw:
            out[key] = number(raw[key], f"{where}: data.{key}", int, low=0)
    if "loader" in raw:
        out["loader"] = choice(raw["loader"], LOADERS, f"{where}: data.loader")
    return out


def check_eval(raw: Any, where: str) -> dict[str, Any]:
    """The ``eval:`` mapping; ``tasks`` must name known evaluation sets (None: every set the build wrote)."""
    from .data.profiles import EVAL_SETS

    raw = check_keys(raw, EVAL_KEYS, f"{where}: eval", "{every: 0, max_items: 500}")
    tasks = raw.get("tasks")
    if tasks is not None:
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise fail(where, f"eval.tasks: expected a list of set names, got {tasks!r}")
        unknown = [t for t in tasks if t not in EVAL_SETS]
        if unknown:
            raise fail(where, f"eval.tasks: unknown evaluation set(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(EVAL_SETS)}")
    max_items = raw.get("max_items")
    return {"tasks": tasks,
            "every": number(raw.get("every", 0), f"{where}: eval.every", int, low=0),
            "batch_size": number(raw.get("batch_size", 256), f"{where}: eval.batch_size", int, low=1),
            "imagenet": optional_str(raw.get("imagenet"), f"{where}: eval.imagenet"),
            "max_items": None if max_items is None else number(max_items, f"{where}: eval.max_items", int, low=1)}


def check_inherit(raw: Any, where: str) -> dict[str, str]:
    from .inherit.manual import DEPTH_RULES, WIDTH_RULES

    raw = check_keys(raw, INHERIT_KEYS, f"{where}: inherit", "{depth_rule: even, width_rule: leading}")
    return {"depth_rule": choice(raw.get("depth_rule", "even"), DEPTH_RULES, f"{where}: inherit.depth_rule"),
            "width_rule": choice(raw.get("width_rule", "leading"), WIDTH_RULES, f"{where}: inherit.width_rule")}


def check_logit_scale(raw: Any, where: str) -> dict[str, Any]:
    """``logit_scale: fixed | learned`` or ``{mode: fixed, value: X}`` / ``{mode: learned, max: X}``."""
    if isinstance(raw, str):
        raw = {"mode": raw}
    if not isinstance(raw, dict):
        raise fail(where, f"logit_scale: expected {{mode: fixed, value: 50}} or {{mode: learned, max: 100}}, "
                          f"got {raw!r}")
    mode = choice(raw.get("mode", "fixed"), tuple(LOGIT_KEYS), f"{where}: logit_scale.mode")
    check_keys(raw, LOGIT_KEYS[mode], f"{where}: logit_scale (mode {mode})")
    if mode == "fixed":  # the exponentiated scale, e.g. the official 50
        return {"mode": "fixed", "value": number(raw.get("value", 50.0), f"{where}: logit_scale.value",
                                                 low=0.0, low_open=True)}
    return {"mode": "learned", "max": number(raw.get("max", 100.0), f"{where}: logit_scale.max",
                                             low=1.0, low_open=True)}


def check_auto(raw: Any, where: str) -> dict[str, Any]:
    """An ``auto:`` mapping typed field by field against :class:`tinyclip.inherit.auto.AutoInheritSpec`."""
    from .inherit.auto import TOWERS, AutoInheritSpec

    names = [f.name for f in fields(AutoInheritSpec)]
    raw = dict(check_keys(raw, names, f"{where}: auto", "{target_sparsity: 0.25, mask_steps: 3000}"))
    if "target_sparsity" not in raw:
        raise fail(where, "auto.target_sparsity is required (the fraction of the teacher's size to remove)")
    for key in ("target_sparsity", "start_sparsity"):
        if key in raw:
            raw[key] = number(raw[key], f"{where}: auto.{key}", low=0.0, high=1.0, high_open=True)
    for key, low in (("sparsity_warmup", 0), ("mask_steps", 1)):
        if key in raw:
            raw[key] = number(raw[key], f"{where}: auto.{key}", int, low=low)
    for key in ("mask_lr", "lagrangian_lr"):
        if key in raw:
            raw[key] = number(raw[key], f"{where}: auto.{key}", low=0.0, low_open=True)
    for key in ("prune_layers", "official_lagrangian"):
        if key in raw:
            raw[key] = boolean(raw[key], f"{where}: auto.{key}")
    if "towers" in raw:
        towers = raw["towers"]
        if not isinstance(towers, list) or not towers or not set(towers) <= set(TOWERS) \
                or len(set(towers)) != len(towers):
            raise fail(where, f"auto.towers: expected a non-empty list from {', '.join(TOWERS)}, got {towers!r}")
    if raw.get("reference_params") is not None:
        raw["reference_params"] = number(raw["reference_params"], f"{where}: auto.reference_params", int, low=1)
    if raw.get("lambda_init") is not None:
        raw["lambda_init"] = number(raw["lambda_init"], f"{where}: auto.lambda_init", low=0.0)
    if "deterministic" in raw:
        raw["deterministic"] = choice(raw["deterministic"], ("target", "cofi"), f"{where}: auto.deterministic")
    try:
        return AutoInheritSpec.from_dict(raw).to_dict()
    except TinyCLIPError as exc:
        raise fail(where, str(exc)) from None
