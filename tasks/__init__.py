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
