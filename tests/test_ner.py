"""Core NER: whole entities from a tiny random BERT token classifier, and the real spaCy default."""
from __future__ import annotations

import pytest
from transformers import AutoModelForTokenClassification, AutoTokenizer

from core.classify.classifier import TextInputError
from core.classify.ner import Entity, NerResult, TransformersNer, ner_model, strip_iob

TEXT = "Wolfgang Amadeus Mozart moved from Salzburg to Vienna and met Antonio Salieri at the Burgtheater."


def inside_word(text: str, cut: int) -> bool:
    return 0 < cut < len(text) and text[cut - 1].isalnum() and text[cut].isalnum()


@pytest.fixture(scope="module")
def tiny_ner(tiny_ner_dir):
    model = AutoModelForTokenClassification.from_pretrained(tiny_ner_dir).eval()
    return TransformersNer(model, AutoTokenizer.from_pretrained(tiny_ner_dir))


def test_entities_are_whole_words_with_true_offsets(tiny_ner):
    result = tiny_ner(TEXT)
    assert result.entities, "a random 7-label model tags at least one word in this sentence"
    for entity in result.entities:
        assert TEXT[entity.start:entity.end] == entity.text
        assert entity.label in {"PER", "ORG", "LOC"}  # B-/I- prefixes removed
        assert 0.0 <= entity.score <= 1.0
        # sub-word pieces are merged: no entity starts or ends inside a word ("Sal|ieri", "Bu|rg|the|ater")
        assert not inside_word(TEXT, entity.start) and not inside_word(TEXT, entity.end)
    assert "".join(piece for piece, _ in result.spans()) == TEXT


def test_long_text_is_truncated_and_empty_refused(tiny_ner):
    result = tiny_ner("Paris " * 20_000)
    assert result.notice and "reads at most 128" in result.notice
    assert len(result.text) < 1_000 and all(e.end <= len(result.text) for e in result.entities)
    with pytest.raises(TextInputError):
        tiny_ner("  ")


def test_spans_skip_overlaps_and_keep_the_text():
    text = "Ada Lovelace lived in London"
    result = NerResult(text, [Entity("Ada Lovelace", "PER", 0, 12, 0.9), Entity("Lovelace", "ORG", 4, 12, 0.5),
                              Entity("London", "LOC", 22, 28, 0.8)], None)
    assert result.spans() == [("Ada Lovelace", "PER"), (" lived in ", None), ("London", "LOC")]
    assert result.entity_types == ["LOC", "ORG", "PER"]


def test_strip_iob():
    assert [strip_iob(t) for t in ("B-PER", "I-LOC", "MISC", "O")] == ["PER", "LOC", "MISC", "O"]


@pytest.mark.real_model
def test_spacy_default_finds_hand_checked_entities(services):
    model = ner_model(services.manager, "spacy/en_core_web_sm")
    assert ner_model(services.manager, "spacy/en_core_web_sm") is model  # cached, loaded once
    result = model("Angela Merkel met Emmanuel Macron in Paris on Tuesday.")
    found = {(e.text, e.label) for e in result.entities}
    assert {("Angela Merkel", "PERSON"), ("Emmanuel Macron", "PERSON"), ("Paris", "GPE")} <= found
    assert all(e.score is None for e in result.entities)


def test_label_consistency_tags_repeats_and_surnames():
    import spacy
    from spacy.tokens import Span

    from core.classify.ner import label_consistently

    nlp = spacy.blank("en")
    doc = nlp("Tom Jones joined Acme in Paris . Jones said Acme grew , and paris was quiet .")
    doc.ents = [Span(doc, 0, 2, "PERSON"), Span(doc, 3, 4, "ORG"), Span(doc, 5, 6, "GPE")]
    found = {(e.text, e.label_) for e in label_consistently(doc).ents}
    assert {("Jones", "PERSON"), ("Acme", "ORG")} <= found
    assert len([e for e in doc.ents if e.text == "Acme"]) == 2
    assert not any(e.text == "paris" for e in doc.ents)  # lower-case words are not treated as names
