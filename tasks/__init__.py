"""One module per DVC stage: a pure ``run(...)`` plus ``main()`` for ``python -m tasks.<stage>``."""

STAGES: tuple[str, ...] = (
    "source_data",
    "source_model",
    "diffusion_finetune",
    "synth_generate",
    "synth_align",
    "classifier_align",
    "target_data",
    "target_project",
    "evaluate",
)

# The one import-time step: for `python -m tasks.<stage>` (nothing for a library import), the set-up
# that must precede torch's import, and the hand-over to a warm stage server (tasks/launch.py).
from tasks.launch import prepare_command  # noqa: E402

prepare_command(STAGES)
