"""``--upstream`` specs: ``[KIND:]MODEL=URL``."""

from __future__ import annotations

import pytest

from veil.engines import (
    UpstreamChatEngine,
    UpstreamEmbeddingEngine,
    UpstreamImageEngine,
    make_upstream_engine,
    parse_upstream_spec,
)


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("llama-3.1-8b=http://10.0.0.5:8000", ("chat", "llama-3.1-8b", "http://10.0.0.5:8000")),
        ("chat:m=https://host/v1", ("chat", "m", "https://host/v1")),
        ("embeddings:bge=http://127.0.0.1:8080", ("embeddings", "bge", "http://127.0.0.1:8080")),
        ("images:flux=http://127.0.0.1:9000", ("images", "flux", "http://127.0.0.1:9000")),
        ("llama3:8b=http://h:1", ("chat", "llama3:8b", "http://h:1")),
        ("org/model=http://h/?a=b", ("chat", "org/model", "http://h/?a=b")),
    ],
)
def test_specs_parse(spec: str, parsed: tuple[str, str, str]) -> None:
    assert parse_upstream_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("model-only", "must look like"),
        ("=http://h", "no model id"),
        ("images:=http://h", "no model id"),
        ("m=ftp://h", "http:// or https://"),
        ("m=", "http:// or https://"),
        ("m=http://", "http:// or https://"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_upstream_spec(spec)


def test_each_kind_makes_its_engine() -> None:
    chat = make_upstream_engine("chat", "m", "http://h:1/v1")
    assert isinstance(chat, UpstreamChatEngine) and chat.base_url == "http://h:1"
    assert isinstance(make_upstream_engine("embeddings", "e", "http://h"), UpstreamEmbeddingEngine)
    images = make_upstream_engine("images", "i", "http://h", upstream_model="flux-dev")
    assert isinstance(images, UpstreamImageEngine) and images.model_name == "flux-dev"
