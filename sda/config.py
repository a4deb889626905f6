"""Typed, validated view of ``params.yaml``.

One pydantic model per stage section, all frozen and ``extra="forbid"``: an unknown key or a bad
value fails before any work starts, and the error names the parameter by its dotted path
(``projection.D``) and says what is allowed. :func:`load_params` reads a file; :func:`parse_params`
validates a mapping (a notebook's, a test's). This module is a leaf: it checks the shape of the
params and imports no other module of the project but :mod:`sda.plugins` (the names of the domain
modules, whose sections it lets through); which profiles exist and what each needs is the domain
registry's (:func:`sda.domains.domain_for`). A domain's own section is declared by its module and a
test-time method's (``streams.<name>``) by its method (:func:`register_section`,
:func:`register_method_section`); both are kept as written and validated by their model when read
(``params.imagenet``, ``params.streams.method_params("tent")``) or when their registry checks the params.

The defaults here are the values in the repository's ``params.yaml``, which lists every parameter:
``tests/unit/sda/test_config.py`` fails when the two disagree, so a notebook's ``Params()`` (after
``import sda.domains``) is the pipeline's configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sda.plugins import plugin_modules


__all__ = [
    "CORRUPTIONS",
    "ParamsError",
    "Params",
    "load_params",
    "parse_params",
    "PROFILE_SECTIONS",
    "register_method_section",
    "register_section",
    "require_profile_entry",
    "Section",
]

# The sections a profile may override (profiles.<name>.<section>): the stages' own. A params file names
# each of them under every profile, {} for none, because each stage's DVC params list the active
# profile's overrides of the sections it reads (dvc.yaml: profiles.${profile}.<section>), and DVC refuses a
# missing key. The domains' sections (embedded, imagenet, folder), runtime and relabel are set directly.
PROFILE_SECTIONS: tuple[str, ...] = ("source_model", "diffusion_finetune", "synth_generate", "projection",
                                     "classifier_align", "target_data", "evaluate", "streams")

# The 15 ImageNet-C corruptions that the paper reports (severity 5), in the usual order.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)



Precision = Literal["fp32", "bf16", "fp16"]
LrSchedule = Literal["constant", "cosine"]  # the diffusion training rate after its warm-up
# torch.compile modes of the fast mode; "reduce-overhead" = inductor + CUDA graphs
CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune-no-cudagraphs"]


class ParamsError(ValueError):
    """``params.yaml`` does not validate; the message lists every bad parameter by dotted path."""


class Section(BaseModel):
    """A params section: frozen, and an unknown key is an error. A domain's own section subclasses it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Runtime(Section):
    seed: int = Field(0, ge=0, description="Master seed; every stage derives its own from it.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(2, ge=0, description=(
        "torch CPU threads, fixed so that the same params give the same bytes (training reductions depend "
        "on it); 0 = the cores idle at stage start (fastest, not reproducible across loads)."))
    deterministic: bool = Field(True, description=(
        "torch.use_deterministic_algorithms: the same bytes run to run (the projection's low-pass backward "
        "accumulates in a thread-dependent order otherwise); false = a little faster."))
    workers: int = Field(0, ge=0, description="Heavy stages: 0 = in-process; N = dask LocalCluster of N.")
    loader_workers: int = Field(0, ge=0, description=(
        "Processes that read and decode shards for classifier_align and evaluate (0 = in the stage's "
        "process); training batches depend on it, so it is fixed rather than taken from the cores. "
        "2-4 where decoding would keep a GPU waiting; each costs memory (~0.3 GiB measured on the CPU)."))
    scheduler: str | None = Field(None, description="dask scheduler address (or env SDA_DASK_SCHEDULER).")
    stage_timeouts: dict[str, float] = Field(default_factory=dict, description=(
        "The flow's limit per stage in seconds ({stage: seconds}; a stage left out has none): past it the "
        "stage's processes are killed and the run fails, without a retry."))

    @field_validator("stage_timeouts")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: s for k, s in v.items() if not s > 0}
        if bad:
            raise ValueError(f"seconds must be > 0, got {bad}")
        return v


