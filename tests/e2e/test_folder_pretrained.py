"""The folder profile from pretrained diffusion models (``folder.adm_checkpoint`` + ``folder.dit``):
the DiT's new class table, the fine-tuning, and the whole pipeline on tiny random-weight models of
the same code path (an ADM in guided-diffusion's format, a diffusers DiT with ImageNet's table)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from tests.support import ADM_TINY_FLAGS, copy_repo, repro_every_stage, make_diffusion_models, make_folder_set
from sda.config import ParamsError, parse_params
from sda.io.shards import load_shards
from sda.method.sampling import sample_dit
from sda.models.dit import dit_image_size, load_dit, new_class_table

ROOT = Path(__file__).resolve().parents[2]


def test_a_new_class_table_starts_as_the_null_class_and_round_trips(tmp_path):
    models = make_diffusion_models(tmp_path)
    transformer, vae = load_dit(models / "dit")
    null = [b.norm1.emb.class_embedder.embedding_table.weight[1000].clone() for b in transformer.transformer_blocks]
    new_class_table(transformer, 4)
    assert transformer.config.num_embeds_ada_norm == 4 and dit_image_size(transformer, vae) == 32
    for block, row in zip(transformer.transformer_blocks, null):
        table = block.norm1.emb.class_embedder.embedding_table.weight
        assert table.shape[0] == 5 and all(torch.equal(r, row) for r in table)  # 4 classes + null, all null
    transformer.save_pretrained(tmp_path / "t")
    again = DiTTransformer2DModel.from_pretrained(tmp_path / "t", low_cpu_mem_usage=False).eval()
    assert again.config.num_embeds_ada_norm == 4
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), transformer.state_dict().values()))
    x = sample_dit(again, vae, [0, 3], [1, 2], steps=2, guidance_scale=2.0)  # guidance uses the null row 4
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


def test_adm_and_dit_are_set_together():
    raw = {"profile": "folder", "folder": {"source_dir": "images", "dit": "models/dit"}}
    with pytest.raises(ParamsError, match="folder.adm_checkpoint and folder.dit .* set both"):
        parse_params(raw).folder
    raw["folder"]["adm_checkpoint"] = "models/adm.pt"
    assert parse_params(raw).folder.pretrained


@pytest.mark.slow
def test_folder_pipeline_from_pretrained_adm_and_dit(tmp_path, monkeypatch):
    """Every stage up to evaluate on 16 px shapes with the tiny ADM (fine-tuned at 16 px) and DiT (a new 4-class table,
    fine-tuned at its own 32 px, samples brought down to 16 px); then the same fine-tuning again
    gives the same weights."""
    repo = tmp_path / "repo"
    repo.mkdir()
    make_folder_set(repo / "images", per_class=12, target_per_class=3, flat=0)
    make_diffusion_models(repo)
    folder = {"source_dir": "images/source", "target_dirs": {"site_b": "images/site_b"}, "image_size": 16,
              "adm_checkpoint": "models/adm.pt", "adm_flags": ADM_TINY_FLAGS, "dit": "models/dit",
              "finetune_steps": 3, "finetune_batch_size": 4}
    copy_repo(repo, {"profile": "folder", "folder": folder,
                      "profiles": {"folder": {"synth_generate": {"per_class": 2, "steps": 3}}}})
    repro_every_stage(repo, until="evaluate")  # streams reads the same models as target_project
    data = repo / "data"
    info = json.loads((data / "diffusion_finetune" / "info.json").read_text())
    assert (info["generator"], info["num_classes"], info["output_size"], info["null_label"]) == ("dit", 4, 16, None)
    assert [len(info["losses"][k]) for k in ("adm", "dit")] == [3, 3]
    assert json.loads((data / "diffusion_finetune" / "unet" / "config.json").read_text())["sample_size"] == 16
    dit_cfg = json.loads((data / "diffusion_finetune" / "dit" / "transformer" / "config.json").read_text())
    assert dit_cfg["num_embeds_ada_norm"] == 4
    synth = load_shards(data / "synth_generate")
    assert synth.images.shape[1:] == (16, 16, 3) and sorted(np.unique(synth.labels)) == [0, 1, 2, 3]
    assert load_shards(data / "synth_align").images.shape[1:] == (16, 16, 3)
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert {"site_b", "clean"} <= set(metrics["domains"])
    assert all(0 <= metrics["domains"]["site_b"][m] <= 100 for m in ("source", "dda", "sda"))
    assert metrics["alignment"]["synthetic"]["synth_generate"]["images"] == 8  # the CAS of 4 classes x 2
    # seeded: the same fine-tuning writes the same weights
    from sda.config import load_params
    from sda.runtime import set_deterministic, set_threads
    from sda.domains import get_domain
    from tasks.diffusion_finetune import run_pretrained

    params = load_params(repo / "params.yaml")
    set_threads(params.runtime.threads)  # as the stage ran (the bytes depend on it)
    set_deterministic(params.runtime.deterministic)
    monkeypatch.chdir(repo)  # the model paths are relative to the repository
    run_pretrained(get_domain("folder").pretrained_diffusion(params), params.folder, params.runtime.seed,
                   data / "source_data", tmp_path / "again", torch.device("cpu"))
    for sub in ("unet", "dit/transformer"):
        name = "diffusion_pytorch_model.safetensors"
        assert (tmp_path / "again" / sub / name).read_bytes() == (data / "diffusion_finetune" / sub / name).read_bytes()
