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
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = Params().model_dump(mode="json")
    from_yaml = parse_params({**raw, "profiles": {}}).model_dump(mode="json")
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
        parse_params({"imagenet": {"severities": [7]}})


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


def test_a_domain_section_is_validated_by_its_domains_model():
    p = parse_params({"imagenet": {"finetune_lr": "1e-4"}})
    assert type(p.imagenet).__name__ == "ImageNet" and p.imagenet.finetune_lr == 1e-4
    assert p.embedded == parse_params({}).embedded  # absent: the domain's defaults
    with pytest.raises(ParamsError, match=r"folder\.image_size: .*multiple of 8"):
        parse_params({"folder": {"image_size": 20}})
    with pytest.raises(ParamsError, match=r"cells: unknown parameter"):
        parse_params({"cells": {"image_size": 16}})  # no domain registers it


def test_without_the_domains_their_sections_pass_as_written_and_a_typo_still_fails():
    """A stage that reads no domain does not import them (its code deps stay small): the domains'
    sections are then kept as written, and any other unknown top-level key is still an error."""
    code = ("import yaml\nfrom sda.config import ParamsError, load_params, parse_params\n"
            "p = load_params('params.yaml')\n"
            "print(dict(p.model_extra['imagenet']) == yaml.safe_load(open('params.yaml'))['imagenet'])\n"
            "try:\n    p.imagenet.image_size\nexcept AttributeError as err:\n    print(err)\n"
            "try:\n    parse_params({'projecton': {}})\nexcept ParamsError as err:\n    print(err)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "True"
    assert "`import sda.domains`" in r.stdout.splitlines()[1]
    assert "projecton: unknown parameter" in r.stdout