class SourceModel(Section):
    arch: str = "sda_cnn3"
    width: int = Field(32, ge=4)
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.3, ge=0, lt=1, description="A less over-confident source model (val: best).")


class DiffusionFinetune(Section):
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = Field(1, ge=1)
    attention_levels: tuple[bool, ...] = (False, False, True)
    norm_num_groups: int = Field(8, ge=1)
    num_train_timesteps: int = Field(1000, ge=10)
    train_steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: LrSchedule = Field("constant", description=(
        "The learning rate after its warm-up (the first train_steps / 20 steps): constant, or half a cosine "
        "down to 0 at the last step."))
    ema_decay: float = Field(0.995, gt=0, lt=1)
    null_label_prob: float = Field(0.2, ge=0, lt=1, description="Class dropout for the 'null' label.")
    probe_every: int = Field(0, ge=0, description=(
        "Every this many steps, sample a fixed seeded probe set from the model (its EMA weights) and score "
        "it with the source model (the share recognised as its intended class); the best-scoring checkpoint "
        "is kept. 0 = off: the last checkpoint, train_steps steps."))
    probe_per_class: int = Field(8, ge=1, description="Probe images per class.")
    probe_target: float = Field(80.0, ge=0, le=100, description=(
        "Percent of probe images the source model must recognise: below it at train_steps, training goes on "
        "(probe by probe) until it is reached or max_train_steps."))
    max_train_steps: int | None = Field(None, ge=1, description=(
        "The step budget when probing: training may go past train_steps up to this while the probe score is "
        "under probe_target. null = train_steps (no extension)."))
    max_minutes: float | None = Field(None, gt=0, description=(
        "A wall-clock budget for the extension past train_steps: no new probe interval starts after it. It makes "
        "the output depend on the machine's speed (same params, other bytes): null = off."))

    @model_validator(mode="after")
    def _levels_match(self) -> "DiffusionFinetune":
        if self.max_train_steps is not None and self.max_train_steps < self.train_steps:
            raise ValueError(f"max_train_steps ({self.max_train_steps}) is below train_steps ({self.train_steps}): "
                             "raise it, or set it to null")
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries but block_out_channels "
                f"has {len(self.block_out_channels)}: give one bool per resolution level"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"every block_out_channels entry must be divisible by norm_num_groups={self.norm_num_groups}"
            )
        return self


class SynthGenerate(Section):
    per_class: int = Field(300, ge=1, description="Synthetic images per class (class-balanced).")
    steps: int = Field(25, ge=1, description="Respaced DDPM sampling steps.")
    guidance_scale: float = Field(1.0, ge=0, description="CFG weight w; 1.0 = conditional only.")
    batch_size: int = Field(100, ge=1)
    shard_size: int = Field(500, ge=1, description="Images per shard (a shard is the unit of work).")
    max_shard_bytes: int = Field(1 << 30, ge=1 << 16, description="A shard over this size is an error.")
    precision: Precision = Field("fp32", description="The generator's autocast on CUDA (fp32 on the CPU).")


