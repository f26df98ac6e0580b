"""Weight inheritance (TinyCLIP paper §3.2): a student starts from a subset of its teacher's weights.

* :mod:`tinyclip.inherit.manual` — manual inheritance: evenly spaced layers, leading channels/heads/neurons.
* :mod:`tinyclip.inherit.auto` — automatic inheritance with learned masks.
"""
from .manual import ManualInheritSpec, check_inheritable, inherit_manual, select_layers

__all__ = ["ManualInheritSpec", "check_inheritable", "inherit_manual", "select_layers"]
