"""Typed, validated view of ``params.yaml``.

One pydantic model per stage section, all frozen and ``extra="forbid"``: an unknown key or a bad
value fails before any work starts, and the error names the parameter by its dotted path
(``projection.D``) and says what is allowed. ``sda/`` never reads the file itself; the caller
passes the parsed mapping to :func:`parse_params`.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "CORRUPTIONS",
    "ParamsError",
    "Params",
    "parse_params",
]

# The 15 ImageNet-C corruptions that the paper reports (severity 5), in the usual order.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)


class ParamsError(ValueError):
    """``params.yaml`` does not validate; the message lists every bad parameter by dotted path."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Runtime(_Section):
    seed: int = Field(0, ge=0, description="Master seed; every stage derives its own from it.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = the cores that are free now.")
    bf16: bool = Field(False, description="bf16 autocast for inference on CUDA.")
    workers: int = Field(0, ge=0, description="Heavy stages: 0 = in-process; N = dask LocalCluster of N.")
    scheduler: str | None = Field(None, description="dask scheduler address (or env SDA_DASK_SCHEDULER).")


class SourceData(_Section):
    image_size: int = Field(16, ge=8, le=64, description="Side of the RGB digits in pixels.")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.3, gt=0, lt=0.6)
    max_shift: int = Field(1, ge=0, le=4, description="Random translation in pixels.")
    min_contrast: float = Field(0.35, ge=0, le=1, description="Min luminance gap fg/bg colours.")
    shard_maxcount: int = Field(1000, ge=1)


class SourceModel(_Section):
    arch: str = "sda_cnn3"
    width: int = Field(32, ge=4)
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class DiffusionFinetune(_Section):
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = Field(1, ge=1)
    attention_levels: tuple[bool, ...] = (False, False, True)
    norm_num_groups: int = Field(8, ge=1)
    num_train_timesteps: int = Field(1000, ge=10)
    train_steps: int = Field(1100, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    ema_decay: float = Field(0.995, gt=0, lt=1)
    null_label_prob: float = Field(0.2, ge=0, lt=1, description="Class dropout for the 'null' label.")

    @model_validator(mode="after")
    def _levels_match(self) -> "DiffusionFinetune":
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


class SynthGenerate(_Section):
    per_class: int = Field(100, ge=1, description="Synthetic images per class (class-balanced).")
    steps: int = Field(25, ge=1, description="Respaced DDPM sampling steps.")
    guidance_scale: float = Field(1.0, ge=0, description="CFG weight w; 1.0 = conditional only.")
    batch_size: int = Field(100, ge=1)
    shard_size: int = Field(500, ge=1, description="Images per shard (a shard is the unit of work).")
    max_shard_bytes: int = Field(1 << 30, ge=1 << 16, description="A shard over this size is an error.")


class Projection(_Section):
    """The one DDA projection used by synth_align, target_project (and relabel)."""

    respacing: int = Field(20, ge=2, description="Respaced steps of the training schedule.")
    N: int = Field(10, ge=1, description="Noising depth in respaced steps.")
    D: int = Field(4, ge=1, description="Low-pass down-sampling factor.")
    scale: float = Field(6.0, ge=0, description="Guidance step size.")
    per_sample_norm: bool = Field(False, description="Principled per-image norm (reference: batch norm).")
    fix_off_by_one: bool = Field(False, description="Noise at N-1, where denoising starts (ref: N).")
    batch_size: int = Field(128, ge=1, description="Also the norm's batch under the reference quirk.")

    @model_validator(mode="after")
    def _n_fits(self) -> "Projection":
        if self.N >= self.respacing:
            raise ValueError(f"N={self.N} must be smaller than respacing={self.respacing}")
        return self


class ClassifierAlign(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class TargetData(_Section):
    split: Literal["test", "val"] = Field(
        "test", description="'val' to tune hyper-parameters; 'test' only for the reported numbers."
    )
    corruptions: tuple[str, ...] = CORRUPTIONS
    severity: int = Field(5, ge=1, le=5)
    include_clean: bool = True
    shard_maxcount: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _known(self) -> "TargetData":
        from sda.domains.corruptions import available_corruptions

        unknown = sorted(set(self.corruptions) - set(available_corruptions()))
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; choose from {sorted(available_corruptions())}")
        if len(set(self.corruptions)) != len(self.corruptions):
            raise ValueError("corruptions are listed twice")
        return self


class Evaluate(_Section):
    grid_images: int = Field(8, ge=1, le=64, description="Images per domain in the projection grid.")
    batch_size: int = Field(512, ge=1)


class Relabel(_Section):
    """Batch relabelling of new target images (``flows/relabel.py``); paths are relative to the repo."""

    inbox: str = Field("data/inbox", description="Folder watched for new images (nested; jpg/png/webp/tar).")
    labels: str = Field("data/labels", description="Parquet dataset of labels, partitioned by date.")
    quarantine: str = Field("data/quarantine", description="Bad files (files/) and their Parquet table (table/).")
    batch_size: int = Field(256, ge=1, description="Images per batch: the unit of commit and of resume.")
    interval_minutes: float = Field(10.0, gt=0, description="Period of the relabel/scheduled deployment.")
    max_file_bytes: int = Field(50_000_000, ge=1, description="Larger files are quarantined unread.")
    max_pixels: int = Field(40_000_000, ge=1, description="Width x height limit, checked before decoding.")
    min_side: int = Field(8, ge=1, description="Smaller images are quarantined.")
    min_age_seconds: float = Field(2.0, ge=0, description="Files modified more recently are left for the next run.")
    move_quarantined: bool = Field(True, description="Remove quarantined files from the inbox (after the copy).")
    lock_timeout_seconds: float = Field(3600.0, ge=0, description="How long a run waits for a running one.")
    grid_images: int = Field(8, ge=1, le=64, description="Images per predicted class in the batch grid.")


class Params(_Section):
    profile: Literal["embedded"] = Field(
        "embedded", description="Which domain to run; 'imagenet' arrives with the ImageNet profile."
    )
    runtime: Runtime = Runtime()
    source_data: SourceData = SourceData()
    source_model: SourceModel = SourceModel()
    diffusion_finetune: DiffusionFinetune = DiffusionFinetune()
    synth_generate: SynthGenerate = SynthGenerate()
    projection: Projection = Projection()
    classifier_align: ClassifierAlign = ClassifierAlign()
    target_data: TargetData = TargetData()
    evaluate: Evaluate = Evaluate()
    relabel: Relabel = Relabel()


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid parameter(s):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown parameter (typo? remove it or check the spelling against params.yaml)"
        got = e.get("input")
        got_s = f" (got {got!r})" if e["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        lines.append(f"  - {where}: {msg}{got_s}")
    return "\n".join(lines)


def parse_params(raw: Mapping[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a parsed ``params.yaml`` mapping; raise :class:`ParamsError` naming bad keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(dict(raw))
    except ValidationError as err:
        raise ParamsError(_format(err, source)) from None
