"""sda.models.dit on a tiny DiT of the real architecture: the folder read (a missing part names the path
and the setting), the image side it generates, and a new class table that starts as the unconditional
model and survives a save and a load."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTTransformer2DModel

from sda.models.dit import WHERE_TO_GET_DIT, dit_image_size, load_dit, new_class_table
from tests.support import DIT_TINY
from tests.support.tiny_models import tiny_dit


@pytest.fixture
def dit():
    return tiny_dit()  # each test its own: some change the model


def _out(transformer, labels):
    """The prediction for one latent under each of ``labels``."""
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1)).expand(len(labels), -1, -1, -1)
    with torch.no_grad():
        return transformer(x, timestep=torch.tensor([500] * len(labels)), class_labels=torch.tensor(labels)).sample


@pytest.mark.parametrize("part", ["transformer", "vae"])
def test_a_missing_part_names_its_path_and_the_setting(dit, tmp_path, part):
    transformer, vae = dit
    transformer.save_pretrained(tmp_path / "transformer")
    vae.save_pretrained(tmp_path / "vae")
    (tmp_path / part / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / part}/config.json not found: folder.dit must be") as err:
        load_dit(tmp_path, key="folder.dit")
    assert WHERE_TO_GET_DIT in str(err.value)


def test_a_folder_loads_as_the_saved_models_in_eval_mode(dit, tmp_path):
    transformer, vae = dit
    transformer.save_pretrained(tmp_path / "transformer")
    vae.save_pretrained(tmp_path / "vae")
    t2, v2 = load_dit(tmp_path)
    assert not t2.training and not v2.training
    assert torch.equal(_out(t2, [3, 1000]), _out(transformer, [3, 1000]))


def test_the_image_side_is_the_latent_side_times_the_vaes_downsampling(dit):
    transformer, vae = dit
    assert dit_image_size(transformer, vae) == 4 * 2 ** 3  # 4 encoder blocks: 3 halvings
    assert dit_image_size(DiTTransformer2DModel(**{**DIT_TINY, "sample_size": 8}), vae) == 64


def test_a_new_class_table_starts_every_class_as_the_unconditional_model(dit):
    transformer, _ = dit
    null_before = _out(transformer, [1000])
    assert not torch.allclose(_out(transformer, [5]), null_before)  # the pretrained classes differ from null
    new_class_table(transformer, 3)
    assert transformer.config.num_embeds_ada_norm == 3
    for block in transformer.transformer_blocks:
        table = block.norm1.emb.class_embedder.embedding_table.weight
        assert table.shape[0] == 4 and torch.equal(table, table[3:].expand(4, -1))
    out = _out(transformer, [0, 1, 2, 3])
    assert torch.allclose(out, null_before.expand(4, -1, -1, -1), atol=1e-6)


def test_the_new_table_and_its_config_survive_a_save_and_a_load(dit, tmp_path):
    transformer, _ = dit
    new_class_table(transformer, 3)
    with torch.no_grad():
        transformer.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight[1] += 1.0  # as trained
    transformer.save_pretrained(tmp_path / "t")
    loaded = DiTTransformer2DModel.from_pretrained(tmp_path / "t").eval()
    assert loaded.config.num_embeds_ada_norm == 3
    assert torch.equal(_out(loaded, [0, 1, 2, 3]), _out(transformer, [0, 1, 2, 3]))