class Projection(Section):
    """The one DDA projection used by synth_align, target_project (and relabel)."""

    method: Literal["dda", "ilvr", "distilled"] = Field("dda", description=(
        "dda: low-pass guidance by the input gradient through the UNet (the reference; 3 forward-equivalents a "
        "step); ilvr: the sample's low-pass content replaced by the noised reference's at each step (Choi et al. "
        "2021; no backward: 1 a step; scale is not used); distilled: one evaluation of a copy of the UNet trained "
        "by synth_align to give what `teacher` (at respacing, N, D, scale) gives from the same noised image."))
    teacher: Literal["dda", "ilvr"] = Field("ilvr", description=(
        "method: distilled: the guided projection it learns (ilvr: a third of dda's one-off cost, SDA as high)."))
    distill_images: int = Field(2000, ge=1, description=(
        "method: distilled: synthetic images (a seeded draw of data/synth_generate) the teacher projects."))
    distill_draws: int = Field(2, ge=1, description="method: distilled: teacher projections (noise draws) per image.")
    distill_steps: int = Field(1000, ge=1, description="method: distilled: training steps of the student (batch_size).")
    distill_lr: float = Field(1e-4, gt=0, description="method: distilled: the student's AdamW learning rate.")
    distill_lowpass: bool = Field(True, description=(
        "method: distilled: the student's output takes the low frequencies (LPF_D) of the image it projects, as "
        "ILVR's last step does, and the student learns the high ones only (still one evaluation); false: the "
        "student's x0 as it is (SDA 5 points lower on the embedded domain)."))
    respacing: int = Field(20, ge=2, description="Respaced steps of the training schedule.")
    N: int = Field(4, ge=1, description="Noising depth in respaced steps.")
    D: int = Field(4, ge=1, description="Low-pass down-sampling factor.")
    scale: float = Field(24.0, ge=0, description="Guidance step size.")
    per_sample_norm: bool = Field(False, description="Principled per-image norm (reference: batch norm).")
    fix_off_by_one: bool = Field(False, description="Noise at N-1, where denoising starts (ref: N).")
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        32, description="Also the norm's batch under the reference quirk; 'auto' = the largest power of two "
        "that fits the free GPU memory (use per_sample_norm with it for card-independent results).")
    # the GPU fast mode (sda.accel); the defaults are the reference-faithful fp32 eager path
    precision: Precision = Field("fp32", description="The UNet's autocast on CUDA: fp32 | bf16 | fp16 "
                                 "(the reference ran fp16); fp32 on the CPU.")
    channels_last: bool = Field(False, description="channels_last memory layout for the UNet.")
    compile: CompileMode = Field(
        "none", description="torch.compile mode for the guided step; reduce-overhead adds CUDA graphs.")

    @model_validator(mode="after")
    def _n_fits(self) -> "Projection":
        if self.N >= self.respacing:
            raise ValueError(f"N={self.N} must be smaller than respacing={self.respacing}")
        if self.method == "distilled" and self.batch_size == "auto":
            raise ValueError("method: distilled needs a number for batch_size (the batch its teacher and student "
                             "train with), not auto")
        return self


class ClassifierAlign(Section):
    recipe: Literal["custom", "paper"] = Field(
        "custom", description="'paper': the SDA paper's recipe for source_model.arch (sda.models.classifiers.PAPER_RECIPES) "
        "replaces optimizer, lr, momentum, weight_decay, batch_size, epochs and grad_clip.")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-4, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only.")
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="Max gradient norm; null = no clipping.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    shuffle_buffer: int = Field(2000, ge=1, description=(
        "Samples each loader worker shuffles through (after a seeded shard shuffle); memory is bounded "
        "by it, not by the set."))
    select_epoch: bool = Field(False, description=(
        "Keep the epoch whose aligned model is best on the projected source val split; false: the last epoch "
        "(the paper). Needs a source val split (embedded, folder)."))
    fallback: bool = Field(True, description=(
        "When the kept aligned model is worse than the source model on the projected source val split by more "
        "than max_val_drop, do not use it: SDA falls back to DDA. Needs a source val split (no effect without)."))
    projected_source: bool = Field(False, description=(
        "Also train on the DDA projections of the source train split (real images, real labels) besides the "
        "synthetic set: the aligned model learns to read projections even where the generator draws its classes "
        "poorly. false: the synthetic set alone (the paper)."))
    max_val_drop: float = Field(10.0, ge=0, le=100, description=(
        "Points the aligned model may lose to the source model on the projected source val split before "
        "SDA falls back to DDA (fallback) or the run warns."))
    min_synthetic_accuracy: float = Field(50.0, ge=0, le=100, description=(
        "Percent of synthetic images the source model must recognise as their intended class; below it "
        "the run warns that the synthetic domain is too weak, naming the setting to raise."))


