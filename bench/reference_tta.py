"""Our test-time-adaptation baselines against the test-time-adaptation library's own code, on the
pipeline's models and streams: the share of predictions both make alike, per domain, and both accuracies.

    python bench/reference_tta.py --reference <checkout>/classification [--methods bn tent ...]
        [--streams iid class_sorted] [--lr-scale 1 40] [--images-per-domain 540]

``--reference``: the ``classification`` folder of a checkout of mariodoebler/test-time-adaptation (its
``methods/``, ``utils/`` and ``augmentations/`` are imported as they are; the commit our modules cite is
8b2ed63). What the library imports beyond those (its model zoo, its data loaders) is replaced here by the
pipeline's: ``models.model`` gives our classifier behind a normalising layer (the library's models take
[0, 1] pixels) and LAME's split at the final linear layer; ``datasets.data_loading.get_source_loader``
gives the same source images EATA's Fisher information reads in our module. One patch: RoTTA's CPU path
calls ``loss_calculation(x)``, which takes no argument; the harness lets it take one. Our augmentations
draw from torch's global generator here (a generator of their own in the stage), and each implementation
runs a whole stream after the same seed, so both draw the same augmentations and dropout masks.

Reads ``data/`` (a run up to ``target_project`` and ``classifier_align``) and ``params.yaml``'s streams
section. Prints a table; exits 1 when a method agrees on fewer than ``--min-agree`` % of the predictions
of a domain or differs by more than ``--max-gap`` points of accuracy.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sda.config import load_params  # noqa: E402
from sda.io.target_index import TargetIndex  # noqa: E402
from sda.method.catalog import (MethodContext, StreamInputs, build_method, frozen_outputs,  # noqa: E402
                                 read_source_split)
from sda.method.stream_eval import load_target_set  # noqa: E402
from sda.method.streams import stream_batches  # noqa: E402
from sda.models.classifiers import final_linear, load_classifier  # noqa: E402
from sda.runtime import derive_seed  # noqa: E402

LIBRARY = {"bn": ("norm", "BNTest"), "tent": ("tent", "Tent"), "sar": ("sar", "SAR"), "eata": ("eata", "EATA"),
           "lame": ("lame", "LAME"), "roid": ("roid", "ROID"), "rotta": ("rotta", "RoTTA"), "cotta": ("cotta", "CoTTA")}
NO_LR = ("bn", "lame")


class Node(dict):
    """A yacs-like config: attribute access over nested dicts."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


def library_cfg(method: str, params, lr_scale: float, batch_size: int) -> Node:
    """The library's conf.py defaults, with its ImageNet-C yaml of ``method`` and our section's values."""
    p = params.streams.method_params(method) if method != "bn" else None
    optim = {"STEPS": 1, "LR": 1e-3, "METHOD": "SGD", "BETA": 0.9, "MOMENTUM": 0.9, "DAMPENING": 0.0,
             "NESTEROV": True, "WD": 0.0}
    if p is not None and hasattr(p, "lr"):
        optim["LR"] = p.lr * lr_scale
    if method == "rotta":
        optim["METHOD"] = "Adam"
    eata = params.streams.method_params("eata")
    cotta = params.streams.method_params("cotta")
    roid = params.streams.method_params("roid")
    rotta = params.streams.method_params("rotta")
    lame = params.streams.method_params("lame")
    sar = params.streams.method_params("sar")
    return Node(
        MODEL=Node(EPISODIC=False, RESET_AFTER_NUM_UPDATES=0, ARCH="sda_cnn3", ADAPTATION=method, CKPT_PATH=""),
        CORRUPTION=Node(DATASET="imagenet_c"), OPTIM=Node(optim), MIXED_PRECISION=False, DATA_DIR="",
        TEST=Node(WINDOW_LENGTH=1, BATCH_SIZE=batch_size, N_AUGMENTATIONS=cotta.augmentations),
        EATA=Node(MARGIN_E0=eata.margin, D_MARGIN=eata.d_margin or 0.4, FISHER_ALPHA=eata.fisher_alpha),
        SAR=Node(RESET_CONSTANT_EM=sar.reset_below),
        LAME=Node(AFFINITY=lame.affinity, KNN=lame.knn, SIGMA=1.0, FORCE_SYMMETRY=lame.force_symmetry),
        ROID=Node(USE_WEIGHTING=roid.weighting, USE_PRIOR_CORRECTION=roid.prior_correction,
                  USE_CONSISTENCY=roid.consistency, MOMENTUM_SRC=roid.momentum_src, MOMENTUM_PROBS=roid.momentum_probs,
                  TEMPERATURE=roid.temperature),
        ROTTA=Node(MEMORY_SIZE=rotta.memory_size, UPDATE_FREQUENCY=rotta.update_every, NU=rotta.nu, ALPHA=rotta.alpha,
                   LAMBDA_T=rotta.lambda_t, LAMBDA_U=rotta.lambda_u),
        M_TEACHER=Node(MOMENTUM=cotta.teacher_momentum), COTTA=Node(RST=cotta.restore, AP=cotta.ap or 0.92),
        SOURCE=Node(NUM_SAMPLES=eata.fisher_images, PERCENTAGE=1.0, NUM_WORKERS=0))


