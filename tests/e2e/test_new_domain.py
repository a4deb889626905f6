"""Adding a domain is one module plus its params.yaml section: a domain written here (coloured discs,
its own params section ``cells``) is dropped into a copy of the project, and the whole pipeline runs on
it with no other project file edited."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests.support import copy_repo, sh

pytestmark = pytest.mark.slow

CELLS = '''"""A domain of coloured discs on noise, one class per colour (a test's)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from sda.config import Params, Section
from sda.domains.corruptions import write_shifted_domains
from sda.domains.registry import Domain, register_domain
from sda.io.atomic import atomic_dir, atomic_write_json
from sda.io.shards import Sample, load_shards, write_shards
from sda.io.target_index import TargetIndex

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}


class Cells(Section):
    image_size: int = Field(16, ge=16, le=64)
    per_class: int = Field(20, ge=4)


def _discs(cfg: Cells, seed: int, n: int):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: cfg.image_size, : cfg.image_size]
    for i in range(n):
        label = i % len(COLOURS)
        image = rng.integers(0, 80, (cfg.image_size, cfg.image_size, 3))
        cy, cx = rng.uniform(4, cfg.image_size - 4, 2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(9, 20)] = list(COLOURS.values())[label]
        yield image.astype(np.uint8), label


def write_source(params: Params, out):
    cfg = params.cells
    sizes = {"train": 3 * cfg.per_class, "val": 3 * cfg.per_class // 2, "test": 3 * cfg.per_class // 2}
    with atomic_dir(out) as tmp:
        for k, (split, n) in enumerate(sizes.items()):
            (tmp / split).mkdir()
            write_shards((Sample(key=f"{split}-{i:04d}", image=im, label=y)
                          for i, (im, y) in enumerate(_discs(cfg, params.runtime.seed + k, n))), tmp / split,
                         meta={"split": split, "image_size": cfg.image_size})
        atomic_write_json(tmp / "classes.json", {"names": list(COLOURS)})
    return sizes


def write_targets(params: Params, source_dir, out):
    cfg = params.target_data
    domains = ["clean", *cfg.corruptions]
    with atomic_dir(out) as tmp:
        write_shifted_domains(load_shards(source_dir / cfg.split), tmp, domains, severity=cfg.severity,
                              seed=params.runtime.seed, maxcount=cfg.shard_maxcount, meta={"split": cfg.split})
        TargetIndex(domains=tuple(domains), corruptions=tuple(cfg.corruptions), in_mean=tuple(cfg.corruptions),
                    split=cfg.split, severity=cfg.severity).write(tmp)
    return domains


register_domain(Domain(name="cells", description="coloured discs on noise (a test's domain)", sections=("cells",),
                       params_model=Cells, image_size=lambda p: p.cells.image_size, write_source=write_source,
                       write_targets=write_targets, severities=lambda p: [p.target_data.severity]))
'''


def test_a_new_domain_is_one_module_and_its_params_section(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo, {"profile": "cells", "cells": {"image_size": 16, "per_class": 20}, "profiles": {"cells": {}}})
    (repo / "sda" / "domains" / "cells.py").write_text(CELLS)
    assert sh(repo, "git", "status", "--porcelain").stdout.split() == ["??", "sda/domains/cells.py"]

    # its section is validated by its own model, like a built-in domain's
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["cells"]["per_class"] = 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params))
    bad = sh(repo, sys.executable, "-m", "tasks.source_data", "--params", str(tmp_path / "bad.yaml"), check=False)
    assert bad.returncode == 2 and "cells.per_class" in bad.stderr, bad.stderr[-2000:]

    r = sh(repo, "dvc", "repro", "evaluate", timeout=1500)  # every stage that reads a domain (not streams)
    for stage in ("source_data", "source_model", "diffusion_finetune", "classifier_align", "target_data", "evaluate"):
        assert f"Running stage '{stage}'" in r.stdout, r.stdout[-2000:]
    assert json.loads((repo / "data" / "source_data" / "classes.json").read_text())["names"] == ["red", "green", "blue"]
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert metrics["protocol"]["profile"] == "cells"
    assert set(metrics["domains"]) == {"clean", "gaussian_noise", "pixelate"}
    assert all(0 <= metrics["domains"][d][m] <= 100 for d in metrics["domains"] for m in ("source", "dda", "sda"))
    # the module counts as code of the stages that read domains: `tasks.code_deps --write` would list it
    deps = sh(repo, sys.executable, "-m", "tasks.code_deps").stdout
    assert "sda/domains/cells.py" in next(line for line in deps.splitlines() if line.startswith("source_data:"))
    assert "sda/domains/cells.py" not in next(line for line in deps.splitlines() if line.startswith("synth_align:"))
