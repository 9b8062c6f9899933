"""Classify & NER: sequence classifiers, zero-shot labels, batch labelling, entities, confidence flags."""
