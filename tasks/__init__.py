"""One module per DVC stage: a pure ``run(...)`` plus ``main()`` for ``python -m tasks.<stage>``."""

# The one import-time step, first: for `python -m tasks.<stage>` (nothing for a library import), the
# re-exec with the project's python when this one lacks its packages, the set-up that must precede
# torch's import, and the hand-over to a warm stage server (tasks/launch.py).
from tasks.launch import prepare_command

prepare_command()

from sda.layout import STAGE_ORDER as STAGES  # noqa: E402  (the nine stages in order)
