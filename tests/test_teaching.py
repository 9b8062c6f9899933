"""Tools for teachers: the tokenizer view, lesson links, and each teaching endpoint through gradio_client."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest
from transformers import AutoTokenizer

from core.chat.sampling import SamplingSettings
from core.chat.tokenizer_view import tokenize
from ui.chat_view import tokenizer_html as render_html
from core.common.errors import InputError
from core.lessons.links import Lesson, from_query, library, share_link
from core.models.packaged import minilm_folder
from core.models.registry import DEFAULT_CHAT_MODEL

SENTENCE = "Unbelievably, tokenizers split Schwarzenegger!"


def metaspace_tokenizer(folder):
    """A small SentencePiece-style (▁) tokenizer, as LLaMA's: the hub is out of reach here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator([SENTENCE, "the quick brown fox jumps"] * 10,
                            trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>")


def test_three_families_of_tokenizer_split_the_same_words_differently(tmp_path):
    wordpiece = tokenize(AutoTokenizer.from_pretrained(minilm_folder()), SENTENCE, "MiniLM")
    sentencepiece = tokenize(metaspace_tokenizer(tmp_path), SENTENCE, "metaspace")
    assert wordpiece.kind == "WordPiece" and sentencepiece.kind == "SentencePiece BPE"
    assert any(p.spelling.startswith("##") for p in wordpiece.pieces) and wordpiece.pieces[0].special  # [CLS]
    assert any(p.spelling.startswith("▁") for p in sentencepiece.pieces)
    covered = "".join(p.text for p in wordpiece.pieces if not p.special)
    assert covered == SENTENCE.replace(" ", "")  # every piece is a stretch of the text, as written
    assert wordpiece.chars_per_token == pytest.approx(len(SENTENCE) / sum(not p.special for p in wordpiece.pieces))
    page = render_html(tokenize(AutoTokenizer.from_pretrained(minilm_folder()), "<script>x</script>", "MiniLM"))
    assert "<script>" not in page and "&lt;" in page and "No chat template" in page
    with pytest.raises(InputError, match="Type some text"):
        tokenize(AutoTokenizer.from_pretrained(minilm_folder()), "  ", "MiniLM")


@pytest.mark.real_model
def test_smollm2_is_byte_level_bpe_with_a_chat_template(services):
    smol = tokenize(services.manager.tokenizer(DEFAULT_CHAT_MODEL), SENTENCE, DEFAULT_CHAT_MODEL)
    assert smol.kind == "byte-level BPE" and any(p.spelling.startswith("Ġ") for p in smol.pieces)
    assert "<|im_start|>user" in smol.template and smol.template_tokens > len(smol.pieces)


def test_lessons_ship_with_notes_and_links_are_data_checked():
    lessons = library()
    assert set(lessons) == {"temperature", "top-p", "tokenization", "attention", "bias", "logit-lens", "patching",
                            "contrast"}
    for name, lesson in lessons.items():
        assert lesson.title and lesson.notes.count(". ") + lesson.notes.count("? ") >= 1 and not lesson.messages, name
    opened = from_query({"lesson": "temperature", "seed": "9"})
    assert opened.tab == "compare" and opened.settings.temperature == 0 and opened.settings.seed == 9
    odd = from_query({"tab": "<script>", "model": "../../etc/passwd", "temperature": "99", "top_p": "abc",
                      "lock": "model,password", "prompt": "<img src=x onerror=alert(1)>"})
    assert odd.tab == "chat" and odd.model == "" and odd.settings == SamplingSettings() and odd.lock == ("model",)
    assert odd.prompt == "<img src=x onerror=alert(1)>"  # kept as text: it only ever fills a text box
    assert len(odd.messages) == 5 and any("Temperature must be between 0 and 2" in m for m in odd.messages)
    assert from_query({}) is None and "no lesson" in from_query({"lesson": "nope"}).messages[0]
    link = share_link("http://host:7860", Lesson("chat", DEFAULT_CHAT_MODEL, "Hi & bye?",
                                                 settings=SamplingSettings(temperature=1.2)))
    values = {k: v[0] for k, v in parse_qs(urlparse(link).query).items()}
    again = from_query(values)
    assert again.prompt == "Hi & bye?" and again.settings.temperature == 1.2 and again.model == DEFAULT_CHAT_MODEL


