"""What people see of the relabel service: the alert of a drifted batch, the batch's grid found by id only,
the picture of the last runs."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from sda.relabel.report import BatchReport, drift_alert_markdown, find_grid, history_png, write_report

BID = "0123456789abcdef"


def test_find_grid_reads_the_batch_grid_and_nothing_an_id_could_point_elsewhere(tmp_path):
    reports = tmp_path / "_reports"
    write_report(reports, BatchReport(batch_id=BID, grid_png=b"\x89PNG grid"))
    assert find_grid(reports, BID) == b"\x89PNG grid"
    (tmp_path / "secret.png").write_bytes(b"secret")
    for bad in ("../secret", "../../secret", "0123456789ABCDEF", "", BID + "0"):
        assert find_grid(reports, bad) is None
    other = "fedcba9876543210"
    day = next(reports.iterdir())
    os.symlink(tmp_path / "secret.png", day / f"{other}.png")  # a link is not followed
    assert find_grid(reports, other) is None
    assert find_grid(tmp_path / "none", BID) is None


def test_the_alert_names_the_batch_its_tests_and_shares_and_embeds_the_grid():
    alert = {"batch_id": BID, "images": 54, "estimated_accuracy": 31.5, "reference_accuracy": 52.0,
             "accuracy_drop": 20.5, "low_confidence": 68.5, "inbox": "/data/inbox/cam-7", "checkout": "/repo",
             "tests": {"labels": {"statistic": 210.4, "p": 1e-40}, "confidence": {"statistic": 0.3, "p": 2e-4}},
             "label_shares": {"cat": 0.9, "dog": 0.1}, "reference_label_shares": {"cat": 0.5, "dog": 0.5}}
    md = drift_alert_markdown(alert, b"png-bytes")
    assert md.startswith(f"# Drift in relabel batch `{BID}`") and "/data/inbox/cam-7" in md
    assert "**31.5 %**" in md and "| labels | 210.4 | 1e-40 |" in md and "| confidence | 0.3 | 0.0002 |" in md
    assert "| cat | 90.0 % | 50.0 % |" in md and "| dog | 10.0 % | 50.0 % |" in md
    assert "data:image/png;base64,cG5nLWJ5dGVz" in md
    assert "data:image" not in drift_alert_markdown(alert)


def test_the_history_picture_has_a_column_per_run_and_marks_the_drifted_ones():
    runs = [{"images": 100, "label_shares": {"a": 0.6, "b": 0.4}, "estimated_accuracy": 50.0,
             "mean_confidence": 0.7, "drifted": i == 2} for i in range(30)]
    img = np.asarray(Image.open(io.BytesIO(history_png(runs, column=20))).convert("RGB"))
    assert img.shape[1] >= 34 + 20 * 30
    marks = [x for x in range(img.shape[1]) if (img[20:34, x] == (220, 0, 0)).all(-1).any()]
    assert marks and 34 + 2 * 20 <= min(marks) and max(marks) < 34 + 3 * 20  # the third column only
