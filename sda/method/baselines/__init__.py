"""The test-time-adaptation baselines, one module each, each registering itself with the method registry
(:mod:`sda.method.registry`) and declaring its params section ``streams.<name>``: BN, Tent, SAR, EATA,
CoTTA, RoTTA, LAME, ROID and MEMO. Every module's docstring names its reference (paper, code, commit),
its published settings and every deliberate deviation; :mod:`sda.method.baselines.base` holds what they
share.

Adding a baseline is adding its module here (every module of the package is imported, but those
``NOT_BASELINES`` lists) and its section to ``params.yaml``.
"""

from __future__ import annotations

# the built-in baselines in the table's order, then every other module of this package
from sda.method.baselines import memo  # noqa: E402, F401
from sda.method.baselines import bn  # noqa: E402, F401
from sda.method.baselines import tent  # noqa: E402, F401
from sda.method.baselines import sar  # noqa: E402, F401
from sda.method.baselines import eata  # noqa: E402, F401
from sda.method.baselines import cotta  # noqa: E402, F401
from sda.method.baselines import rotta  # noqa: E402, F401
from sda.method.baselines import lame  # noqa: E402, F401
from sda.method.baselines import roid  # noqa: E402, F401

# the modules here that are not methods (shared code)
NOT_BASELINES = ("augment", "base")


def _import_every_module() -> None:
    import importlib
    import pkgutil

    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module not in NOT_BASELINES:
            importlib.import_module(f"{__name__}.{module}")


_import_every_module()
