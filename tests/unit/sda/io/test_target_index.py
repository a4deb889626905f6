"""domains.json as one typed object: the three domains' files read and written back byte for byte, and
what the stages ask of it (labelled domains, the mean's domains, the generated corruptions)."""

from __future__ import annotations

import pytest

from sda.io.target_index import INDEX, TargetIndex

# the files the embedded, folder and ImageNet domains wrote before the index was typed, byte for byte
EMBEDDED = """{
  "domains": [
    "clean",
    "fog",
    "snow"
  ],
  "corruptions": [
    "fog",
    "snow"
  ],
  "corruption_domains": [
    "fog",
    "snow"
  ],
  "split": "val",
  "severity": 5
}
"""
FOLDER = """{
  "domains": [
    "site_b",
    "site_c",
    "clean",
    "fog"
  ],
  "corruptions": [
    "fog"
  ],
  "corruption_domains": [
    "site_b",
    "fog"
  ],
  "unlabelled": [
    "site_c"
  ],
  "split": "test",
  "severity": 5
}
"""
IMAGENET = """{
  "domains": [
    "clean",
    "fog_s3",
    "fog_s5",
    "imagenet_w"
  ],
  "corruptions": [
    "fog"
  ],
  "corruption_domains": [
    "fog_s3",
    "fog_s5"
  ],
  "severities": [
    3,
    5
  ],
  "split": "imagenet-val"
}
"""


@pytest.mark.parametrize("text", [EMBEDDED, FOLDER, IMAGENET], ids=["embedded", "folder", "imagenet"])
def test_each_domains_file_reads_and_writes_back_the_same_bytes(tmp_path, text):
    (tmp_path / INDEX).write_text(text)
    index = TargetIndex.read(tmp_path)
    out = tmp_path / "again"
    index.write(out)
    assert (out / INDEX).read_text() == text
    assert TargetIndex.read(out) == index


def _read(folder, text: str) -> TargetIndex:
    folder.mkdir()
    (folder / INDEX).write_text(text)
    return TargetIndex.read(folder)


def test_what_the_stages_ask_of_the_index(tmp_path):
    e, f, i = (_read(tmp_path / n, t) for n, t in (("e", EMBEDDED), ("f", FOLDER), ("i", IMAGENET)))
    assert e.labelled == ["clean", "fog", "snow"] and e.generated == ["fog", "snow"] and e.unlabelled is None
    # a folder profile: a labelled folder is in the mean but not generated; a flat folder is neither scored
    assert f.labelled == ["site_b", "clean", "fog"] and f.labelled_in_mean == ["site_b", "fog"]
    assert f.generated == ["fog"] and f.severity == 5
    # several ImageNet-C severities: <corruption>_s<severity> are generated corruptions
    assert i.generated == ["fog_s3", "fog_s5"] and i.severities == (3, 5) and i.severity is None
    assert TargetIndex(domains=("a",), corruptions=(), in_mean=("a",), split="x").generated == ["a"]
