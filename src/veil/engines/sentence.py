"""Embeddings on sentence-transformers, in process, on the CPU.

Token counts come from the model's own tokenizer through ``SentenceTransformer.tokenize``, the call
``encode`` makes: special tokens included, each input truncated at ``max_seq_length``. That is
what the model actually reads, so that is what a request is charged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from veil.engines.base import EmbeddingEngine, EngineFailure
from veil.wire.openai import EmbeddingRequest

log = logging.getLogger(__name__)


class SentenceTransformerEmbeddingEngine(EmbeddingEngine):
    def __init__(self, model_id: str, model_dir: Path, batch_size: int = 32) -> None:
        super().__init__(model_id)
        self.model_dir = Path(model_dir)
        self.batch_size = batch_size
        # Torch modules and fast tokenizers are not safe to share between threads mid-call.
        self._lock = threading.Lock()
        self._model: Any = None

    async def start(self) -> None:
        if self._model is None:
            self._model = await asyncio.to_thread(self._load)

    def _load(self) -> Any:
        # The model is a local directory; nothing may reach out to a hub (read at import time).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a server log is no terminal
        from sentence_transformers import SentenceTransformer

        if not (self.model_dir / "modules.json").is_file():
            raise EngineFailure(f"no sentence-transformers model in {self.model_dir}")
        return SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)

    async def close(self) -> None:
        self._model = None

    async def healthy(self) -> bool:
        return self._model is not None

    @property
    def dimensions(self) -> int:
        model = self._require_model()
        # sentence-transformers 6 renamed it; >=3 is what pyproject allows.
        getter = getattr(model, "get_embedding_dimension", None)
        return int(getter() if getter else model.get_sentence_embedding_dimension())

    async def count_tokens(self, request: EmbeddingRequest) -> int:
        def count() -> int:
            with self._lock:
                return self._count(request.texts())

        return await asyncio.to_thread(count)

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        texts = request.texts()

        def run() -> tuple[np.ndarray[Any, Any], int]:
            with self._lock:
                model = self._require_model()
                try:
                    vectors = model.encode(
                        texts,
                        batch_size=self.batch_size,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                except Exception as exc:
                    log.warning("embedding failed: %s", type(exc).__name__)
                    raise EngineFailure("the embeddings model failed") from None
                return vectors, self._count(texts)

        vectors, tokens = await asyncio.to_thread(run)
        as_base64 = request.encoding_format == "base64"
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _base64_floats(vector) if as_base64 else vector.tolist(),
                }
                for i, vector in enumerate(vectors)
            ],
            "model": self.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _count(self, texts: list[str]) -> int:
        """Tokens the model reads for ``texts``. Hold the lock."""
        model = self._require_model()
        # ``preprocess`` is what ``encode`` calls since sentence-transformers 6; ``tokenize`` before.
        features = (
            model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)
        )
        return int(features["attention_mask"].sum())

    def _require_model(self) -> Any:
        if self._model is None:
            raise EngineFailure("the embeddings model is not loaded")
        return self._model


def _base64_floats(vector: np.ndarray[Any, Any]) -> str:
    """OpenAI's base64 encoding: the raw little-endian float32 values."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
