"""Tokenizers built from GGUF metadata: a tiny byte-level BPE trained by the
test with `tokenizers`, stored in a GGUF the way llama.cpp stores it, rebuilt
by specjax and compared against the original."""

import json

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from specjax.models import gguf_io
from specjax.models import tokenizer as tok_lib
from specjax.models.config import ModelConfig, to_hf_config
from specjax.models.params import param_shapes, params_to_hf_tensors

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "the year 1234 and 12 and 123: hello world, the cat sat on the mat. Ünïcödé 你好",
] * 5
TEXTS = [
    "def fibonacci(n):",
    "hello world  the   cat\n\n\tsat 1234",
    "Ünïcödé 你好 😀 bytes never seen in training",
    "<|im_start|>user\nhi<|im_end|>",
]


@pytest.fixture(scope="module")
def reference():
    """A byte-level BPE tokenizer trained on CORPUS (the ground truth)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def gguf_metadata(reference, pre="default", add_bos=False):
    """`tokenizer.*` metadata as llama.cpp's converter writes it for a BPE vocab."""
    model = json.loads(reference.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    return {
        "ggml.model": "gpt2",
        "ggml.pre": pre,
        "ggml.tokens": tokens,
        "ggml.token_type": [3 if t in SPECIALS else 1 for t in tokens],
        "ggml.merges": [" ".join(m) for m in model["merges"]],
        "ggml.bos_token_id": tokens.index("<|im_start|>"),
        "ggml.eos_token_id": tokens.index("<|im_end|>"),
        "ggml.padding_token_id": tokens.index("<|endoftext|>"),
        "ggml.add_bos_token": add_bos,
        "chat_template": TEMPLATE,
    }


def write_tiny_gguf(path, reference, **kw):
    cfg = ModelConfig(arch="llama", vocab_size=reference.get_vocab_size(), dim=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=16, ffn_dim=32)
    params = jax.tree.map(lambda s: np.zeros(s, np.float32), param_shapes(cfg),
                          is_leaf=lambda x: isinstance(x, tuple))
    return gguf_io.write_gguf(path, to_hf_config(cfg), params_to_hf_tensors(cfg, params),
                              tokenizer=gguf_metadata(reference, **kw))


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory, reference):
    return write_tiny_gguf(tmp_path_factory.mktemp("tok") / "tiny.gguf", reference)


@pytest.fixture(scope="module")
def tok(gguf_path):
    return tok_lib.tokenizer_from_gguf(gguf_path)


def test_encode_matches_reference_and_round_trips(tok, reference):
    assert len(tok) == reference.get_vocab_size()
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == reference.encode(text).ids, text
        assert tok.decode(ids) == text


def test_special_tokens_stay_whole(tok, reference):
    ids = tok.encode("a<|im_end|>b")
    assert reference.token_to_id("<|im_end|>") in ids
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_chat_template(tok, reference):
    conv = [{"role": "user", "content": "hello world"}]
    text = tok_lib.render_chat(tok, conv)
    assert text == "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    ids = tok_lib.apply_chat_template(tok, conv)
    assert ids == reference.encode(text).ids
    assert ids.count(reference.token_to_id("<|im_start|>")) == 2
    assert tok_lib.apply_chat_template(tok, "hello world") == ids
    no_prompt = tok_lib.apply_chat_template(tok, conv, add_generation_prompt=False)
    assert tok.decode(no_prompt) == "<|im_start|>user\nhello world<|im_end|>\n"


def test_stop_token_ids(tok, reference):
    assert tok_lib.stop_token_ids(tok) == (reference.token_to_id("<|im_end|>"),
                                           reference.token_to_id("<|endoftext|>"))


def test_add_bos_token_from_metadata(tmp_path, reference):
    t = tok_lib.tokenizer_from_gguf(write_tiny_gguf(tmp_path / "bos.gguf", reference, add_bos=True))
    ids = t.encode("hello")
    assert ids[0] == reference.token_to_id("<|im_start|>") and ids[1:] == reference.encode("hello").ids
    # the chat template writes its own specials: no extra BOS
    assert tok_lib.apply_chat_template(t, "hello")[:2] != [ids[0], ids[0]]


def test_smollm_pre_tokenizer_splits_digits(tmp_path, reference, tok):
    assert any(len(p) > 2 and p.strip("Ġ").isdigit() for p in tok.tokenize(" 1234"))  # merged by BPE
    t = tok_lib.tokenizer_from_gguf(write_tiny_gguf(tmp_path / "s.gguf", reference, pre="smollm"))
    pieces = t.tokenize("year 1234 a12")
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "3", "4", "1", "2"]
    assert t.decode(t.encode("year 1234 a12")) == "year 1234 a12"


def test_save_and_reload(tmp_path, tok):
    tok.save_pretrained(tmp_path)
    again = tok_lib.load_saved_tokenizer(tmp_path)
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text)
    assert tok_lib.stop_token_ids(again) == tok_lib.stop_token_ids(tok)
    assert tok_lib.apply_chat_template(again, "hi") == tok_lib.apply_chat_template(tok, "hi")
    assert tok_lib.load_hf_tokenizer(tmp_path).encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_errors(tmp_path, reference):
    with pytest.raises(ValueError, match="no tokenizer"):
        tok_lib.tokenizer_from_gguf_metadata({"general.architecture": "llama"})
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        tok_lib.load_hf_tokenizer(tmp_path)
    metadata = {f"tokenizer.{k}": v for k, v in gguf_metadata(reference).items() if k != "chat_template"}
    no_template = tok_lib.tokenizer_from_gguf_metadata({"general.architecture": "llama", **metadata})
    assert no_template.encode(TEXTS[0]) == reference.encode(TEXTS[0]).ids
    with pytest.raises(ValueError, match="no chat template"):
        tok_lib.apply_chat_template(no_template, "hi")