class Normalise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def install_shims(reference: Path, source_images: np.ndarray, image_size: int) -> None:
    """The library's imports that are not its methods: our model zoo and source loader."""
    sys.path.insert(0, str(reference))
    methods = types.ModuleType("methods")  # its __init__ imports every method (and their model zoo): skip it
    methods.__path__ = [str(reference / "methods")]
    sys.modules["methods"] = methods
    models = types.ModuleType("models")
    model_mod = types.ModuleType("models.model")

    class ResNetDomainNet126(nn.Module):  # only named in isinstance checks
        pass

    def split_up_model(model, arch, dataset):
        """Everything before the final linear layer, and that layer (LAME's features)."""
        head = final_linear(model)

        class Features(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                out = []
                h = head.register_forward_hook(lambda _m, inp, _o: out.append(inp[0].flatten(1)))
                try:
                    self.model(x)
                finally:
                    h.remove()
                return out[0]
        return Features(), head

    model_mod.ResNetDomainNet126, model_mod.split_up_model = ResNetDomainNet126, split_up_model
    models.model = model_mod
    sys.modules.update({"models": models, "models.model": model_mod})
    datasets = types.ModuleType("datasets")
    loading = types.ModuleType("datasets.data_loading")

    def get_source_loader(batch_size, **_):
        x = torch.from_numpy(source_images).permute(0, 3, 1, 2).float() / 255.0
        data = torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
        return data, torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)

    loading.get_source_loader = get_source_loader
    datasets.data_loading = loading
    sys.modules.update({"datasets": datasets, "datasets.data_loading": loading})


def library_method(name: str, cfg: Node, classifier, image_size: int):
    import importlib
    import torchvision.transforms as T

    module, cls = LIBRARY[name]
    klass = getattr(importlib.import_module(f"methods.{module}"), cls)
    if name == "rotta":  # the library's CPU path passes x to a method that takes no argument
        original = klass.loss_calculation
        klass.loss_calculation = lambda self, *_: original(self)
    pre = classifier.preprocessing
    model = nn.Sequential(Normalise(pre["mean"], pre["std"]), copy.deepcopy(classifier.module))
    model.model_preprocess = T.Compose([T.Resize((image_size, image_size))])  # the augmentations' size
    return klass(cfg, model, int(classifier.config["num_classes"]))