class TargetData(Section):
    split: Literal["test", "val"] = Field(
        "test", description="'val' to tune hyper-parameters; 'test' only for the reported numbers."
    )
    corruptions: tuple[str, ...] = CORRUPTIONS
    severity: int = Field(5, ge=1, le=5)
    include_clean: bool = True
    shard_maxcount: int = Field(270, ge=1)

    @model_validator(mode="after")
    def _known(self) -> "TargetData":
        unknown = set(self.corruptions) - set(CORRUPTIONS)
        if unknown:  # corrupt_tta (0.5 s to import) only for names beyond the paper's 15
            import corrupt_tta

            unknown -= set(corrupt_tta.corruption_dict)
            if unknown:
                raise ValueError(f"unknown corruptions {sorted(unknown)}; choose from {sorted(corrupt_tta.corruption_dict)}")
        if len(set(self.corruptions)) != len(self.corruptions):
            raise ValueError("corruptions are listed twice")
        return self


class Evaluate(Section):
    grid_images: int = Field(8, ge=1, le=64, description="Images per domain in the projection grid.")
    batch_size: int = Field(512, ge=1)
    source_collapse_share: float | None = Field(None, gt=0, le=1, description=(
        "Drop SDA's source term (the source model on the original) on a target domain where that model gives "
        "at least this share of the domain's images one class (and at least 2 / classes of them: with two "
        "classes, all of them): its predictions there carry no class "
        "information and only pull the sum off the aligned model's (sda.method.scoring.source_collapsed). "
        "null = always summed, as the paper does."))
    source_collapse_min_images: int = Field(20, ge=1, description=(
        "Domains with fewer images keep the source term (too few to tell a collapse from a skewed sample)."))


StreamOrder = Literal["iid", "continual", "mixed", "correlated"]


class StreamSpec(Section):
    """One target stream of the ``streams`` stage (sda.method.streams)."""

    order: StreamOrder = Field(..., description=(
        "iid: each domain shuffled, reset at each domain; continual: the same order, never reset; mixed: all "
        "domains shuffled together; correlated: labels in a Dirichlet order per domain (delta), reset at each."))
    batch_size: int = Field(64, ge=1, description="Images per batch (1: below `window`, a sliding window).")
    delta: float | None = Field(None, ge=0, description="correlated: Dirichlet concentration (0 = class-sorted).")
    images_per_domain: int | None = Field(None, ge=1, description=(
        "This stream on a seeded subset of each domain (the first of the same per-domain draw as "
        "streams.images_per_domain); null: the stage's set."))

    @model_validator(mode="after")
    def _delta(self) -> "StreamSpec":
        if (self.order == "correlated") != (self.delta is not None):
            raise ValueError("delta is set for a correlated stream, and only for it (0 = class-sorted)")
        return self


def _default_streams() -> dict[str, StreamSpec]:
    return {"iid": StreamSpec(order="iid"), "continual": StreamSpec(order="continual"),
            "mixed": StreamSpec(order="mixed"), "correlated": StreamSpec(order="correlated", delta=0.1),
            "class_sorted": StreamSpec(order="correlated", delta=0.0),
            "batch4": StreamSpec(order="iid", batch_size=4, images_per_domain=135),
            "batch1": StreamSpec(order="iid", batch_size=1, images_per_domain=32)}


class GuardParams(Section):
    min_images: int = Field(16, ge=1, description="Frozen SDA until this many images were seen since a reset.")
    min_class_fraction: float = Field(0.5, ge=0, le=1, description=(
        "Frozen SDA (and no adaptation) when the last `window` frozen predictions hold fewer effective classes "
        "(exp entropy of their histogram) than this fraction of min(classes, images)."))
    max_entropy_rise: float = Field(0.0, description=(
        "Frozen SDA for a batch whose adapted sum is less sure (mean entropy, nats) than the frozen sum by more."))
    max_spread_gap: float | None = Field(0.18, description=(
        "Frozen SDA (and no adaptation) when, over the last `window` images, the originals' per-image feature "
        "statistics (log channel variance at each BatchNorm input of the source model) spread more than their "
        "projections' by more than this (mean standard deviation): the stream mixes domains. null: no such check."))


def _section_errors(err: ValidationError, loc: tuple[str, ...]) -> list[dict[str, Any]]:
    """``err``'s errors, located under ``loc`` (the section's dotted path)."""
    return [{"type": e["type"], "loc": (*loc, *e["loc"]), "input": e["input"], **({"ctx": e["ctx"]} if "ctx" in e else {})}
            for e in err.errors(include_url=False)]


