"""The evaluate stage's human-facing reports (sda.method.report): the results table, the synthetic
domain's checks, the plot CSV, the grids of originals vs projections and the confusion matrices."""

import csv
import io

import numpy as np
from PIL import Image

from sda.method.report import (alignment_markdown, confusion_matrix, confusion_png, grid_png, paired_markdown,
                               png_bytes, projection_grid, results_markdown, synthetic_grid_png, write_plot_csv)
from sda.method.scoring import MAIN_METHODS, paired_comparison

LABEL_W = 130  # the label column left of every grid (projection_grid, confusion_png)


def _decode(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    return img.convert("RGB")


def _metrics():
    return {"domains": {"fog": {"source": 10.0, "dda": 20.26, "dda_ens": 30.0, "sda": 40.04, "aligned_proj": 1.0},
                        "scans": {"source": 50.0, "dda": 60.0, "dda_ens": 70.0, "sda": 81.96}},
            "mean": {"source": 10.0, "dda": 20.26, "dda_ens": 30.0, "sda": 40.04}}


def test_projection_grid_layout():
    rows = {d: (np.zeros((3, 16, 16, 3), np.uint8), np.full((3, 16, 16, 3), 255, np.uint8)) for d in ("a", "b")}
    img = projection_grid(rows, upscale=2)
    assert img.mode == "RGB"
    assert img.height == 4 * (32 + 2) + 2  # two domains x (original, projected) rows


def test_paired_markdown_rows_for_target_folders_and_a_count_for_corruptions():
    win = paired_comparison(np.array([True] * 30 + [False] * 70), np.array([False] * 100))
    tie = paired_comparison(np.array([True, False] * 50), np.array([False, True] * 50))
    paired = {"domains": {"scans": {"sda_vs_source": tie, "sda_vs_dda": win},
                          "fog": {"sda_vs_source": win, "sda_vs_dda": tie},
                          "snow": {"sda_vs_source": win, "sda_vs_dda": tie}},
              "corruptions": ["fog", "snow"]}
    md = paired_markdown(paired)
    assert "| scans | +0.0 [" in md and "+30.0 [" in md and "fog |" not in md
    assert "On the 2 corruptions: SDA above Source on 2, below on 0; above DDA on 0, below on 0" in md
    metrics = {"domains": {"scans": {m: 1.0 for m in MAIN_METHODS}}, "mean": {m: 1.0 for m in MAIN_METHODS},
               "paired": paired}
    assert md in results_markdown(metrics)


# results_markdown


def test_the_results_table_has_a_row_per_domain_then_the_corruption_mean_in_the_main_methods_columns():
    assert results_markdown(_metrics()).split("\n") == [
        "| domain | source | dda | dda_ens | sda |",
        "|---|---|---|---|---|",
        "| fog | 10.0 | 20.3 | 30.0 | 40.0 |",  # one decimal; aligned_proj is not a main method: no column
        "| scans | 50.0 | 60.0 | 70.0 | 82.0 |",
        "| **mean (corruptions)** | **10.0** | **20.3** | **30.0** | **40.0** |",
    ]


def test_the_results_table_names_only_the_domains_where_sdas_source_term_was_dropped():
    metrics = _metrics() | {"sda_source_term": {"collapse_share": 0.9, "domains": {
        "fog": {"top_class_share": 0.934, "dropped": True}, "scans": {"top_class_share": 0.95, "dropped": False}}}}
    md = results_markdown(metrics)
    assert ("\nSDA without its source term (evaluate.source_collapse_share: 0.9) on fog (93% of the originals in "
            "one class): the aligned model on the projections decides there.") in md
    assert "scans (" not in md
    kept = _metrics() | {"sda_source_term": {"collapse_share": 0.9, "domains": {
        "fog": {"top_class_share": 0.95, "dropped": False}}}}
    assert results_markdown(kept) == results_markdown(_metrics())  # nothing dropped: no line


def test_the_results_table_reports_an_unlabelled_domains_five_commonest_sda_labels_by_count():
    counts = {"cat": 1, "dog": 3, "ant": 2, "bee": 1, "elk": 5, "fox": 4}
    md = results_markdown(_metrics() | {"unlabelled": {"scans": {"images": 16, "sda_counts": counts}}})
    assert md.endswith("\n\nUnlabelled `scans`: 16 images labelled by SDA (elk 5, fox 4, dog 3, ant 2, cat 1; "
                       "metrics/predictions.csv).")
    assert "bee" not in md  # the sixth class, tied with cat but counted after it


def test_the_results_table_states_the_projection_cost_and_ends_with_the_alignment_checks():
    compute = {"projection": {"method": "dds", "forward_equivalents_per_image": 12.5, "forwards": 10, "backwards": 5,
                              "images": 4}}
    alignment = {"warnings": ["the synthetic images look alike"]}
    md = results_markdown(_metrics() | {"compute": compute, "alignment": alignment})
    cost = ("\nProjection cost (dds): 12.5 UNet forward-equivalents per target image (10 forwards and 5 "
            "input-gradient backwards for 4 images; the source model needs none).")
    assert cost in md
    assert md.endswith("\n" + alignment_markdown(alignment))
    assert md.index(cost) < md.index("Synthetic domain")


# alignment_markdown


def test_the_alignment_table_has_a_row_per_check_then_the_fallback_and_each_warning():
    diagnostics = {
        "diffusion_probe": {"images": 50, "selected_step": 300, "trained_steps": 500, "target": 60.0, "accuracy": 72.34},
        "synthetic": {"synth_generate": {"accuracy": 80.0, "images": 30,
                                         "per_class": {"cat": 90.0, "dog": 40.0, "elk": 55.4, "fox": 100.0}},
                      "synth_align": {"accuracy": 91.0, "images": 30, "per_class": {"cat": 100.0, "dog": 82.0}}},
        "projected_val": {"images": 20, "source_original": 95.0, "source": 85.56, "aligned": 90.0, "selected_epoch": 3},
        "fallback": True,
        "warnings": ["first", "second"],
    }
    assert alignment_markdown(diagnostics).split("\n") == [
        "Synthetic domain, measured without target labels:",
        "",
        "| check | top-1 % |",
        "|---|---|",
        "| source model on the diffusion model's probe samples (50 images; step 300 of 500 kept, target 60) | 72.3 |",
        "| source model on the synth_generate images, intended class (30 images; weakest: dog: 40, elk: 55) | 80.0 |",
        "| source model on the synth_align images, intended class (30 images; weakest: dog: 82, cat: 100) | 91.0 |",
        "| source model on the source val split (20 images), originals | 95.0 |",
        "| source model on the projected source val split | 85.6 |",
        "| aligned model on the projected source val split, epoch 3 | 90.0 |",
        "",
        "The aligned model was rejected on the projected source val split: **the sda column is DDA's prediction** "
        "(classifier_align fell back).",
        "",
        "**Warning** first",
        "",
        "**Warning** second",
    ]


def test_the_alignment_table_leaves_out_the_checks_that_were_not_made():
    assert alignment_markdown({}).split("\n") == ["Synthetic domain, measured without target labels:", "",
                                                  "| check | top-1 % |", "|---|---|"]
    md = alignment_markdown({"projected_val": {"images": 4, "source_original": 1.0, "source": 2.0, "aligned": 3.0},
                             "fallback": False})
    assert md.endswith("\n| aligned model on the projected source val split | 3.0 |")  # no epoch, no fallback line
    assert "probe" not in md and "intended class" not in md


# write_plot_csv


def test_the_plot_csv_has_a_row_per_domain_then_the_mean_in_the_main_methods_columns(tmp_path):
    path = tmp_path / "per_domain.csv"
    path.write_text("stale\n")
    write_plot_csv(_metrics(), path)
    text = path.read_text()
    assert text.startswith("domain,source,dda,dda_ens,sda\n")
    assert list(csv.reader(io.StringIO(text))) == [
        ["domain", "source", "dda", "dda_ens", "sda"],
        ["fog", "10.0", "20.26", "30.0", "40.04"],  # full precision, unlike the table; aligned_proj left out
        ["scans", "50.0", "60.0", "70.0", "81.96"],
        ["mean", "10.0", "20.26", "30.0", "40.04"],
    ]
    assert list(tmp_path.iterdir()) == [path]  # replaced in place, no temporary file left


# projection_grid, grid_png, synthetic_grid_png, png_bytes


def _rows():
    """Domain a: 3 images, originals one colour, projections another; domain b: 1 image of each."""
    a = (np.full((3, 16, 16, 3), (10, 20, 30), np.uint8), np.full((3, 16, 16, 3), (200, 100, 50), np.uint8))
    b = (np.full((1, 16, 16, 3), (1, 2, 3), np.uint8), np.full((1, 16, 16, 3), (7, 8, 9), np.uint8))
    return {"a": a, "b": b}


def test_a_projection_grid_shows_each_domains_originals_above_their_projections_black_where_a_domain_has_fewer():
    img = projection_grid(_rows(), upscale=2)
    tile = 32 + 2  # upscaled 16 px image and the grid's 2 px padding
    assert img.size == (LABEL_W + 3 * tile + 2, 4 * tile + 2)  # 3 columns: the largest domain's images

    def at(row, col):  # the middle of a tile
        return img.getpixel((LABEL_W + 2 + col * tile + 16, 2 + row * tile + 16))

    assert [at(0, c) for c in range(3)] == [(10, 20, 30)] * 3
    assert [at(1, c) for c in range(3)] == [(200, 100, 50)] * 3
    assert [at(2, c) for c in range(3)] == [(1, 2, 3), (0, 0, 0), (0, 0, 0)]
    assert [at(3, c) for c in range(3)] == [(7, 8, 9), (0, 0, 0), (0, 0, 0)]
    assert img.getpixel((LABEL_W + 2 + tile - 1, 10)) == (255, 255, 255)  # white padding between tiles


def test_a_grid_png_upscales_its_tiles_to_at_least_64_px():
    rows = {"a": _rows()["a"]}
    small = _decode(grid_png(rows, image_size=16))  # 16 px -> x4
    assert small.size == (LABEL_W + 3 * (64 + 2) + 2, 2 * (64 + 2) + 2)
    assert small.getpixel((LABEL_W + 2 + 63, 2 + 63)) == (10, 20, 30)  # a tile's last pixel, 64 px in
    large = _decode(grid_png(rows, image_size=128))  # already at least 64 px: not upscaled
    assert large.size == (LABEL_W + 3 * (16 + 2) + 2, 2 * (16 + 2) + 2)
    assert np.array_equal(np.asarray(large), np.asarray(projection_grid(rows, upscale=1)))


def test_png_bytes_encode_the_image_losslessly():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    back = _decode(png_bytes(img))
    assert back.size == (7, 5) and np.array_equal(np.asarray(back), np.asarray(img))


def test_the_synthetic_grid_is_the_projection_grid_with_its_second_row_labelled_after_synth_align():
    rows = _rows()
    synthetic, grid = np.asarray(_decode(synthetic_grid_png(rows, 16))), np.asarray(_decode(grid_png(rows, 16)))
    assert synthetic.shape == grid.shape
    assert np.array_equal(synthetic[:, LABEL_W:], grid[:, LABEL_W:])  # the same tiles
    assert not np.array_equal(synthetic[:, :LABEL_W], grid[:, :LABEL_W])  # another label on the second rows
    assert np.array_equal(synthetic, np.asarray(projection_grid(rows, upscale=4, second="after synth_align")))


def test_a_synthetic_grid_without_images_is_a_one_line_note():
    note = _decode(synthetic_grid_png({}, 16))
    assert note.size == (8 * len("no synthetic images") + 12, 30)
    assert (np.asarray(note) < 128).any()  # some dark text on the white


# confusion_matrix, confusion_png


def test_a_confusion_matrix_counts_each_actual_class_in_its_row_and_each_prediction_in_its_column():
    actual, predicted = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(actual, predicted, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert cm.trace() == 4 and cm.sum() == 6
    wider = confusion_matrix(actual, predicted, 4)  # a class with no image: an empty row and column
    assert wider.shape == (4, 4) and wider[:3, :3].tolist() == cm.tolist() and wider[3].sum() == wider[:, 3].sum() == 0
    assert confusion_matrix(np.array([], np.int64), np.array([], np.int64), 2).tolist() == [[0, 0], [0, 0]]


def test_a_confusion_png_draws_each_row_normalised_matrix_per_domain_and_method():
    cm = np.array([[3, 1], [0, 0]])  # class 0: 3 of 4 right; class 1: no image
    matrices = {"fog": {"source": cm, "sda": np.eye(2, dtype=np.int64)},
                "snow": {"source": np.array([[0, 2], [0, 5]]), "sda": cm}}
    img = _decode(confusion_png(matrices, side=160))  # 2 classes: 80 px cells, 160 px tiles
    tile, head = 160 + 4, 16
    assert img.size == (LABEL_W + 2 * tile + 4, head + 2 * tile + 4)

    def cell(domain, method, r, c):
        return img.getpixel((LABEL_W + 4 + method * tile + c * 80 + 40, head + 4 + domain * tile + r * 80 + 40))

    white, full, three_quarters, quarter = (255, 255, 255), (38, 89, 191), (92, 131, 207), (201, 214, 239)
    assert [cell(0, 0, r, c) for r in (0, 1) for c in (0, 1)] == [three_quarters, quarter, white, white]
    assert [cell(0, 1, r, c) for r in (0, 1) for c in (0, 1)] == [full, white, white, full]
    assert [cell(1, 0, r, c) for r in (0, 1) for c in (0, 1)] == [white, full, white, full]
    assert [cell(1, 1, r, c) for r in (0, 1) for c in (0, 1)] == [three_quarters, quarter, white, white]
    scaled = {d: {m: 10 * v for m, v in per.items()} for d, per in matrices.items()}
    assert confusion_png(scaled, side=160) == confusion_png(matrices, side=160)  # shares, not counts


def test_a_confusion_png_is_a_note_without_a_labelled_domain_or_with_too_many_classes():
    empty = _decode(confusion_png({}))
    assert empty.size == (8 * len("no labelled target domain: nothing to compare") + 12, 30)
    many = _decode(confusion_png({"fog": {"source": np.zeros((3, 3), np.int64)}}, max_classes=2))
    assert many.size == (8 * len("3 classes: too many to draw here; dvc plots show metrics/confusion") + 12, 30)
    assert _decode(confusion_png({"fog": {"source": np.zeros((3, 3), np.int64)}}, max_classes=3)).height > 30
