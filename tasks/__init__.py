"""One module per DVC stage: a pure ``run(...)`` plus ``main()`` for ``python -m tasks.<stage>``."""

from sda.layout import STAGE_ORDER as STAGES  # the nine stages in order (the standard library only)

# The one import-time step: for `python -m tasks.<stage>` (nothing for a library import), the set-up
# that must precede torch's import, and the hand-over to a warm stage server (tasks/launch.py).
from tasks.launch import prepare_command  # noqa: E402

prepare_command(STAGES)