def run_stream(method, batches, ts, frozen, *, seed: int, library: bool) -> np.ndarray:
    """Predictions of ``method`` (ours or the library's) along ``batches``, torch's global generator seeded
    with ``seed`` first: both implementations draw their augmentations and dropout from it in the same
    order (ours draw augmentations from a generator of their own in the stage; here from the global one)."""
    torch.manual_seed(seed)
    pred = np.full(len(ts.labels), -1)
    for batch in batches:
        idx = batch.indices
        if batch.reset:
            method.reset()
        if library:
            x = torch.from_numpy(ts.originals[idx]).permute(0, 3, 1, 2).float() / 255.0
            pred[idx] = method(x).argmax(1).detach().numpy()
        else:
            inputs = StreamInputs(ts.originals[idx], ts.projections[idx], [ts.keys[i] for i in idx],
                                  {k: v[idx] for k, v in frozen.items()})
            pred[idx] = method(inputs).argmax(1).numpy()
    return pred


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="<test-time-adaptation checkout>/classification")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--methods", nargs="+", default=["bn", "tent", "sar", "eata", "lame", "roid", "rotta"])
    ap.add_argument("--streams", nargs="+", default=["iid", "class_sorted"])
    ap.add_argument("--lr-scale", nargs="+", type=float, default=[1.0, 40.0])
    ap.add_argument("--images-per-domain", type=int, default=None)
    ap.add_argument("--min-agree", type=float, default=99.0)
    ap.add_argument("--max-gap", type=float, default=0.5)
    args = ap.parse_args(argv)

    import sda.method.catalog  # noqa: F401  (registers the method sections before the params are read)

    torch.set_num_threads(2)
    params = load_params(args.params)
    cfg = params.streams
    seed = derive_seed(params.runtime.seed, "streams")
    domains = TargetIndex.read(args.data / "target_data").labelled_in_mean
    ts = load_target_set(args.data / "target_data", args.data / "target_project", domains, seed=seed,
                         images_per_domain=args.images_per_domain)
    source = load_classifier(args.data / "source_model", "cpu")
    aligned = load_classifier(args.data / "classifier_align", "cpu")
    frozen = frozen_outputs(source, aligned, ts.originals, ts.projections, torch.device("cpu"))
    split = read_source_split(args.data / "source_data")
    eata = cfg.method_params("eata")
    fisher, _ = split(eata.fisher_split)
    pick = np.sort(np.random.default_rng(derive_seed(seed, "eata", "fisher"))
                   .permutation(len(fisher))[: eata.fisher_images])
    install_shims(args.reference, fisher[pick], ts.originals.shape[1])
    from sda.method.baselines import augment

    augment.SeededAugment.__call__ = lambda self, x: self.transform(x)  # the global generator, as the library
    dom = ts.domain_index
    failed = []
    print(f"{'method':8} {'stream':13} {'lr x':>5} {'agree % (min over domains)':>27} {'ours':>6} {'library':>8}")
    for name in args.methods:
        for stream in args.streams:
            spec = cfg.streams[stream]
            batches = stream_batches(ts.sizes, ts.labels, order=spec.order, batch_size=spec.batch_size, seed=seed,
                                     name=stream, delta=spec.delta)
            for scale in ([1.0] if name in NO_LR else args.lr_scale):
                section = cfg.method_params(name) if name != "bn" else None
                streams_cfg = cfg
                if section is not None and hasattr(section, "lr") and scale != 1.0:
                    raw = cfg.model_dump()
                    raw[name] = {**section.model_dump(), "lr": section.lr * scale}
                    streams_cfg = type(cfg).model_validate(raw)
                ctx = MethodContext(source=source, aligned=aligned, streams=streams_cfg, params=None,
                                    device=torch.device("cpu"), seed=seed,
                                    num_classes=int(source.config["num_classes"]), batch_size=spec.batch_size,
                                    source_split=split)
                ours = build_method(name, ctx)
                lib = library_method(name, library_cfg(name, params, scale, spec.batch_size), source,
                                     ts.originals.shape[1])
                a = run_stream(ours, batches, ts, frozen, seed=derive_seed(seed, "reference", name, stream), library=False)
                b = run_stream(lib, batches, ts, frozen, seed=derive_seed(seed, "reference", name, stream), library=True)
                agree = [float((a[dom == j] == b[dom == j]).mean() * 100) for j in range(len(ts.sizes))]
                acc_a = np.mean([(a[dom == j] == ts.labels[dom == j]).mean() * 100 for j in range(len(ts.sizes))])
                acc_b = np.mean([(b[dom == j] == ts.labels[dom == j]).mean() * 100 for j in range(len(ts.sizes))])
                ok = min(agree) >= args.min_agree and abs(acc_a - acc_b) <= args.max_gap
                failed += [] if ok else [f"{name}/{stream}/x{scale:g}"]
                print(f"{name:8} {stream:13} {scale:5g} {np.mean(agree):14.2f} ({min(agree):6.2f})     "
                      f"{acc_a:6.2f} {acc_b:8.2f}{'' if ok else '  <- differs'}", flush=True)
    if failed:
        print("differ:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
