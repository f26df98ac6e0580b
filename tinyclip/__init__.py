"""tinyclip: a reproduction of TinyCLIP (Wu et al., ICCV 2023) on top of open_clip.

Importing the package registers the project's model configs (``tinyclip/model_configs/*.json``) with
open_clip, so ``open_clip.create_model("TinyCLIP-ViT-40M-32-Text-19M")`` works in every process that
imported ``tinyclip`` (open_clip's registry is per process).

Where the paper lives:
  * section 3.1, affinity mimicking ............ :mod:`tinyclip.losses`
  * section 3.2, manual weight inheritance ...... :mod:`tinyclip.inherit.manual`
  * section 3.2, automatic weight inheritance ... :mod:`tinyclip.inherit.auto`
  * section 3.3, multi-stage distillation ....... :mod:`tinyclip.train`
  * section 4.1, model zoo / Table 2 columns .... :mod:`tinyclip.zoo`
"""
from pathlib import Path

import open_clip

from .errors import TinyCLIPError

__version__ = "0.1.0"
CONFIG_DIR = Path(__file__).parent / "model_configs"

open_clip.add_model_config(CONFIG_DIR)

__all__ = ["CONFIG_DIR", "TinyCLIPError", "__version__"]
