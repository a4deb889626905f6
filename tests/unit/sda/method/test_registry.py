"""The test-time method registry (sda.method.registry): one method per name, the table's order, each
method's own params section, and the names and sections checked before a method is built.

The test methods are registered under names no real method has and taken out again afterwards
(the ``registry`` fixture), so every other test sees the registry as the method modules left it."""

import pytest
import torch
from pydantic import Field

import sda.config
from sda.config import ParamsError, Section, Streams
from sda.method import registry as reg
from sda.method.catalog import resolve_methods  # the catalog registers every real method
from sda.method.registry import (KINDS, MethodContext, StreamMethod, build_method, get_method, method_names,
                                 register_method)


class _Steps(Section):
    steps: int = Field(3, ge=1)


class _Other(Section):
    rate: float = 0.5


@pytest.fixture
def registry():
    """The registry and the methods' sections as they were, put back after the test."""
    methods, sections = dict(reg._METHODS), dict(sda.config._METHOD_SECTIONS)
    yield
    reg._METHODS.clear()
    reg._METHODS.update(methods)
    sda.config._METHOD_SECTIONS.clear()
    sda.config._METHOD_SECTIONS.update(sections)


def _method(name, kind="model", built=None, **kw):
    """A method whose adapter is the context it was built from (appended to ``built`` when given)."""
    def build(ctx):
        if built is not None:
            built.append(ctx)
        return ctx
    return StreamMethod(name=f"_test_{name}", description="a test method", build=build, kind=kind, **kw)


def _context(streams):
    return MethodContext(source="source model", aligned="aligned model", streams=streams, params=None,
                         device=torch.device("cpu"), seed=7, num_classes=3, window=5)


def test_methods_are_checked_against_the_registry_and_sections_by_their_models():
    assert [m.name for m in resolve_methods(Streams(methods=("sda", "lame")))] == ["sda", "lame"]
    with pytest.raises(ValueError, match="unknown.*'lam'.*registered"):
        resolve_methods(Streams(methods=("sda", "lam")))
    with pytest.raises(ParamsError, match=r"streams\.lame\.affinity"):
        resolve_methods(Streams.model_validate({"lame": {"affinity": "cosine"}}))  # before any method is built
    with pytest.raises(ParamsError, match=r"streams\.ead: unknown parameter"):
        resolve_methods(Streams.model_validate({"ead": {}}))  # a typo'd method section is unknown
    assert Streams().method_params("cotta").augmentations == 32


# register_method


def test_registering_a_method_adds_it_and_its_params_section(registry):
    method = _method("a", params_model=_Steps)
    assert register_method(method) is method
    assert get_method("_test_a") is method and "_test_a" in method_names()
    assert sda.config._METHOD_SECTIONS["_test_a"] is _Steps
    assert Streams().method_params("_test_a") == _Steps(steps=3)


def test_registering_the_same_method_again_changes_nothing(registry):
    method = register_method(_method("a", params_model=_Steps))
    names = method_names()
    assert register_method(method) is method  # a module imported twice
    assert method_names() == names and get_method("_test_a") is method


def test_a_second_method_under_a_taken_name_is_refused_and_leaves_the_registry_unchanged(registry):
    first = register_method(_method("a", params_model=_Steps))
    before, sections = dict(reg._METHODS), dict(sda.config._METHOD_SECTIONS)
    other = _method("a", kind="input", params_model=_Other, section="_test_other")
    with pytest.raises(ValueError, match="'_test_a' is already registered"):
        register_method(other)
    assert get_method("_test_a") is first
    assert reg._METHODS == before and sda.config._METHOD_SECTIONS == sections  # its section not added either
    with pytest.raises(ValueError, match="already registered"):  # an equal but distinct object is another method
        register_method(_method("a", params_model=_Steps))


def test_a_method_whose_section_clashes_with_another_methods_is_refused_and_not_registered(registry):
    register_method(_method("a", params_model=_Steps))
    names = method_names()
    with pytest.raises(ValueError, match="different sections"):
        register_method(_method("b", params_model=_Other, section="_test_a"))
    assert method_names() == names


def test_a_method_section_may_not_take_the_name_of_a_streams_setting(registry):
    with pytest.raises(ValueError, match="streams.window is a setting of the streams stage"):
        register_method(_method("w", params_model=_Steps, section="window"))
    assert "window" not in sda.config._METHOD_SECTIONS
    assert "_test_w" not in method_names()


def test_a_method_of_an_unknown_kind_is_refused_and_not_registered(registry):
    names = method_names()
    with pytest.raises(ValueError, match="kind 'postprocess' is none of input, model, output, combined"):
        register_method(_method("k", kind="postprocess"))
    assert method_names() == names


# method_names


