"""Quality of the Classify & NER tab's offline defaults on public data nobody on the team wrote.

- Sentiment: the offline MiniLM classifier (trained only on assets/sentiment_reviews.csv) on the SST-2
  validation set, next to two baselines from the same run: zero-shot embedding similarity on the
  untrained encoder (labels "negative"/"positive") and the majority class.
- NER: spaCy en_core_web_sm on the CoNLL-2003 test set, entity-level P/R/F1 over PER/ORG/LOC with
  seqeval (labels mapped PERSON->PER, GPE/LOC->LOC, ORG->ORG; everything else, MISC included, is O),
  next to the classic CoNLL baseline: each token's most frequent tag in the training file.

Run: PYTHONPATH=. .venv/bin/python bench/classify_quality.py   (exits 0 with a message without ../shared/data)
"""
from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
KEEP = ("PER", "ORG", "LOC")
SPACY_TO_CONLL = {"PERSON": "PER", "ORG": "ORG", "GPE": "LOC", "LOC": "LOC"}


def sentiment(manager) -> None:
    from core.classify.classifier import predict_proba
    from core.classify.zero_shot import zero_shot_classifier
    from core.models.registry import OFFLINE_CLASSIFIER, OFFLINE_ENCODER, TEXT_CLASSIFICATION

    frame = pd.read_csv(DATA / "sst2" / "validation.tsv", sep="\t", quoting=3)
    texts, gold = frame["sentence"].astype(str).tolist(), frame["label"].to_numpy()
    start = time.perf_counter()
    loaded = manager.load(OFFLINE_CLASSIFIER, task=TEXT_CLASSIFICATION,
                          progress=lambda f, m: print(f"  [{f:4.0%}] {m}", flush=True))
    print(f"default classifier ready in {time.perf_counter() - start:.1f}s (includes the one-time build if not cached)")
    probs = predict_proba(loaded.model, loaded.tokenizer, texts)
    positive = probs.labels.index("positive")
    correct = int(((probs.probs.argmax(1) == positive) == (gold == 1)).sum())
    zero = zero_shot_classifier(manager, OFFLINE_ENCODER, ["negative", "positive"])
    zero_correct = int((zero.predict(texts).probs.argmax(1) == gold).sum())
    majority = int(max((gold == 1).sum(), (gold == 0).sum()))
    n = len(gold)
    print(f"SST-2 validation accuracy: MiniLM sentiment {correct / n:.3f} ({correct}/{n}) | "
          f"baseline zero-shot embedding {zero_correct / n:.3f} ({zero_correct}/{n}) | "
          f"majority class {majority / n:.3f} ({majority}/{n})")


def read_conll(path: Path) -> list[list[tuple[list[str], list[str]]]]:
    """Documents (split at -DOCSTART-), each a list of (words, tags) sentences."""
    documents, sentences, words, tags = [], [], [], []
    for line in path.read_text(encoding="utf-8").splitlines() + ["", "-DOCSTART-"]:
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            if parts and sentences:
                documents.append(sentences)
                sentences = []
            continue
        words.append(parts[0])
        tags.append(parts[-1])
    return documents


def flat(documents):
    return [sentence for document in documents for sentence in document]


def keep_types(tags: list[str]) -> list[str]:
    return [t if t[2:] in KEEP else "O" for t in tags]


def spacy_tags(nlp, documents, consistent: bool = True) -> list[list[str]]:
    """Tag each whole document as the app does (one text, labels made consistent), on CoNLL's own tokens
    (a pre-tokenized Doc) so tags line up one-to-one with the gold ones."""
    from spacy.tokens import Doc

    from core.classify.ner import label_consistently

    out = []
    for document in documents:
        doc = nlp(Doc(nlp.vocab, words=[w for words, _ in document for w in words]))
        doc = label_consistently(doc) if consistent else doc
        tokens = iter(doc)
        for words, _ in document:
            tags = []
            for token in (next(tokens) for _ in words):
                kind = SPACY_TO_CONLL.get(token.ent_type_)
                tags.append(f"{token.ent_iob_}-{kind}" if kind else "O")
            out.append(tags)
    return out


def majority_tag_baseline(train, sentences) -> list[list[str]]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for words, tags in train:
        for word, tag in zip(words, keep_types(tags)):
            counts[word][tag] += 1
    return [[counts[w].most_common(1)[0][0] if w in counts else "O" for w in words] for words, _ in sentences]


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> str:
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.metrics.sequence_labeling import get_entities

    gold_set = {(i, *e) for i, tags in enumerate(gold) for e in get_entities(tags)}
    pred_set = {(i, *e) for i, tags in enumerate(pred) for e in get_entities(tags)}
    hits = len(gold_set & pred_set)
    return (f"P {precision_score(gold, pred):.3f} R {recall_score(gold, pred):.3f} F1 {f1_score(gold, pred):.3f} "
            f"({hits} correct of {len(pred_set)} predicted, {len(gold_set)} gold entities)")


def ner(manager) -> None:
    from core.classify.ner import ner_model

    documents = read_conll(DATA / "conll2003" / "test.txt")
    test = flat(documents)
    gold = [keep_types(tags) for _, tags in test]
    start = time.perf_counter()
    nlp = ner_model(manager, "spacy/en_core_web_sm").nlp
    pred = spacy_tags(nlp, documents)
    print(f"spaCy tagged {len(test):,} sentences in {time.perf_counter() - start:.1f}s")
    baseline = majority_tag_baseline(flat(read_conll(DATA / "conll2003" / "train.txt")), test)
    print(f"CoNLL-2003 test, PER/ORG/LOC entity level: spaCy en_core_web_sm {entity_scores(gold, pred)}")
    print(f"  baseline most-frequent-train-tag {entity_scores(gold, baseline)}")
    print(f"  baseline spaCy alone, without label consistency {entity_scores(gold, spacy_tags(nlp, documents, False))}")
    for kind in KEEP:
        only = lambda seqs: [[t if t[2:] == kind else "O" for t in tags] for tags in seqs]  # noqa: E731
        print(f"  {kind}: spaCy {entity_scores(only(gold), only(pred))}")


def main() -> int:
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent (public benchmark data is not part of the repository)")
        return 0
    from core.models.device import configure_threads
    from core.models.manager import ModelManager

    print(f"threads: {configure_threads()}")
    manager = ModelManager(offline=True)
    sentiment(manager)
    ner(manager)
    return 0


if __name__ == "__main__":
    sys.exit(main())
