"""tinyclip: a reproduction of TinyCLIP (Wu et al., ICCV 2023) on top of open_clip.

Importing the package registers the project's model configs (``tinyclip/model_configs/*.json``) with
open_clip, so ``open_clip.create_model("TinyCLIP-ViT-40M-32-Text-19M")`` works in every process that
imported ``tinyclip`` (open_clip's registry is per process). The registration happens when open_clip is
imported (at once if it already is): importing ``tinyclip`` itself stays cheap, so ``tinyclip --help``
answers without loading torch.

Where the paper lives:
  * section 3.1, affinity mimicking ............ :mod:`tinyclip.losses`
  * section 3.2, manual weight inheritance ...... :mod:`tinyclip.inherit.manual`
  * section 3.2, automatic weight inheritance ... :mod:`tinyclip.inherit.auto`
  * section 3.3, multi-stage distillation ....... :mod:`tinyclip.train`
  * section 4.1, model zoo / Table 2 columns .... :mod:`tinyclip.zoo`
"""
import sys
from pathlib import Path

from .errors import TinyCLIPError

__version__ = "0.1.0"
CONFIG_DIR = Path(__file__).parent / "model_configs"


def _register(open_clip_module) -> None:
    open_clip_module.add_model_config(CONFIG_DIR)


class _RegisterWhenImported:
    """An import hook: when open_clip's module has run, register our configs, then leave ``sys.meta_path``.
    (A mere ``find_spec("open_clip")``, as availability checks do, executes nothing and keeps the hook.)"""

    def find_spec(self, name, path=None, target=None):
        if name != "open_clip":
            return None
        for finder in sys.meta_path:   # the spec the ordinary finders give
            spec = finder.find_spec(name, path, target) if finder is not self and hasattr(finder, "find_spec") \
                else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module, run=run):
                run(module)
                _register(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)

            spec.loader.exec_module = exec_module
        return spec


if "open_clip" in sys.modules:
    _register(sys.modules["open_clip"])
elif not any(isinstance(f, _RegisterWhenImported) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenImported())

__all__ = ["CONFIG_DIR", "TinyCLIPError", "__version__"]
