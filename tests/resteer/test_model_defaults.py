"""`with_model_defaults`: on the embedded model, unset fields take the toy world's measured
defaults (CLI and app alike); other models and explicit choices are left alone."""

from types import SimpleNamespace

from fmn_desktop.resteer import ForgetConfig
from fmn_desktop.services.defaults import TOY_TEMPLATES, toy_preserve_prompts, with_model_defaults

TOY = SimpleNamespace(family="toy", embedded=True, has_judge=True)


def test_embedded_model_fills_templates_and_preservation():
    config = with_model_defaults(TOY, ForgetConfig(concepts=["Zorbu"], concept_kind="identity"))
    assert config.templates == TOY_TEMPLATES["identity"]
    assert config.preserve_prompts == toy_preserve_prompts(["Zorbu"])
    assert not any("Zorbu" in p for p in config.preserve_prompts)


def test_explicit_choices_and_other_models_are_kept():
    mine = ForgetConfig(concepts=["circle"], templates=["a {} here"], preserve_prompts=["a dog"])
    assert with_model_defaults(TOY, mine).templates == ["a {} here"]
    assert mine.preserve_prompts == ["a dog"]
    real = with_model_defaults(SimpleNamespace(family="sd1"), ForgetConfig(concepts=["circle"]))
    assert real.templates is None and real.preserve_prompts is None


def test_unknown_or_mixed_concepts_keep_the_kind_templates():
    unknown = with_model_defaults(TOY, ForgetConfig(concepts=["Van Gogh"], concept_kind="style"))
    assert unknown.templates is None and unknown.preserve_prompts  # preservation still the world's
    mixed = with_model_defaults(TOY, ForgetConfig(concepts=["Zorbu", "circle"]))
    assert mixed.templates is None
