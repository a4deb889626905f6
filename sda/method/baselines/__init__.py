"""The test-time-adaptation baselines, one module each, each registering itself with the method registry
(:mod:`sda.method.registry`) and declaring its params section ``streams.<name>``: BN, Tent, SAR, EATA,
CoTTA, RoTTA, LAME, ROID and MEMO. Every module's docstring names its reference (paper, code, commit),
its published settings and every deliberate deviation; :mod:`sda.method.baselines.base` holds what they
share.

Adding a baseline is adding its module here (every module of the package is imported, but the
support modules :mod:`sda.plugins` lists) and its section to ``params.yaml``.
"""

from __future__ import annotations

from sda.plugins import import_plugins

# the built-in baselines in the table's order, then every other module of this package but its support
# modules (both listed in sda.plugins)
import_plugins(__name__)