def test_link_ranges_are_the_sliders_and_compare_keeps_both_sides():
    # the sliders stop where the page's controls do, narrower than what the engine accepts
    for value, named in (("2.5", "Temperature must be between 0 and 2"), ("500", "Top-k must be between 0 and 200"),
                         ("0.9", "Repetition penalty must be between 1 and 2")):
        key = {"Temperature": "temperature", "Top-k": "top_k", "Repetition penalty": "repetition_penalty"}[
            named.split(" must")[0]]
        assert any(named in m for m in from_query({key: value}).messages), named
    assert "Max new tokens must be between 1 and 128" in from_query({"max_new_tokens": "500"}, 128).messages[0]
    setup = Lesson("compare", DEFAULT_CHAT_MODEL, "Sea?", settings=SamplingSettings(temperature=0, seed=7),
                   precision_a="onnx-int8", model_b="gpt2", precision_b="fp32", temperature_b=1.5, seed_b=8)
    again = from_query({k: v[0] for k, v in parse_qs(urlparse(share_link("http://h", setup)).query).items()})
    assert again == setup
    odd = from_query({"tab": "compare", "temperature_b": "9", "precision_b": "int2"})
    assert odd.temperature_b is None and odd.precision_b == "" and len(odd.messages) == 2
    assert library()["temperature"].temperature_b == 1.2  # the lesson names side B's temperature


# ---- through gradio_client ------------------------------------------------------------------------------------------
@pytest.fixture
def chatting(client, tiny_lm_dirs, services, monkeypatch):
    """The client's session on the tiny llama, with one greedy reply of 8 tokens."""
    monkeypatch.setattr("core.chat.serving.eos_ids", lambda *_: set())
    for served in services.chat.served():
        monkeypatch.setattr(served.engine, "eos_ids", set())
    client.predict(model_id=str(tiny_lm_dirs["llama"]), allow_remote_code=False, api_name="/chat_load_model")
    client.predict(api_name="/chat_clear")
    out = client.predict(message="Hello there", temperature=0, repetition_penalty=1.0, max_new_tokens=8,
                         api_name="/chat_send")
    return client, out


def test_branch_versions_sampling_export_and_import_through_the_api(chatting, services, tmp_path):
    from gradio_client import handle_file

    client, (chatbot, _box, status, tokens, *_rest) = chatting
    assert "data-token=" in tokens  # alternatives can be clicked
    token = int(tokens.split("data-step='2' data-token='")[1].split("'")[0].split("'")[0])
    branched = client.predict(step=3, token_id=token, temperature=0, repetition_penalty=1.0, max_new_tokens=8,
                              api_name="/chat_branch")
    assert "version **2 of 2**" in branched[6] and "branched at token 3" in branched[6]
    back = client.predict(api_name="/chat_previous_version")
    assert "version **1 of 2**" in back[2] and back[0][-1]["content"] != branched[0][-1]["content"]
    assert back[3].startswith("**Last reply:**") and back[3] != branched[2]  # the status line follows the version
    plot, text = client.predict(step=2, api_name="/sampling_steps")
    assert "Step 2" in text and plot is not None
    markdown, exported = client.predict(with_tokens=True, api_name="/chat_export")
    data = json.loads(open(exported).read())
    assert data["format"] == "llm-playground-conversation" and len(data["exchanges"][0]["replies"]) == 2
    client.predict(api_name="/chat_clear")
    restored = client.predict(path=handle_file(exported), api_name="/chat_import")
    assert "Restored 1 exchange" in restored[1] and len(restored[0]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    assert "not a conversation" in client.predict(path=handle_file(str(bad)), api_name="/chat_import")[1]


def test_compare_tokenize_lesson_and_share_through_the_api(client, tiny_lm_dirs):
    model = str(tiny_lm_dirs["llama"])
    a, b, tokens_a, tokens_b, divergence, status = client.predict(
        prompt="Hello", system="", model_a=model, precision_a="auto", temperature_a=0, seed_a=1, model_b=model,
        precision_b="auto", temperature_b=0, seed_b=1, max_new_tokens=10, api_name="/chat_compare")
    assert status == "Done." and "never part ways" in divergence and "token-view" in tokens_a
    view_a, view_b = client.predict(text=SENTENCE, model_a=model, model_b=str(minilm_folder()), api_name="/tokenize")
    assert "byte-level BPE" in view_a and "WordPiece" in view_b
    opened = client.predict(name="temperature", api_name="/open_lesson")
    assert any("Temperature: how sure" in str(v) for v in opened) and "Write one sentence about the sea." in opened
    # the lesson opened Compare: the link is Compare's, with both sides
    link = client.predict(model=model, message="Why is the sky blue?", system="Be brief.", temperature=1.2, top_k=50,
                          top_p=0.9, min_p=0.0, repetition_penalty=1.1, max_new_tokens=64, seed=5,
                          compare_prompt="Sea?", compare_tokens=30, compare_model_a=model, compare_precision_a="fp32",
                          compare_temperature_a=0, compare_seed_a=7, compare_model_b=model, compare_precision_b="auto",
                          compare_temperature_b=1.3, compare_seed_b=8, api_name="/share_setup")["value"]
    assert all(part in link for part in ("tab=compare", "prompt=Sea%3F", "temperature=0", "max_new_tokens=30",
                                         "precision_a=fp32", "temperature_b=1.3", "seed_b=8")), link
    assert "model_b" not in link and "precision_b" not in link  # the same model, and the measured precision
