"""Data profiles (docs/design.md §4, docs/data.md): what each profile's data set is made of, as plain data.

* ``smoke``: a synthetic world of coloured shapes, generated in seconds with no download (tests, CI).
* ``mini``:  the embedded real data set built from registry packages (docs/data.md §1):
  Tux Paint stamps, Noto and OpenMoji emoji, OpenClipart, Fashion-MNIST.
* ``paper``: user-supplied LAION-400M / YFCC-15M webdataset shards (img2dataset layout); nothing is built.

Where the data lives: ``<data root>/<profile>/`` with the fetch cache in ``<data root>/cache/``. The data
root is ``$TINYCLIP_DATA_ROOT`` if set, else ``data/`` in the repository checkout (git-ignored), else
``./data`` when the package is installed outside a checkout.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TinyCLIPError

# The training mix of the teacher feasibility study (docs/data.md §2-3): Tux 0.2, Noto 0.3, OpenClipart 0.5 of the
# non-Fashion-MNIST part, and Fashion-MNIST as 20% of every batch (without it the prompted classification
# falls below chance).
DEFAULT_WEIGHTS = {"tux": 0.8 * 0.2, "noto": 0.8 * 0.3, "openclipart": 0.8 * 0.5, "fmnist": 0.2}

# Evaluation sets: name -> (clip-benchmark task, what the number means). Fashion-MNIST train images with the
# same prompt templates are in the training mix, so its metric is *in-domain* prompted classification, the
# mini stand-in for ImageNet zero-shot; it must never be called zero-shot ImageNet-style transfer.
EVAL_SETS = {
    "fmnist": ("zeroshot_classification",
               "in-domain prompted classification: Fashion-MNIST test images classified by text prompts "
               "(Fashion-MNIST train images with the same templates are in the training mix)"),
    "tux": ("zeroshot_retrieval",
            "held-out Tux Paint stamps, image<->text retrieval; split by unique caption, so no test caption "
            "is seen in training"),
    "openmoji": ("zeroshot_retrieval",
                 "OpenMoji emoji (never trained on), cross-style image<->text retrieval against the names that "
                 "the Noto emoji taught"),
}


@dataclass(frozen=True)
class DataProfile:
    name: str
    kind: str                                   # "synthetic" | "registry" | "webdataset"
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    tux_test_fraction: float = 0.3              # share of *unique captions* held out for retrieval
    image_cap: int = 128                        # stored long side (px); Fashion-MNIST stays at 28 px
    train_shard_size: int = 5000                # samples per training shard
    eval_shard_size: int = 5000
    split_salt: str = "tinyclip-split-v1"       # changing it re-draws the Tux caption split
    jpeg_quality: int = 95
    # Remove training drawings that are near-copies of an evaluation drawing of another source (the same
    # artwork shipped twice). Off for the synthetic world, where every plain shape nearly equals another.
    near_duplicate_check: bool = True


PROFILES: dict[str, DataProfile] = {
    "smoke": DataProfile("smoke", "synthetic", image_cap=48, train_shard_size=300, eval_shard_size=100,
                         near_duplicate_check=False),
    "mini": DataProfile("mini", "registry"),
    "paper": DataProfile("paper", "webdataset"),
}


def get_profile(name: str) -> DataProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise TinyCLIPError(f"unknown data profile {name!r}; choose one of {', '.join(PROFILES)}") from None


def data_root() -> Path:
    """The folder holding ``<profile>/`` data sets and ``cache/``."""
    env = os.environ.get("TINYCLIP_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data"
    return Path.cwd() / "data"


def profile_dir(profile: str, root: str | Path | None = None) -> Path:
    """``<root>/<profile>`` (the built data set of a profile)."""
    return Path(root) / profile if root is not None else data_root() / profile


def cache_dir(root: str | Path | None = None) -> Path:
    return (Path(root) if root is not None else data_root()) / "cache"
