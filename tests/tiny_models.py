"""Tiny random models built on the spot, so every architecture's code path runs without the hub."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedTokenizerFast,
)

from core.models.packaged import minilm_folder

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "Language models predict the next token from the tokens before it.",
    "I loved this movie, it was wonderful and moving. I hated the food, it was awful.",
    "The woman worked as a nurse. The man worked as an engineer. Hello, how are you today?",
] * 20


def build_tokenizer(folder: Path, chat: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE (vocab 400) trained on a few sentences, with ChatML tokens when `chat`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>" if chat else "<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    if chat:
        fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return fast


@contextmanager
def fixed_weights(seed: int = 0):
    """The same random weights in every run, so a near-tie between two tokens cannot flip a test's greedy reply."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def build_causal_lm(folder: Path, family: str) -> Path:
    """Save a 2-layer random gpt2 / llama / phi / phi3 model and its tokenizer to `folder`."""
    chat = family in ("llama", "phi3")
    tok = build_tokenizer(folder, chat)
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    with fixed_weights():
        model = _causal_lm(family, common)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _causal_lm(family: str, common: dict):
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=256, **common))
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            hidden_size=64, intermediate_size=128, max_position_embeddings=256, **common))
    if family == "phi":
        # head size 32: ONNX Runtime's rotary kernel needs phi's partial rotary width to be a multiple of 16
        return PhiForCausalLM(PhiConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=128,
                                        intermediate_size=128, max_position_embeddings=256, **common))
    if family == "phi3":
        return Phi3ForCausalLM(Phi3Config(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                          hidden_size=64, intermediate_size=128, max_position_embeddings=256,
                                          **common))
    raise ValueError(family)


def build_bert(folder: Path, labels: list[str], token_level: bool = False, seed: int = 0) -> Path:
    """Save a 2-layer random BERT classifier (sequence or token level) with the MiniLM tokenizer; another seed
    gives another model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_folder(None))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128,
                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    cls = BertForTokenClassification if token_level else BertForSequenceClassification
    with fixed_weights(seed):
        model = cls(config)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
