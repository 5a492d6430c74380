"""The acceptance measurement on a tiny model: the concept's attention mass falls by at
least 90% while prompts without the concept move measurably less.

The tiny model is random (its text encoder was never trained), so words carry no meaning and
nothing here says how selective forgetting is on a trained model: that is measured on the
embedded model (ConceptBench, docs/research/CONCEPTBENCH.md). The test prints its figures.
"""

import pytest

from fmn_desktop.patch import PatchedUNet
from fmn_desktop.resteer import ForgetConfig, forget
from fmn_desktop.resteer.measure import attention_maps, attention_mass, maps_change

CONCEPT_PROMPTS = ["a photo of a castle", "a castle", "a picture of a castle"]
OTHERS = ["a photo of a horse", "a blue boat", "a plate of pasta", "a forest in winter"]
OTHER_TOKENS = ["horse", "boat", "pasta", "forest"]


@pytest.mark.slow
def test_concept_attention_mass_falls_90_percent_others_less():
    from tiny import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(text_dim=128)
    m0 = attention_mass(pipe, CONCEPT_PROMPTS, ["castle"] * 3).sum()
    o0 = attention_mass(pipe, OTHERS, OTHER_TOKENS)
    maps0 = attention_maps(pipe, OTHERS)
    # The paper's loss on the concept and first end-of-text token, no preservation or anchor
    # term (the anchor targets outputs, not attention mass), at a rate a random tiny model needs.
    config = ForgetConfig(
        concepts=["castle"],
        steps=100,
        lr=3e-2,
        preserve_weight=0,
        anchor_weight=0,
        positions="concept+eot",
        num_references=4,
        reference_steps=2,
        batch_size=4,
    )
    patch = forget(pipe, config).patch
    with PatchedUNet(pipe.unet, [(patch, 1.0)]):
        m1 = attention_mass(pipe, CONCEPT_PROMPTS, ["castle"] * 3).sum()
        o1 = attention_mass(pipe, OTHERS, OTHER_TOKENS)
        maps1 = attention_maps(pipe, OTHERS)
    concept_fall = 1 - float(m1 / m0)
    others_change = float((o1 - o0).abs().sum() / o0.sum())
    print(
        f"\nconcept attention mass fell {concept_fall:.1%}; other prompts' own-token mass "
        f"changed {others_change:.1%}; their maps moved {maps_change(maps0, maps1):.2f} (rel. L2)"
    )
    assert concept_fall >= 0.90
    assert others_change < concept_fall - 0.1
