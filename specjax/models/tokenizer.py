"""Tokenizers for GGUF files and HF directories, without torch.

A GGUF file has no `tokenizer.json`; it stores the vocabulary, merges, token
types, special token ids and the chat template as `tokenizer.*` metadata. We
read that with the `gguf` package and hand it to transformers' GGUF tokenizer
builders (`convert_gguf_tokenizer`, torch-free), which return a `tokenizers`
backend with the right pre-tokenizer and decoder. The result is wrapped in a
transformers fast tokenizer that carries the special tokens and the chat
template, and can be saved with `save_pretrained` (`models.loading` caches it
next to the dequantised weights). HF directories use their own files.

    tok = tokenizer_from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = apply_chat_template(tok, [{"role": "user", "content": "Hi"}])
    stops = stop_token_ids(tok)     # e.g. (<|im_end|>, <|endoftext|>)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from tokenizers import pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    GGUF_TOKENIZER_MAPPING,
    convert_gguf_tokenizer,
)

Tokenizer = PreTrainedTokenizerFast
Conversation = Sequence[Mapping[str, str]]

# Tokens that end a turn or a document in the model families we load. A row
# of generation stops at any of these that the vocabulary has as a special
# token, in addition to the tokenizer's eos token.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>")

# llama.cpp pre-tokenizer names whose split transformers' GGUF builder does not
# know. The StarCoder family (SmolLM included) splits every digit on its own
# before the GPT-2 regex (llama.cpp llama-vocab.cpp; HF SmolLM2 tokenizer.json).
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "codeshell")


def tokenizer_dict_from_metadata(metadata: Mapping[str, Any]) -> tuple[str, dict, dict]:
    """Extracts the tokenizer description from GGUF metadata.

    Args:
      metadata: `gguf_io.read_metadata(reader)`.

    Returns:
      `(architecture, tokenizer_dict, tokenizer_kwargs)`: the dict in the
      format `convert_gguf_tokenizer` takes (tokens, merges, token_type,
      special ids, ...), and keyword arguments for the transformers tokenizer
      (bos/eos/unk/pad tokens, chat template, add_bos_token).

    Raises:
      ValueError: the file has no tokenizer.
    """
    if "tokenizer.ggml.tokens" not in metadata:
        raise ValueError("GGUF metadata has no tokenizer (tokenizer.ggml.tokens is missing)")
    arch = metadata.get("general.architecture", "llama")
    groups = {
        group: {
            name: metadata[f"tokenizer.{key}"]
            for key, name in renames.items()
            if f"tokenizer.{key}" in metadata
        }
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, kwargs = groups["tokenizer"], groups["tokenizer_config"]
    if tokenizer_dict.get("tokenizer_type") == "llama":  # sentencepiece files add BOS unless told not to
        kwargs.setdefault("add_bos_token", True)
    tokens = tokenizer_dict["tokens"]
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unk_token_id"), ("pad_token", "pad_token_id")):
        token_id = tokenizer_dict.get(key)
        if token_id is not None and 0 <= token_id < len(tokens):
            kwargs[name] = tokens[token_id]
    if "pad_token" not in kwargs and "eos_token" in kwargs:
        kwargs["pad_token"] = kwargs["eos_token"]
    return arch, tokenizer_dict, kwargs


def tokenizer_from_gguf_metadata(metadata: Mapping[str, Any]) -> Tokenizer:
    """Builds a transformers fast tokenizer from GGUF metadata (no torch).

    Args:
      metadata: `gguf_io.read_metadata(reader)`.

    Returns:
      A `PreTrainedTokenizerFast` with special tokens and chat template set.
    """
    arch, tokenizer_dict, kwargs = tokenizer_dict_from_metadata(metadata)
    backend, extra = convert_gguf_tokenizer(arch, tokenizer_dict)
    if tokenizer_dict.get("pre_tokenizer_type") in _DIGIT_SPLIT_PRE:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **extra, **kwargs)
    return tok


def tokenizer_from_gguf(path: str | os.PathLike) -> Tokenizer:
    """Builds the tokenizer a GGUF file describes (reads metadata only)."""
    from specjax.models import gguf_io

    return tokenizer_from_gguf_metadata(gguf_io.read_metadata(gguf_io.open_gguf(path)))


def load_hf_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads the tokenizer files of a local directory (never the network).

    Raises:
      FileNotFoundError: the directory has no tokenizer files.
    """
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    from transformers import AutoTokenizer  # imported here: it pulls in torch when installed

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_saved_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads a tokenizer this module built and saved (`save_pretrained`), torch-free."""
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def apply_chat_template(
    tok: Tokenizer,
    conversation: Conversation | str,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Renders a conversation with the tokenizer's chat template and encodes it.

    Args:
      tok: a tokenizer with a chat template.
      conversation: a list of `{"role": ..., "content": ...}` messages, or a
        string (taken as one user message).
      add_generation_prompt: end with the assistant turn header, so the model
        writes the reply.

    Returns:
      Token ids. The template writes its special tokens as text, so no BOS is
      added on top.

    Raises:
      ValueError: the tokenizer has no chat template.
    """
    return tok.encode(
        render_chat(tok, conversation, add_generation_prompt), add_special_tokens=False
    )


def render_chat(
    tok: Tokenizer, conversation: Conversation | str, add_generation_prompt: bool = True
) -> str:
    """The chat template applied to `conversation`, as text (see `apply_chat_template`)."""
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"tokenizer {tok.name_or_path!r} has no chat template")
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    return tok.apply_chat_template(
        list(conversation), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def stop_token_ids(tok: Tokenizer) -> tuple[int, ...]:
    """Token ids that end generation: eos plus the end-of-turn tokens present.

    E.g. SmolLM2-Instruct: <|im_end|> (its eos) and <|endoftext|>; Qwen2.5:
    <|im_end|> (its eos) and <|endoftext|>.
    """
    ids = []
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    specials = set(tok.all_special_tokens) | {
        t.content for t in tok.added_tokens_decoder.values() if t.special
    }
    vocab = tok.get_vocab()
    ids += [vocab[t] for t in END_TOKENS if t in specials and t in vocab]
    return tuple(dict.fromkeys(ids))
