"""The streams stage's table and heatmap (sda.method.streams_report), from a hand-written metrics file. The
table of a real streams run is checked in test_stream_eval.py."""

import io

from PIL import Image

from sda.method.streams_report import streams_heatmap_png, streams_markdown


def _method(worst, stream):
    return {"worst": worst, "worst_stream": stream, "spread": 10.0,
            "cost_per_image": {"unet_forward_equivalents": 0, "classifier_forwards": 1, "classifier_backwards": 0}}


METRICS = {
    "streams": {
        "iid": {"source": {"mean": 50.0, "images_per_domain": 100}, "tent": {"mean": 60.0, "images_per_domain": 100},
                "sda+bn": {"mean": 55.0, "images_per_domain": 100, "guard": {"adapted": 30, "concentrated": 70}}},
        "correlated": {"source": {"mean": 50.0, "images_per_domain": 100},
                       "tent": {"mean": 20.0, "images_per_domain": 100}},
    },
    "methods": {"source": _method(50.0, "iid"), "tent": _method(20.0, "correlated"), "sda+bn": _method(55.0, "iid")},
    "protocol": {"streams": {"iid": {"batch_size": 64}}},
}


def test_the_table_has_a_row_per_method_and_bolds_the_best_of_each_stream():
    lines = streams_markdown(METRICS).splitlines()
    assert lines[0].startswith("| method | iid (b64, 100/domain) | correlated | worst (same images) |")
    rows = {line.split(" | ")[0]: line for line in lines[2:5]}
    assert list(rows) == ["| source", "| tent", "| sda+bn"]  # in the order the streams first name them
    assert "| 50.0 | **50.0** | 50.0 (iid) |" in rows["| source"]
    assert "| **60.0** | 20.0 | 20.0 (correlated) |" in rows["| tent"]
    assert "| 55.0 | – |" in rows["| sda+bn"]  # a method a stream did not run


def test_the_notes_say_where_the_guard_adapted_and_how_the_columns_compare():
    plain = streams_markdown(METRICS)
    assert "Guard: iid/sda+bn: adapted on 30 % of images." in plain
    assert "source_collapse_share" not in plain and "images per domain every stream" not in plain
    first = METRICS["streams"]["iid"]
    noted = streams_markdown({
        **METRICS, "common_images_per_domain": 40, "protocol": {**METRICS["protocol"], "evaluate_source_collapse_share": 0.6},
        "streams": {**METRICS["streams"], "iid": {**first, "tent": {**first["tent"], "source_same_images": 48.31}}}})
    assert "on the 40 images per domain every stream evaluated" in noted
    assert "tent: on 100 images per domain (streams.tent.images_per_domain), where the source model gets 48.3." in noted
    assert "over 0.6 of the originals" in noted


def test_the_heatmap_runs_from_white_at_the_lowest_to_blue_at_the_highest():
    png = Image.open(io.BytesIO(streams_heatmap_png(METRICS, cell=(76, 22)))).convert("RGB")
    assert png.size == (80 + 2 * 76 + 4, 24 + 3 * 22 + 4)

    def cell(row, col):  # a pixel of the cell's fill, away from its number
        return png.getpixel((80 + col * 76 + 2, 24 + row * 22 + 2))

    assert cell(1, 0) == (40, 90, 200) and cell(1, 1) == (255, 255, 255)  # tent: 60 (the highest), 20 (the lowest)
    assert cell(0, 0) == tuple(round(255 - 0.75 * (255 - c)) for c in (40, 90, 200))  # 50: three quarters up
    assert cell(2, 1) == (255, 255, 255)  # no value: no fill