def _registered_section(written: Mapping[str, Any] | None, name: str, model: type[Section],
                        loc: tuple[str, ...]) -> tuple[Section | None, list[dict[str, Any]]]:
    """Section ``name`` (a registry's: a domain's or a method's) validated by ``model`` from what ``written``
    holds under its name (its defaults where absent): the section, or None and its errors located under ``loc``."""
    value = (written or {}).get(name)
    try:
        return (value if isinstance(value, model) else model.model_validate({} if value is None else value)), []
    except ValidationError as err:
        return None, _section_errors(err, (*loc, name))


def _registered_errors(written: Mapping[str, Any] | None, models: Mapping[str, type[Section]],
                       loc: tuple[str, ...]) -> list[dict[str, Any]]:
    """The errors of every section ``models`` declares (:func:`_registered_section`)."""
    return [e for name, model in models.items() for e in _registered_section(written, name, model, loc)[1]]


def _raise(errors: list[dict[str, Any]], title: str) -> None:
    if errors:
        raise ParamsError(_format(ValidationError.from_exception_data(title, errors), "params.yaml"))


# The methods' own sections (streams.tent, streams.lame, ...): each method module of sda.method declares its
# model (sda.method.registry.StreamMethod.params_model) and the registry adds it here. A process that has not
# imported the registry keeps them as written; the registry validates them when it builds a method.
_METHOD_SECTIONS: dict[str, type[Section]] = {}


def register_method_section(name: str, model: type[Section]) -> None:
    """Validate ``streams.<name>`` with ``model`` from now on (a test-time method's section)."""
    if name in Streams.model_fields:
        raise ValueError(f"streams.{name} is a setting of the streams stage, not a method's section")
    if _METHOD_SECTIONS.get(name, model) is not model:
        raise ValueError(f"streams.{name}: two methods declare different sections of this name")
    _METHOD_SECTIONS[name] = model


