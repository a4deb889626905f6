import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import sda.method.catalog  # noqa: F401  (the methods' sections of streams)

from sda.config import CORRUPTIONS, PROFILE_SECTIONS, Params, ParamsError, load_params, parse_params
from sda.domains import domain_for

ROOT = Path(__file__).resolve().parents[3]


def test_repo_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.profile == "embedded"
    assert p.target_data.corruptions == CORRUPTIONS
    assert p.target_data.split == "test"


def test_empty_mapping_gives_defaults():
    assert parse_params({}) == Params()


def test_code_defaults_are_params_yaml():
    """One source: params.yaml lists every parameter, each at the pydantic default, so the pipeline,
    a notebook's ``Params()`` and the docs cannot disagree."""
    from sda.domains import domain_names
    from sda.method.catalog import get_method, method_names

    def resolved(p: Params) -> dict:
        """Every section, the domains' and the methods' read through their models (defaults filled in)."""
        out = p.model_dump(mode="json")
        out.update({d: p.domain_section(d).model_dump(mode="json") for d in domain_names()})
        sections = {get_method(m).section_name for m in method_names()} - {None}
        out["streams"].update({s: p.streams.method_params(s).model_dump(mode="json") for s in sections})
        return out

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = resolved(Params())
    from_yaml = resolved(parse_params({**raw, "profiles": {}}))
    assert set(raw) == set(defaults), "params.yaml's sections differ from sda/config.py's and the domains'"
    for section, values in defaults.items():
        if section in ("profile", "profiles"):
            continue
        assert set(raw[section]) == set(values), f"params.yaml {section}: keys differ from sda/config.py"
        for key, default in values.items():
            assert from_yaml[section][key] == default, (
                f"{section}.{key}: params.yaml has {from_yaml[section][key]!r}, sda/config.py {default!r}")


def test_unknown_key_is_named():
    with pytest.raises(ParamsError, match=r"projection\.scael: unknown parameter"):
        parse_params({"projection": {"scael": 3}})


def test_bad_value_is_named_with_input():
    with pytest.raises(ParamsError, match=r"source_model\.epochs: .*greater than or equal to 1.*got -3"):
        parse_params({"source_model": {"epochs": -3}})


def test_cross_field_rule_names_section():
    with pytest.raises(ParamsError, match=r"projection: .*N=30 must be smaller than respacing=20"):
        parse_params({"projection": {"N": 30, "respacing": 20}})


def test_unknown_corruption_and_profile():
    with pytest.raises(ParamsError, match="unknown corruptions \\['glitter'\\]"):
        parse_params({"target_data": {"corruptions": ["fog", "glitter"]}})
    with pytest.raises(ParamsError, match="profile: unknown profile 'mnist'"):
        domain_for(parse_params({"profile": "mnist"}))


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("runtime: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(f)


@pytest.mark.slow
def test_stage_cli_rejects_bad_params_before_work(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["diffusion_finetune"]["lr"] = "fast"
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "tasks.source_data", "--params", str(bad)], cwd=tmp_path,
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert "diffusion_finetune.lr" in r.stderr
    assert not (tmp_path / "data").exists()  # nothing was written


def test_profile_overrides_merge_over_sections():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    embedded = parse_params(raw)
    imagenet = parse_params({**raw, "profile": "imagenet"})
    # the one switch: the paper's settings come from profiles.imagenet, key by key
    assert (imagenet.projection.respacing, imagenet.projection.N, imagenet.projection.scale) == (100, 50, 6.0)
    assert imagenet.projection.D == embedded.projection.D == 4
    assert imagenet.synth_generate.steps == 250 and imagenet.synth_generate.per_class == 50
    assert imagenet.source_model.arch == "resnet50" and imagenet.classifier_align.recipe == "paper"
    assert imagenet.runtime.threads == embedded.runtime.threads  # not overridden: shared
    assert domain_for(imagenet).image_size(imagenet) == 256
    assert domain_for(embedded).image_size(embedded) == embedded.embedded.image_size
    assert (embedded.projection.respacing, embedded.source_model.arch) == (20, "sda_cnn3")


def test_profile_override_errors_are_named():
    with pytest.raises(ParamsError, match=r"profiles\.imagenet\.projektion: unknown section"):
        parse_params({"profile": "imagenet", "profiles": {"imagenet": {"projektion": {"N": 3}}}})
    with pytest.raises(ParamsError, match=r"projection: .*N=500"):
        parse_params({"profile": "imagenet", "profiles": {"imagenet": {"projection": {"N": 500}}}})
    with pytest.raises(ParamsError, match=r"imagenet\.severities"):
        domain_for(parse_params({"imagenet": {"severities": [7]}}))


def test_a_params_file_names_the_active_profile_under_profiles(tmp_path):
    """dvc.yaml lists profiles.${profile} for every stage: a file without that entry is refused with
    what to add, by load_params and by a profile switch, before DVC fails on a missing key."""
    from sda.domains import set_profile

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in ("embedded", "imagenet", "folder"):
        assert set(raw["profiles"][name]) == set(PROFILE_SECTIONS), name
    del raw["profiles"]["embedded"]["evaluate"]
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"profiles\.embedded must name each section .*add evaluate: \{\} under"):
        load_params(f)
    f.write_text(yaml.safe_dump({**raw, "profiles": {"embedded": {s: {} for s in PROFILE_SECTIONS}}}))
    with pytest.raises(ParamsError, match=r"profiles\.imagenet must name each section"):
        set_profile(f, "imagenet")
    with pytest.raises(ParamsError, match=r"profiles\.imagenet\.runtime: is set directly, not per profile"):
        parse_params({"profile": "imagenet", "profiles": {"imagenet": {"runtime": {"threads": 4}}}})


