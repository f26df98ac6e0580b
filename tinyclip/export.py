"""Export and import of students in open_clip's ``local-dir:`` format (design §3, "ordinary open_clip models").

A student made by manual inheritance (paper §3.2) is an ordinary open_clip ``CLIP``. It is saved as a folder
that open_clip itself can load, with no tinyclip code involved::

    DIR/open_clip_config.json         {"model_cfg": {...}, "preprocess_cfg": {...}[, "tinyclip": {...}]}
    DIR/open_clip_model.safetensors   the full state dict

    open_clip.create_model("local-dir:DIR")

The folder is written into a temporary sibling and renamed into place, so a crash never leaves a half-written
export. An existing export at the same path is replaced; any other non-empty folder is left alone (error).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import TinyCLIPError, one_line

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
LOCAL_DIR_PREFIX = "local-dir:"
_MODEL_CFG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def _strip_prefix(path: str | Path) -> Path:
    text = str(path)
    if text.startswith(LOCAL_DIR_PREFIX):
        text = text[len(LOCAL_DIR_PREFIX):]
    return Path(text).expanduser()


def _check_model_cfg(model_cfg: Any) -> None:
    if not isinstance(model_cfg, dict) or any(k not in model_cfg for k in _MODEL_CFG_KEYS):
        raise TinyCLIPError(
            "model_cfg must be an open_clip model config dict with embed_dim, vision_cfg and text_cfg; "
            "pass the config the model was built from")


def preprocess_cfg_of(model: nn.Module) -> dict:
    """open_clip's defaults, overlaid with what the model carries (set by create_model), sized to the model."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    cfg = asdict(PreprocessCfg())
    cfg.update(open_clip.get_model_preprocess_cfg(model))
    image_size = getattr(getattr(model, "visual", None), "image_size", None)
    if image_size is not None:
        cfg["size"] = image_size
    return cfg


def _jsonable(value: Any) -> Any:
    # tuples (image sizes, mean/std) become lists; anything else non-JSON is a caller error caught below
    return json.loads(json.dumps(value))


def save_open_clip_dir(
    model: nn.Module,
    model_cfg: dict,
    out_dir: str | Path,
    preprocess_cfg: dict | None = None,
    *,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` as an open_clip ``local-dir:`` folder atomically and return the folder's path.

    ``preprocess_cfg`` overrides individual keys of the default (open_clip's defaults, the model's own
    preprocess config if it has one, size = the model's image size). ``extra`` (JSON-serialisable) is stored
    under the ``"tinyclip"`` key of the config file, e.g. the inheritance report; open_clip ignores it.
    """
    from safetensors.torch import save_file

    _check_model_cfg(model_cfg)
    out_dir = _strip_prefix(out_dir).absolute()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise TinyCLIPError(f"{out_dir} exists and is not a folder; choose another --out path")
        if any(out_dir.iterdir()) and not (out_dir / CONFIG_NAME).is_file():
            raise TinyCLIPError(
                f"{out_dir} is a non-empty folder that is not an open_clip export; choose an empty or new path")

    pre = preprocess_cfg_of(model)
    pre.update(preprocess_cfg or {})
    try:
        config = _jsonable({"model_cfg": model_cfg, "preprocess_cfg": pre})
        if extra is not None:
            config["tinyclip"] = _jsonable(extra)
    except (TypeError, ValueError) as exc:
        raise TinyCLIPError(f"export config is not JSON-serialisable ({one_line(exc, with_type=True)}); pass plain data") from exc

    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.device.type == "meta":
            raise TinyCLIPError(f"cannot export {name}: the model is on the meta device (shapes only); "
                                "build it on a real device first")
        # clone: safetensors refuses tensors that share storage, and we must not alias the live model
        state[name] = tensor.detach().to("cpu").contiguous().clone()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which makes 0700 folders) so the export gets the user's usual permissions
    tmp_dir = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp_dir.mkdir()
    old_dir: Path | None = None
    try:
        (tmp_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(state, str(tmp_dir / WEIGHTS_NAME), metadata={"format": "pt"})
        # safetensors writes 0600; give the weights the same (umask-derived) mode as the config file
        os.chmod(tmp_dir / WEIGHTS_NAME, (tmp_dir / CONFIG_NAME).stat().st_mode & 0o777)
        if out_dir.exists():
            # a non-empty folder cannot be replaced by rename: move the old export aside first
            old_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.rename(out_dir, old_dir / "export")
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if old_dir is not None:  # put the previous export back
                os.rename(old_dir / "export", out_dir)
            raise
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if old_dir is not None and not (old_dir / "export").exists():
            shutil.rmtree(old_dir, ignore_errors=True)
        raise
    if old_dir is not None:
        shutil.rmtree(old_dir, ignore_errors=True)
    return out_dir


def read_open_clip_config(path: str | Path) -> dict:
    """The parsed ``open_clip_config.json`` of a ``local-dir:`` folder (``path`` with or without the prefix)."""
    folder = _strip_prefix(path)
    if not folder.is_dir():
        raise TinyCLIPError(f"{folder} is not a folder; expected an open_clip local-dir export "
                            f"({CONFIG_NAME} + {WEIGHTS_NAME})")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise TinyCLIPError(f"{config_path} is missing; {folder} is not an open_clip local-dir export")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TinyCLIPError(f"{config_path} is unreadable ({one_line(exc, with_type=True)}); re-export the model") from exc
    if not isinstance(config, dict):
        raise TinyCLIPError(f"{config_path} is not a JSON object; re-export the model")
    try:
        _check_model_cfg(config.get("model_cfg"))
    except TinyCLIPError as exc:
        raise TinyCLIPError(f"{config_path} has no valid model_cfg; re-export the model") from exc
    return config


def load_open_clip_dir(path: str | Path) -> tuple[nn.Module, dict]:
    """Load a ``local-dir:`` export through open_clip; return ``(model, model_cfg)``.

    Unlike a bare ``open_clip.create_model("local-dir:...")``, a folder without weights is an error here
    (open_clip would silently return a randomly initialised model).
    """
    import open_clip

    folder = _strip_prefix(path)
    config = read_open_clip_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise TinyCLIPError(f"{weights} is missing; the export in {folder} is incomplete, re-export the model")
    try:
        model = open_clip.create_model(f"{LOCAL_DIR_PREFIX}{folder}")
    except Exception as exc:  # safetensors, strict load_state_dict, config errors: all mean a broken export
        raise TinyCLIPError(f"cannot load {folder} ({one_line(exc, with_type=True)}); re-export the model") from exc
    return model, config["model_cfg"]
