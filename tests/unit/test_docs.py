"""The documentation: the MkDocs site builds with --strict (a broken link or a page missing from the
nav fails it), the README's relative links resolve, and nothing in the repository points outside it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_builds_strict(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site" / "method" / "index.html").is_file()


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "the README is the quick start: move the details to docs/"
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "expected links into docs/"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_nothing_refers_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    this = Path(__file__).relative_to(ROOT).as_posix()
    offenders = []
    for rel in tracked:
        path = ROOT / rel
        if rel == this or path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ""} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if "DESIGN.md" in text or "../shared" in text:
            offenders.append(rel)
    assert not offenders, f"these files cite files outside the repository: {offenders}"
