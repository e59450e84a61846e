"""The embedded embeddings engine on the real all-MiniLM-L6-v2 (shared session engine)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest

from veil.engines import SentenceTransformerEmbeddingEngine
from veil.wire.openai import EmbeddingRequest

pytestmark = pytest.mark.slow  # real models or server processes


def embeddings(inputs: str | list[str], **fields: Any) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"model": "all-minilm-l6-v2", "input": inputs, **fields})


def vectors(answer: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(item["embedding"]) for item in answer["data"]]


def test_embeddings_have_384_dimensions_and_openai_shape(
    embedding_engine: SentenceTransformerEmbeddingEngine,
) -> None:
    answer = asyncio.run(embedding_engine.embed(embeddings(["one", "two", "three"])))

    assert answer["object"] == "list"
    assert answer["model"] == "all-minilm-l6-v2"
    assert [item["index"] for item in answer["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in answer["data"])
    assert all(v.shape == (384,) for v in vectors(answer))
    assert embedding_engine.dimensions == 384


def test_related_sentences_are_closer_than_unrelated(
    embedding_engine: SentenceTransformerEmbeddingEngine,
) -> None:
    texts = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar.",
        "The quarterly tax report is due on Friday.",
    ]
    guitar, music, taxes = vectors(asyncio.run(embedding_engine.embed(embeddings(texts))))

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    assert cosine(guitar, music) > cosine(guitar, taxes) + 0.3


def test_token_count_is_the_model_tokenizer_with_special_tokens(
    embedding_engine: SentenceTransformerEmbeddingEngine,
) -> None:
    texts = ["Hello, world!", "Tokenizers split unfamiliar words: floccinaucinihilipilification."]
    tokenizer = embedding_engine._model.tokenizer
    expected = sum(len(tokenizer(text)["input_ids"]) for text in texts)  # [CLS] ... [SEP]

    request = embeddings(texts)
    assert asyncio.run(embedding_engine.count_tokens(request)) == expected
    usage = asyncio.run(embedding_engine.embed(request))["usage"]
    assert usage == {"prompt_tokens": expected, "total_tokens": expected}


def test_long_inputs_count_only_what_the_model_reads(
    embedding_engine: SentenceTransformerEmbeddingEngine,
) -> None:
    long_text = "word " * 1000
    count = asyncio.run(embedding_engine.count_tokens(embeddings(long_text)))
    assert count == embedding_engine._model.max_seq_length == 256


def test_base64_encoding_is_little_endian_float32(
    embedding_engine: SentenceTransformerEmbeddingEngine,
) -> None:
    texts = ["encode me", "and me"]
    floats = asyncio.run(embedding_engine.embed(embeddings(texts)))
    packed = asyncio.run(embedding_engine.embed(embeddings(texts, encoding_format="base64")))

    for as_float, as_b64 in zip(floats["data"], packed["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(as_b64["embedding"]), dtype="<f4")
        assert decoded.tolist() == as_float["embedding"]
    assert packed["usage"] == floats["usage"]
