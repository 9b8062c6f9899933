"""Evaluate: perplexity and bits per byte of a text, and multiple-choice tasks scored by log-likelihood (as
lm-evaluation-harness scores them), for served models through the shared engines; also the scoring pass behind the
API's echo."""