def test_the_old_source_data_section_says_where_it_went():
    with pytest.raises(ParamsError, match=r"source_data: renamed: .*`embedded`"):
        parse_params({"source_data": {"image_size": 16}})


def test_a_domain_section_is_validated_by_its_domains_model_when_read():
    p = parse_params({"imagenet": {"finetune_lr": "1e-4"}})
    assert type(p.imagenet).__name__ == "ImageNet" and p.imagenet.finetune_lr == 1e-4
    assert p.embedded == parse_params({}).embedded  # absent: the domain's defaults
    bad = parse_params({"folder": {"image_size": 20}})  # kept as written until read
    with pytest.raises(ParamsError, match=r"folder\.image_size: .*multiple of 8"):
        bad.folder
    with pytest.raises(ParamsError, match=r"folder\.image_size: .*multiple of 8"):
        domain_for(bad)  # the registry checks every domain's section, the profile's or not
    with pytest.raises(ParamsError, match=r"cells: unknown parameter"):
        parse_params({"cells": {"image_size": 16}})  # no domain module of that name
    for support in ("digits", "check", "registry"):  # modules of sda/domains that are not domains
        with pytest.raises(ParamsError, match=rf"{support}: unknown parameter"):
            parse_params({support: {}})


def test_a_section_reads_the_same_whatever_was_imported_first():
    """The params of one file are the same object whether or not the domains and the methods were imported
    before they were read: their sections as written, validated by the registry that reads them."""
    code = ("import sys, yaml\nfrom sda.config import ParamsError, load_params, parse_params\n"
            "first = load_params('params.yaml')\n"
            "assert 'sda.domains' not in sys.modules and 'torch' not in sys.modules\n"
            "try:\n    first.imagenet.image_size\nexcept AttributeError as err:\n    print(err)\n"
            "try:\n    parse_params({'projecton': {}})\nexcept ParamsError as err:\n    print(err)\n"
            "import sda.domains, sda.method.catalog\n"
            "second = load_params('params.yaml')\n"
            "print(first == second, first.model_dump_json() == second.model_dump_json())\n"
            "print(first.imagenet == second.imagenet, dict(first.model_extra['imagenet']) == yaml.safe_load(open('params.yaml'))['imagenet'])\n"
            "print(first.streams.method_params('tent') == second.streams.method_params('tent'))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "`import sda.domains`" in lines[0]
    assert "projecton: unknown parameter" in lines[1]
    assert lines[2:] == ["True True", "True True", "True"]


def test_a_method_section_is_checked_by_the_registry_that_builds_it():
    s = parse_params({"streams": {"tent": {"lr": -1}, "windo": 32}}).streams  # kept as written
    with pytest.raises(ParamsError, match=r"streams\.tent\.lr"):
        s.method_params("tent")
    with pytest.raises(ParamsError, match=r"streams\.windo: unknown parameter"):
        s.check_method_sections()
    assert parse_params({}).streams.method_params("tent") == parse_params({"streams": {"tent": {}}}).streams.method_params("tent")
