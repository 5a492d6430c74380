import pytest
from transformers import CLIPTokenizer

from fmn_desktop.errors import ConceptNotFoundError
from fmn_desktop.prompts.tokens import concept_mask, concept_token_ids

TOK = CLIPTokenizer.from_pretrained("fmn_desktop/models/data/clip_tokenizer", local_files_only=True)


def test_multi_token_concept_marks_each_token():
    ids = concept_token_ids(TOK, "Elon Musk")
    assert ids == [20406, 19063]
    mask = concept_mask(TOK, ["a photo of Elon Musk"], ["Elon Musk"], "concept")
    # <start> a photo of elon musk <end>: positions 4 and 5
    assert mask[0].nonzero().flatten().tolist() == [4, 5]


def test_only_first_end_of_text_is_marked_when_padding_is_end_of_text():
    mask = concept_mask(TOK, ["a photo of a dog"], ["dog"], "concept+eot")
    # SD1 pads with the end-of-text id: marking every one would mark all the padding.
    assert mask[0].nonzero().flatten().tolist() == [5, 6]
    assert mask.shape == (1, 77)


def test_following_positions_run_to_the_end_of_the_sequence():
    mask = concept_mask(TOK, ["a dog on a red mat"], ["dog"], "concept+following")
    # <start> a dog on a red mat <end> <pad>...: from dog (2) through every later position,
    # since the causal encoder mixes the concept into the end-of-text token and the padding.
    assert mask[0].nonzero().flatten().tolist() == list(range(2, 77))


def test_several_concepts_and_batch_rows_are_independent():
    mask = concept_mask(
        TOK, ["a cat and a dog", "a dog", "a cat"], [["cat", "dog"], "dog", "cat"], "concept"
    )
    assert mask[0].nonzero().flatten().tolist() == [2, 5]
    assert mask[1].nonzero().flatten().tolist() == [2]
    assert mask[2].nonzero().flatten().tolist() == [2]


def test_every_occurrence_is_marked():
    mask = concept_mask(TOK, ["dog eats dog"], ["dog"], "concept")
    assert mask[0].nonzero().flatten().tolist() == [1, 3]


def test_concept_missing_from_prompt_is_a_clear_error():
    with pytest.raises(ConceptNotFoundError, match="does not occur"):
        concept_mask(TOK, ["a photo of a dog"], ["cat"])


def test_empty_concept_is_an_error():
    with pytest.raises(ConceptNotFoundError, match="no tokens"):
        concept_token_ids(TOK, "   ")


def test_unknown_positions_mode():
    with pytest.raises(ValueError, match="valid"):
        concept_mask(TOK, ["a dog"], ["dog"], "everything")
