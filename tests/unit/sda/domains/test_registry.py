"""The domain registry: one entry per domain, found by name, and the profile switch of params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from sda.config import ParamsError, load_params, parse_params
from sda.domains import domain_for, domain_names, get_domain, set_profile
from sda.domains.registry import Domain, register_domain

ROOT = Path(__file__).resolve().parents[4]


def test_every_built_in_domain_is_registered_once_and_found_by_name():
    assert {"embedded", "imagenet", "folder"} <= set(domain_names())
    assert len(set(domain_names())) == len(domain_names())
    for name in domain_names():
        assert get_domain(name).name == name
    with pytest.raises(ValueError, match="registered twice"):
        register_domain(get_domain("embedded"))
    assert domain_names().count("embedded") == 1  # the refused registration left nothing behind


def test_an_unknown_profile_lists_the_registered_ones():
    with pytest.raises(ParamsError, match=r"unknown profile 'mnist'.*'embedded'"):
        get_domain("mnist")
    with pytest.raises(ParamsError, match=r"profiles\.mnist: unknown profile"):
        domain_for(parse_params({"profiles": {"mnist": {}}}))


def test_a_domain_without_pretrained_models_says_so_by_default():
    d = Domain(name="x", description="x", sections=(), image_size=lambda p: 8, write_source=lambda p, o: {},
               write_targets=lambda p, s, o: [], severities=lambda p: [])
    params = parse_params({})
    assert d.pretrained_diffusion(params) is None and d.source_classifier(params) is None and d.check(params) is None


@pytest.mark.slow
def test_the_profile_switch_changes_one_word_and_a_bad_one_loses_nothing(tmp_path):
    f = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    f.write_text(text)
    assert set_profile(f, "imagenet") is True
    new = f.read_text()
    assert load_params(f).profile == "imagenet"
    assert new.replace("profile: imagenet", "profile: embedded", 1) == text  # only that word changed
    assert set_profile(f, "imagenet") is False
    with pytest.raises(ParamsError, match="profile"):
        set_profile(f, "cifar")
    assert f.read_text() == new  # a bad switch loses nothing