def test_method_names_order_the_methods_by_kind_then_by_registration(registry):
    before = method_names()
    for name, kind in [("comb", "combined"), ("model", "model"), ("in_b", "input"), ("out", "output"),
                       ("in_a", "input"), ("model_2", "model")]:
        register_method(_method(name, kind=kind))
    names = method_names()
    ours = [n.removeprefix("_test_") for n in names if n.startswith("_test_")]
    assert ours == ["in_b", "in_a", "model", "model_2", "out", "comb"]
    kinds = [KINDS.index(get_method(n).kind) for n in names]
    assert kinds == sorted(kinds)  # the real methods too: input, model, output, combined
    assert tuple(n for n in names if not n.startswith("_test_")) == before  # theirs in the same order
    # each test method right after the last method of its kind registered before it
    assert names.index("_test_in_a") < names.index(next(n for n in before if get_method(n).kind == "model"))


def test_an_unknown_method_is_named_with_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown method '_test_none'; registered: ") as err:
        get_method("_test_none")
    assert set(str(err.value).split("registered: ")[1].split(", ")) == set(method_names())


# StreamMethod.section_name


def test_a_methods_section_defaults_to_its_name_only_when_it_has_a_params_model():
    assert _method("a").section_name is None
    assert _method("a", params_model=_Steps).section_name == "_test_a"
    assert _method("a", params_model=_Steps, section="tent").section_name == "tent"  # sda+tent reads tent's


# build_method


def test_build_method_hands_the_method_its_own_validated_section(registry):
    built = []
    register_method(_method("a", built=built, params_model=_Steps))
    ctx = _context(Streams.model_validate({"_test_a": {"steps": 5}}))
    adapter = build_method("_test_a", ctx)
    assert built == [adapter] and adapter.params == _Steps(steps=5)
    # everything else as given, and the caller's context left as it was
    assert (adapter.source, adapter.aligned, adapter.seed, adapter.window, adapter.streams) == (
        "source model", "aligned model", 7, 5, ctx.streams)
    assert ctx.params is None
    assert build_method("_test_a", _context(Streams())).params == _Steps(steps=3)  # the model's defaults


def test_build_method_reads_a_shared_section_and_gives_a_method_without_one_none(registry):
    register_method(_method("a", params_model=_Steps))
    register_method(_method("shares", params_model=_Steps, section="_test_a"))
    register_method(_method("plain"))
    streams = Streams.model_validate({"_test_a": {"steps": 9}})
    assert build_method("_test_shares", _context(streams)).params == _Steps(steps=9)
    ctx = _context(streams)
    ctx.params = _Other()  # whatever the caller's context held
    assert build_method("_test_plain", ctx).params is None


def test_build_method_refuses_a_bad_section_value_before_building(registry):
    built = []
    register_method(_method("a", built=built, params_model=_Steps))
    with pytest.raises(ParamsError, match=r"streams\._test_a\.steps"):
        build_method("_test_a", _context(Streams.model_validate({"_test_a": {"steps": 0}})))
    with pytest.raises(ValueError, match="unknown method '_test_b'"):
        build_method("_test_b", _context(Streams()))
    assert built == []


# resolve_methods


def test_resolve_methods_returns_the_named_methods_in_the_order_named(registry):
    a, b = register_method(_method("a")), register_method(_method("b", kind="input"))
    assert resolve_methods(Streams(methods=("_test_a", "_test_b", "sda"))) == [a, b, get_method("sda")]
    assert resolve_methods(Streams()) == [get_method(n) for n in method_names()]  # `all`: the table's order


def test_resolve_methods_names_every_unknown_method(registry):
    register_method(_method("a"))
    with pytest.raises(ValueError, match=r"unknown \['_test_x', '_test_y'\]; registered: .*_test_a \(or `all`\)"):
        resolve_methods(Streams(methods=("_test_x", "_test_a", "_test_y")))


def test_resolve_methods_checks_every_method_section_not_only_the_named_methods(registry):
    register_method(_method("a", params_model=_Steps))
    bad = {"methods": ("sda",), "_test_a": {"steps": 0}}
    with pytest.raises(ParamsError, match=r"streams\._test_a\.steps"):
        resolve_methods(Streams.model_validate(bad))
    with pytest.raises(ParamsError, match=r"streams\._test_a\.rate: unknown parameter"):
        resolve_methods(Streams.model_validate({"methods": ("sda",), "_test_a": {"rate": 1}}))
    with pytest.raises(ParamsError, match=r"streams\._test_a\.steps"):  # the sections first, then the names
        resolve_methods(Streams.model_validate(bad | {"methods": ("_test_none",)}))
    assert resolve_methods(Streams.model_validate({"methods": ("sda",), "_test_a": {"steps": 2}})) == [get_method("sda")]
