"""What a flow run started by ``make serve`` may touch: the checkout that serves it and the inboxes its
params.yaml names. Outside a served run (the CLI, a plain ``python -m flows.pipeline``) nothing is refused."""

from __future__ import annotations

import os
from pathlib import Path

from sda.config import Relabel

__all__ = ["SERVED_ROOT_ENV", "check_served_inbox", "check_served_root"]

# set in the serving process (and so in the flow runs it starts): deployments run on this checkout
SERVED_ROOT_ENV = "SDA_SERVED_ROOT"


def check_served_root(root: str | os.PathLike[str]) -> None:
    """In a flow run started by ``make serve``: ``root`` must be the checkout that serves it (a
    deployment parameter cannot aim the service at another folder)."""
    served = os.environ.get(SERVED_ROOT_ENV)
    if served and Path(root).resolve() != Path(served).resolve():
        raise ValueError(f"this service runs on {served}; root={root} is not allowed (start `make serve` there)")


def check_served_inbox(inbox: str, root: Path, relabel: Relabel) -> Path:
    """In a flow run started by ``make serve``: ``inbox`` (resolved) must be ``relabel.inbox`` or one
    of ``relabel.served_inboxes``, or a folder beneath one, because relabelling deletes what it labels
    and quarantines; anyone who may start a run could otherwise aim it at any folder of this user.
    Returns the resolved folder; outside a served run, any folder."""
    path = (root / inbox).resolve()
    if not os.environ.get(SERVED_ROOT_ENV):
        return path
    allowed = [(root / p).resolve() for p in (relabel.inbox, *relabel.served_inboxes)]
    if not any(path.is_relative_to(a) for a in allowed):
        raise ValueError(f"inbox={inbox} is not relabel.inbox or beneath relabel.served_inboxes "
                         f"({', '.join(map(str, allowed))}); add it to served_inboxes in params.yaml")
    return path