class Streams(Section):
    """The ``streams`` stage: every method on every target stream (docs/streams.md). Besides these
    settings, ``streams.<section>`` holds each method's own (its module's model, sda.method.registry)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    streams: dict[str, StreamSpec] = Field(default_factory=_default_streams, description="name: stream.")
    methods: Literal["all"] | tuple[str, ...] = Field("all", description=(
        "The methods compared: `all` (every registered method, sda.method.registry) or a list of their names."))
    images_per_domain: int | None = Field(270, ge=1, description=(
        "A seeded subset of each evaluated domain (null: all): the stage's cost is linear in it."))
    image_ids: str | None = Field(None, description=(
        "A file of image ids, one per line (RobustBench's helper_files/imagenet_test_image_ids.txt: the 5,000 "
        "ImageNet-C images of the test-time-adaptation benchmarks); only images whose key is a listed file's "
        "stem are used. null: all."))
    window: int = Field(64, ge=0, description=(
        "Model adaptation at a batch smaller than this sees the batch with the images before it (a sliding "
        "window of this many); 0: never."))
    sliding_below: int = Field(2, ge=1, description="The window is used for batches smaller than this (2: batch 1 only).")
    diffpure_t: float = Field(0.15, gt=0, lt=1, description="DiffPure's depth t* (ImageNet: 0.15 of the schedule).")
    guard: GuardParams = GuardParams()
    coupling_images: int = Field(128, ge=0, description=(
        "Images projected again, in two batch compositions, to measure how much the reference's batch-wide "
        "guidance norm moves SDA's labels (0: skip)."))

    @field_validator("methods")
    @classmethod
    def _some(cls, v):
        if v != "all" and not v:
            raise ValueError("name at least one method, or `all`")
        return v

    @field_validator("streams")
    @classmethod
    def _names(cls, v: dict[str, StreamSpec]) -> dict[str, StreamSpec]:
        if not v:
            raise ValueError("name at least one stream")
        return v

    def method_params(self, section: str) -> Section:
        """Method section ``streams.<section>``, validated by the model its method registered (its defaults
        where the file has none); a bad value is a :class:`ParamsError` naming the key."""
        if section not in _METHOD_SECTIONS:
            raise ValueError(f"streams.{section}: no registered method declares this section")
        out, errors = _registered_section(self.__pydantic_extra__, section, _METHOD_SECTIONS[section], ("streams",))
        _raise(errors, "Streams")
        return out

    def check_method_sections(self) -> None:
        """Every registered method's section valid, and no other key besides the stage's settings: a
        :class:`ParamsError` naming each bad key. The method registry asks it before a method is built."""
        extra = self.__pydantic_extra__ or {}
        errors = [{"type": "extra_forbidden", "loc": ("streams", k), "input": v} for k, v in extra.items()
                  if k not in _METHOD_SECTIONS]
        _raise(errors + _registered_errors(extra, _METHOD_SECTIONS, ("streams",)), "Streams")


class Monitor(Section):
    """``relabel.monitor``: the label-free estimates and drift tests of each batch (:mod:`sda.relabel.monitor`)."""

    enabled: bool = Field(True, description="Monitor each batch against the pipeline's evaluated targets.")
    min_images: int = Field(30, ge=1, description="Fewer labelled images: 'too_few', nothing flagged.")
    alpha: float = Field(0.001, gt=0, lt=1, description=(
        "A test (labels: chi-square, confidence: Kolmogorov-Smirnov) with a p-value under this flags drift."))
    max_accuracy_drop: float = Field(10.0, ge=0, description=(
        "Drift when the ATC accuracy estimate is this many points under the reference's accuracy."))
    reference_images: int = Field(512, ge=10, description=(
        "Images of the pipeline's evaluated targets the service labels once per set of models: the reference."))
    inputs: bool = Field(True, description=(
        "Also test each batch's inputs (the source model's features) against the evaluated domains' (MMD)."))
    input_images: int = Field(256, ge=10, description="Images of each evaluated domain the input test compares with.")
    input_alpha: float = Field(0.005, gt=0, lt=1, description=(
        "The input test (the largest MMD p-value over the pooled domains and the 3 nearest) flags under this."))
    permutations: int = Field(999, ge=99, description="Permutations of the input test's p-value.")
    history: int = Field(20, ge=1, description="Runs `sda relabel status` prints and the run artifact's picture shows.")
    pause_on_drift: bool = Field(False, description=(
        "Under `make serve`: a drifted batch also pauses relabel/scheduled (the alert is raised either way); "
        "resume it in the UI or with `prefect deployment resume` (docs/service.md)."))


class Relabel(Section):
    """Batch relabelling of new target images (``flows/relabel.py``); paths are relative to the repo."""

    inbox: str = Field("data/inbox", description="Folder watched for new images (nested; jpg/png/webp/tar).")
    served_inboxes: tuple[str, ...] = Field((), description=(
        "Folders besides `inbox` (sub-folders included) that a run started through the Prefect server "
        "(relabel/on-demand -p inbox=...) may read and delete from; the CLI takes any folder you can write."))
    labels: str = Field("data/labels", description="Parquet dataset of labels, partitioned by date.")
    quarantine: str = Field("data/quarantine", description="Bad files (files/) and their Parquet table (table/).")
    batch_size: int = Field(256, ge=1, description="Images per batch: the unit of commit and of resume.")
    interval_minutes: float = Field(10.0, gt=0, description="Period of the relabel/scheduled deployment.")
    max_file_bytes: int = Field(50_000_000, ge=1, description="Larger files are quarantined unread.")
    max_pixels: int = Field(40_000_000, ge=1, description="Width x height limit, checked before decoding.")
    min_side: int = Field(8, ge=1, description="Smaller images are quarantined.")
    min_age_seconds: float = Field(2.0, ge=0, description="Files modified more recently are left for the next run.")
    upload_grace_seconds: float = Field(900.0, ge=0, description=(
        "A file that decodes as truncated or empty and was modified less than this long ago is left in the inbox "
        "for a later run, not quarantined: an upload may be stalled."))
    move_quarantined: bool = Field(True, description="Remove quarantined files from the inbox (after the copy).")
    lock_timeout_seconds: float = Field(3600.0, ge=0, description="How long a run waits for a running one.")
    grid_images: int = Field(8, ge=1, le=64, description="Images per predicted class in the batch grid.")
    adapt: Literal["frozen", "sda+bn"] = Field("frozen", description=(
        "frozen: SDA with both classifiers frozen, each image projected on its own: a label never depends on the "
        "other files of the run; sda+bn: SDA's classifiers on each batch's statistics where streams.guard allows "
        "it (docs/streams.md: better on a large i.i.d. batch, and a label then depends on its batch)."))
    monitor: Monitor = Monitor()


# The domains' own sections (embedded, imagenet, folder, yours), named like the domain and its module: each
# domain module declares its model (Domain.params_model) and the registry adds it here (sda.domains.register_domain).
_DOMAIN_SECTIONS: dict[str, type[Section]] = {}


def register_section(name: str, model: type[Section]) -> None:
    """Validate ``params.yaml``'s top-level ``name`` with ``model`` from now on (a domain's section)."""
    if name in Params.model_fields:
        raise ValueError(f"{name!r} is a stage section of params.yaml, not a domain's")
    _DOMAIN_SECTIONS[name] = model


class Params(Section):
    """The whole params file: the stages' sections, declared and validated here, and the domains'
    sections, kept as written and validated by the model their domain registered when read
    (``params.imagenet``, :meth:`domain_section`) or when the domain registry checks the params
    (:meth:`check_domain_sections`, asked by ``sda.domains.domain_for``): the same whatever this process
    imported first."""

    model_config = ConfigDict(extra="allow", frozen=True)

    profile: str = Field("embedded", description=(
        "The domain to run (sda.domains registry): embedded (built-in digits, CPU), imagenet (paper models "
        "and data from local paths, GPU), folder (your labelled images)."))
    profiles: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="Per-profile overrides of the sections, applied for the chosen profile.")
    runtime: Runtime = Runtime()
    source_model: SourceModel = SourceModel()
    diffusion_finetune: DiffusionFinetune = DiffusionFinetune()
    synth_generate: SynthGenerate = SynthGenerate()
    projection: Projection = Projection()
    classifier_align: ClassifierAlign = ClassifierAlign()
    target_data: TargetData = TargetData()
    evaluate: Evaluate = Evaluate()
    streams: Streams = Streams()
    relabel: Relabel = Relabel()

    def model_post_init(self, context: Any) -> None:
        """A top-level key that is neither a stage's section nor a domain's (a domain module of
        sda/domains, sda.plugins, or a registered section) is unknown."""
        known = set(plugin_modules("sda.domains")) | set(_DOMAIN_SECTIONS)
        errors = [{"type": "extra_forbidden", "loc": (k,), "input": v} for k, v in self.__pydantic_extra__.items()
                  if k not in known]
        if errors:
            raise ValidationError.from_exception_data("Params", errors)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in _DOMAIN_SECTIONS:
            return self.domain_section(name)
        if not name.startswith("_") and name in plugin_modules("sda.domains"):
            raise AttributeError(f"params.{name}: a domain's section is validated by its domain: `import sda.domains` "
                                 f"first (model_extra[{name!r}] holds it as written)")
        return super().__getattr__(name)

    def domain_section(self, name: str) -> Section:
        """Domain ``name``'s section, validated by the model its domain registered (its defaults where the
        file has none); a bad value is a :class:`ParamsError` naming the key."""
        if name not in _DOMAIN_SECTIONS:
            raise ValueError(f"{name}: no registered domain declares this section (import sda.domains first)")
        out, errors = _registered_section(self.__pydantic_extra__, name, _DOMAIN_SECTIONS[name], ())
        _raise(errors, "Params")
        return out

    def check_domain_sections(self) -> None:
        """Every registered domain's section valid: a :class:`ParamsError` naming each bad key."""
        _raise(_registered_errors(self.__pydantic_extra__, _DOMAIN_SECTIONS, ()), "Params")


