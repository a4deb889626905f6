"""The ImageNet profile end to end on a tiny ImageNet-like set-up (class folders of JPEGs, the
ImageNet-C layout, a guided-diffusion-format ADM checkpoint, a diffusers DiT folder, timm weights:
tiny random-weight models of the real architectures), plus its readers and loaders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.support import IMAGENET_CORRUPTIONS, WNIDS, built_once, make_imagenet_repo, sh
from sda.domains.imagenet import center_crop_arr, class_names, imagenet_c_refs, list_images
from sda.io.shards import load_shards
from sda.method.scoring import MAIN_METHODS


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "inet", make_imagenet_repo)


@pytest.mark.slow
def test_imagenet_profile_stage_outputs(repo):
    data = repo / "data"
    info = json.loads((data / "diffusion_finetune" / "info.json").read_text())
    assert info["generator"] == "dit" and info["null_label"] is None and info["num_classes"] == 3

    # the projector is the converted guided-diffusion checkpoint, with the learned-range scheduler
    from diffusers import DDPMScheduler, UNet2DModel
    from sda.models.adm import load_adm_unet
    from tests.support import ADM_TINY_FLAGS

    saved = UNet2DModel.from_pretrained(data / "diffusion_finetune" / "unet").eval()
    direct = load_adm_unet(repo / "models" / "adm.pt", **ADM_TINY_FLAGS).eval()
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in saved.state_dict().items())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(saved(x, torch.tensor([500])).sample, direct(x, torch.tensor([500])).sample, atol=1e-5)
    assert DDPMScheduler.from_pretrained(data / "diffusion_finetune" / "scheduler").config.variance_type == "learned_range"

    synth, aligned = load_shards(data / "synth_generate"), load_shards(data / "synth_align")
    assert synth.images.shape == (6, 32, 32, 3) and sorted(synth.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert aligned.keys == synth.keys and (aligned.images != synth.images).any()

    domains = json.loads((data / "target_data" / "domains.json").read_text())
    assert domains["domains"] == ["clean", *IMAGENET_CORRUPTIONS, "imagenet_w"]
    assert domains["corruption_domains"] == IMAGENET_CORRUPTIONS
    clean = load_shards(data / "target_data" / "clean")
    first = sorted((repo / "datasets" / "val" / WNIDS[0]).iterdir())[0]
    assert clean.keys[0] == first.stem and clean.labels.tolist() == [0, 0, 1, 1, 2, 2]  # 2 per class
    with Image.open(first) as im:
        assert np.array_equal(clean.images[0], center_crop_arr(im, 32))
    for d in domains["domains"]:
        orig, proj = load_shards(data / "target_data" / d), load_shards(data / "target_project" / d)
        assert orig.keys == proj.keys == clean.keys and orig.images.shape == (6, 32, 32, 3)
    noisy = load_shards(data / "target_data" / "gaussian_noise")
    with Image.open(repo / "datasets" / "imagenet-c" / "gaussian_noise" / "5" / WNIDS[0] / first.name) as im:
        assert np.array_equal(noisy.images[0], center_crop_arr(im, 32))
    marked = load_shards(data / "target_data" / "imagenet_w")
    assert (marked.images != clean.images).any()  # the watermark is there

    src = json.loads((data / "source_model" / "config.json").read_text())
    assert (src["arch"], src["resize"], src["crop"], src["num_classes"]) == ("resnet18", 32, 28, 3)
    aligned_cfg = json.loads((data / "classifier_align" / "config.json").read_text())
    assert aligned_cfg["hyperparameters"]["optimizer"] == "sgd"  # the paper's ResNet recipe
    # the paper's path: the last epoch, no selection (ImageNet's source has no val split), the synthetic sets scored
    assert "selected_epoch" not in aligned_cfg and "fallback" not in aligned_cfg
    alignment = json.loads((repo / "metrics" / "alignment.json").read_text())
    assert alignment["projected_val"] is None and alignment["synthetic"]["synth_generate"]["images"] == 6

    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert set(metrics["domains"]) == set(domains["domains"])
    assert metrics["more"]["corruptions_in_mean"] == IMAGENET_CORRUPTIONS
    assert set(metrics["mean"]) == set(MAIN_METHODS)

    # the streams stage with the paper's classifier (a BN ResNet) and ADM's learned-range projector
    streams = json.loads((repo / "metrics" / "streams.json").read_text())
    assert streams["protocol"]["domains"] == IMAGENET_CORRUPTIONS and streams["protocol"]["images"] == 12
    iid = streams["streams"]["iid"]
    assert {"bn", "tent", "sar", "memo", "diffpure", "sda+bn", "sda+tent"} <= set(iid)
    assert iid["tent"]["classifier_backwards"] > 0 and iid["diffpure"]["unet_forward_equivalents"] > 0


@pytest.mark.slow
def test_streams_on_a_list_of_image_ids(repo, tmp_path):
    """streams.image_ids (RobustBench's helper_files/imagenet_test_image_ids.txt on real ImageNet): only the
    listed images are evaluated, whatever their folder in the list; a missing list is a one-line error."""
    keys = load_shards(repo / "data" / "target_data" / "gaussian_noise").keys
    ids = tmp_path / "imagenet_test_image_ids.txt"
    ids.write_text("".join(f"{WNIDS[0]}/{k}.JPEG\n" for k in keys[:4]))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["streams"].update(image_ids=str(ids), methods=["source", "sda", "bn"], coupling_images=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    outs = [repo / "metrics" / f for f in ("streams.json", "streams.md", "streams.png")]
    kept = {p: p.read_bytes() for p in outs}
    try:
        sh(repo, sys.executable, "-m", "tasks.streams", "--params", str(tmp_path / "params.yaml"))
        m = json.loads(outs[0].read_text())
        assert m["protocol"]["images"] == 8 and set(m["streams"]["iid"]) == {"source", "sda", "bn"}
        params["streams"]["image_ids"] = str(tmp_path / "missing.txt")
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        r = sh(repo, sys.executable, "-m", "tasks.streams", "--params", str(tmp_path / "params.yaml"), check=False)
        assert r.returncode == 2 and "streams.image_ids" in r.stderr and "Traceback" not in r.stderr
    finally:
        for p, b in kept.items():
            p.write_bytes(b)


@pytest.mark.slow
def test_imagenet_profile_is_cached_and_errors_name_the_file(repo):
    r = sh(repo, "dvc", "repro")
    assert "Running stage" not in r.stdout  # everything cached
    params = (repo / "params.yaml").read_text()
    try:
        (repo / "params.yaml").write_text(params.replace("models/resnet18.pth", "models/missing.pth"))
        r = sh(repo, "python", "-m", "tasks.source_model", check=False)
        assert r.returncode == 2
        assert "models/missing.pth" in r.stderr and "torchvision" in r.stderr
    finally:
        (repo / "params.yaml").write_text(params)


def _tree_digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("stage, key, value, named", [
    ("diffusion_finetune", "adm_checkpoint", "models/no-adm.pt", "imagenet.adm_checkpoint models/no-adm.pt not found"),
    ("diffusion_finetune", "dit", "models/no-dit", "models/no-dit"),
    ("target_data", "val_dir", "datasets/no-val", "datasets/no-val"),
    ("target_data", "imagenet_c_dir", "datasets/no-c", "datasets/no-c"),
    ("target_data", "corrupt val JPEG", None, "replace or remove the file"),
    ("target_data", "corrupt ImageNet-C JPEG", None, "replace or remove the file"),
])
def test_wrong_imagenet_paths_and_corrupt_files_through_the_stage(repo, stage, key, value, named):
    """Exit status 2, a message naming the path and what to do, the previous outputs untouched."""
    params_file = repo / "params.yaml"
    params = params_file.read_text()
    before = _tree_digest(repo / "data" / stage)
    broken: Path | None = None
    try:
        if value is not None:
            raw = yaml.safe_load(params)
            raw["imagenet"][key] = value
            params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        else:
            folder = repo / "datasets" / ("val" if "val" in key else "imagenet-c/gaussian_noise/5")
            broken = sorted(p for p in folder.rglob("*.JPEG"))[0]
            original = broken.read_bytes()
            broken.write_bytes(original[: len(original) // 3])  # truncated upload
            named = broken.name
        r = sh(repo, "python", "-m", f"tasks.{stage}", check=False)
    finally:
        params_file.write_text(params)
        if broken is not None:
            broken.write_bytes(original)
    assert r.returncode == 2, r.stderr[-2000:]
    assert named in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert _tree_digest(repo / "data" / stage) == before  # the last good outputs are intact
    assert not list((repo / "data").glob(f"{stage}.tmp-*"))  # nothing half-written left behind


@pytest.mark.slow
def test_a_full_disk_during_a_stage_is_a_user_error_that_keeps_the_outputs(repo):
    """target_data in a process whose file size limit its shards outgrow (the OS refuses the write,
    as on a full disk): exit 2, what to do, the previous outputs intact, nothing half-written."""
    import resource
    import signal
    import subprocess

    from tests.support import subprocess_env

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))

    before = _tree_digest(repo / "data" / "target_data")
    r = subprocess.run([sys.executable, "-m", "tasks.target_data"], cwd=repo, env=subprocess_env(), capture_output=True,
                       text=True, timeout=600, preexec_fn=limit)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "free disk space" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert _tree_digest(repo / "data" / "target_data") == before
    assert not list((repo / "data").glob("target_data.tmp-*"))


@pytest.mark.slow
def test_imagenet_finetuning_streams_the_source_images(repo, tmp_path, monkeypatch):
    """imagenet.finetune_steps > 0: ADM and DiT take that many steps over streamed, seeded batches
    that run over an epoch boundary (6 images, batch 4), and the same seed gives the same losses."""
    from diffusers import UNet2DModel
    from sda.io.shards import Sample, read_manifest, write_shards
    from sda.config import load_params
    from sda.domains import PretrainedDiffusion
    from tasks.diffusion_finetune import run_pretrained

    monkeypatch.chdir(repo)  # the profile's model paths are relative to the repository
    cfg = load_params(repo / "params.yaml").imagenet.model_copy(update={"finetune_steps": 3, "finetune_batch_size": 4})
    src = tmp_path / "source_data"
    (src / "train").mkdir(parents=True)
    (src / "classes.json").write_text((repo / "data" / "source_data" / "classes.json").read_text())
    clean = load_shards(repo / "data" / "target_data" / "clean")
    write_shards((Sample(key=k, image=im, label=int(y)) for k, im, y in zip(clean.keys, clean.images, clean.labels)),
                 src / "train", maxcount=2)
    assert read_manifest(src / "train")["count"] == 6
    infos = [run_pretrained(PretrainedDiffusion("imagenet"), cfg, 0, src, tmp_path / f"out{i}", "cpu") for i in range(2)]
    for name in ("adm", "dit"):
        losses = infos[0].losses[name]
        assert len(losses) == 3 and np.isfinite(losses).all() and losses == infos[1].losses[name]
    tuned = UNet2DModel.from_pretrained(tmp_path / "out0" / "unet").state_dict()
    original = UNet2DModel.from_pretrained(repo / "data" / "diffusion_finetune" / "unet").state_dict()
    assert any(not torch.equal(v, original[k]) for k, v in tuned.items())


def test_imagenet_readers_subset_and_errors(tmp_path):
    root = tmp_path / "val"
    for c, wnid in enumerate(WNIDS):
        for i in range(3):
            (root / wnid).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (30 + i, 20), (c * 80, 0, 0)).save(root / wnid / f"img_{c}_{i}.JPEG")
    names = class_names(root)
    assert names == WNIDS
    refs = list_images(root, names, classes=[WNIDS[2], "0"], per_class=2)
    assert [(r.key, r.label) for r in refs] == [("img_0_0", 0), ("img_0_1", 0), ("img_2_0", 2), ("img_2_1", 2)]
    with pytest.raises(ValueError, match="neither a class folder"):
        list_images(root, names, classes=["n99999999"])
    with pytest.raises(FileNotFoundError, match="zenodo"):
        imagenet_c_refs(tmp_path / "nowhere", "fog", 5, refs, names)
    # a flat val folder with a label file
    flat = tmp_path / "flat"
    flat.mkdir()
    lines = []
    for r in refs:
        Image.open(r.path).save(flat / f"{r.key}.JPEG")
        lines.append(f"{r.key}.JPEG {r.label}")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    names_flat = class_names(flat, tmp_path / "val.txt")
    again = list_images(flat, names_flat, label_file=tmp_path / "val.txt")
    assert [(r.key, r.label) for r in again] == [(r.key, r.label) for r in refs]
    (tmp_path / "bad.txt").write_text("a.JPEG\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        list_images(flat, names_flat, label_file=tmp_path / "bad.txt")


def test_center_crop_arr_matches_guided_diffusion_definition():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 900, 3), dtype=np.uint8))
    out = center_crop_arr(img, 256)
    # by hand: 600 >= 512 -> one BOX halving to 450x300, then bicubic to 384x256, crop x 64..320
    half = img.resize((450, 300), resample=Image.Resampling.BOX)
    expect = np.asarray(half.resize((384, 256), resample=Image.Resampling.BICUBIC))[:, 64:320]
    assert out.shape == (256, 256, 3) and np.array_equal(out, expect)


def test_sample_dit_depends_on_class_and_seed_only(tmp_path):
    from sda.method.sampling import sample_dit
    from sda.models.dit import load_dit

    make_dir = tmp_path / "m"
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    torch.manual_seed(0)
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                          sample_size=4, patch_size=2, num_embeds_ada_norm=1000).save_pretrained(make_dir / "transformer")
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8,
                  sample_size=32).save_pretrained(make_dir / "vae")
    transformer, vae = load_dit(make_dir)
    with torch.no_grad():  # give the zero-initialised output layers some weight
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    a = sample_dit(transformer, vae, [3, 7], [11, 12], steps=4)
    b = sample_dit(transformer, vae, [5, 7], [99, 12], steps=4)
    c = sample_dit(transformer, vae, [3, 7], [11, 12], steps=4, guidance_scale=2.0)
    assert a.shape == (2, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.allclose(a[1], b[1], atol=1e-5)  # same (class, seed), other batch-mate
    assert (a[0] - b[0]).abs().max() > 1e-3
    assert (a - c).abs().max() > 1e-4  # guidance changes the samples
    with pytest.raises(FileNotFoundError, match="transformer"):
        load_dit(tmp_path / "nothing")


def test_pretrained_classifier_loading(tmp_path):
    import timm
    from sda.models.classifiers import load_pretrained_classifier, paper_recipe

    torch.save({"state_dict": {f"module.{k}": v for k, v in timm.create_model("resnet18", num_classes=7).state_dict().items()}},
               tmp_path / "w.pth")
    model, n = load_pretrained_classifier("resnet18", tmp_path / "w.pth")
    assert n == 7 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    with pytest.raises(ValueError, match="does not fit"):
        load_pretrained_classifier("resnet34", tmp_path / "w.pth")
    with pytest.raises(FileNotFoundError, match="timm"):
        load_pretrained_classifier("resnet18", tmp_path / "nope.pth")
    assert paper_recipe("convnext_tiny")["grad_clip"] == 5.0 and paper_recipe("resnet50")["optimizer"] == "sgd"
    with pytest.raises(ValueError, match="no recipe"):
        paper_recipe("vit_base_patch16_224")