def _format(err: ValidationError, source: str) -> str:
    """One line for one invalid parameter (``<file>: <key>: <what>``), else a line per parameter."""
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown parameter (typo? remove it or check the spelling against params.yaml)"
            if where == "runtime.bf16":
                msg = "moved: set projection.precision: bf16 (and synth_generate.precision for the generator)"
            elif where == "source_data":
                msg = ("renamed: the built-in domain's section is `embedded` now (like `imagenet` and `folder`): "
                       "rename source_data: to embedded:")
        got = e.get("input")
        got_s = f" (got {got!r})" if e["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        problems.append(f"{where}: {msg}{got_s}")
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return "\n".join([f"{source}: {len(problems)} invalid parameter(s):", *(f"  - {p}" for p in problems)])


def parse_params(raw: Mapping[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a parsed ``params.yaml`` mapping; raise :class:`ParamsError` naming bad keys.

    The sections of the chosen ``profile`` are the top-level sections with ``profiles.<profile>``
    merged over them key by key (so ``profile: imagenet`` is the one setting to switch).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    profile = raw.get("profile", "embedded")
    overrides = (raw.get("profiles") or {}).get(profile) if isinstance(raw.get("profiles"), Mapping) else None
    if overrides:
        if not isinstance(overrides, Mapping):
            raise ParamsError(f"{source}: profiles.{profile} must be a mapping of sections")
        for section, values in overrides.items():
            if section not in PROFILE_SECTIONS:
                direct = section in Params.model_fields or section in _DOMAIN_SECTIONS
                what = "is set directly, not per profile" if direct else "unknown section"
                raise ParamsError(f"{source}: profiles.{profile}.{section}: {what}; a profile overrides "
                                  f"{', '.join(PROFILE_SECTIONS)}")
            if not isinstance(values, Mapping):
                raise ParamsError(f"{source}: profiles.{profile}.{section} must be a mapping")
            raw[section] = {**(raw.get(section) or {}), **values}
    _refuse_tilde(raw, source)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format(err, source)) from None


def _refuse_tilde(value: Any, source: str, where: str = "") -> None:
    """A path written ``~/...`` anywhere in the params: refused with the full path to write instead (a
    stage takes paths as written, relative to the repository root, and DVC, which tracks them, expands
    nothing either)."""
    if isinstance(value, str) and value.startswith("~"):
        raise ParamsError(f"{source}: {where}: {value!r}: '~' is not expanded here (paths are taken as written, "
                          f"relative to the repository root); write the full path, e.g. {os.path.expanduser(value)!r}")
    if isinstance(value, Mapping):
        for key, v in value.items():
            if key != "profiles":
                _refuse_tilde(v, source, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_tilde(v, source, f"{where}.{i}")


def require_profile_entry(raw: Mapping[str, Any], source: str = "params.yaml") -> None:
    """A params *file* names every section of :data:`PROFILE_SECTIONS` under ``profiles.<active profile>``
    (``{}``: no override): each stage's DVC params list the active profile's overrides of the sections it
    reads, and DVC refuses to run a stage whose params key is missing."""
    raw = raw if isinstance(raw, Mapping) else {}
    profile = raw.get("profile", "embedded")
    profiles = raw.get("profiles")
    entry = profiles.get(profile) if isinstance(profiles, Mapping) else None
    missing = [s for s in PROFILE_SECTIONS if not (isinstance(entry, Mapping) and s in entry)]
    add = f"add {', '.join(f'{s}: {{}}' for s in missing)} under profiles.{profile}"
    if entry is None and isinstance(profiles, Mapping) and profiles:  # most often a typo: say so first
        raise ParamsError(f"{source}: profile: unknown profile {profile!r} (the profiles of {source}: "
                          f"{', '.join(map(str, profiles))}); for a new domain, profiles.{profile} must name each "
                          f"section a profile may override ({{}}: none): {add}")
    if missing:
        raise ParamsError(f"{source}: profiles.{profile} must name each section a profile may override ({{}}: "
                          f"none), for DVC to track them: {add}")


def load_params(path: str | os.PathLike[str] = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; a bad file raises :class:`ParamsError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    params = parse_params(raw, source=str(path))
    require_profile_entry(raw, source=str(path))
    return params
