"""Loading a GGUF into llama-cpp-python, and building its prompt exactly as
``Llama.create_chat_completion`` does (same chat handler, same tokenization), so that counted
prompt tokens and reported usage agree with llama-cpp-python's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.engines.base import EngineFailure
from veil.wire.openai import ChatCompletionRequest

__all__ = ["Prompt", "extra_buffer_types_disabled", "format_prompt", "load_gguf"]

# The engine's logger, as before this module was split out of it.
log = logging.getLogger("veil.engines.llamacpp")

# Guards the process-wide patch in extra_buffer_types_disabled().
_PATCH_LOCK = threading.Lock()

# Chat formats for GGUFs that carry no chat template, by architecture. The default model
# (SmolLM2-135M-Instruct) carries its own template, which llama-cpp-python applies; for a GGUF
# without one llama-cpp-python would fall back to "llama-2", whose markers make Gemma end its turn
# at once.
_FORMATS_WITHOUT_TEMPLATE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}


@contextmanager
def extra_buffer_types_disabled() -> Iterator[None]:
    """Load llama.cpp models without its "extra" CPU weight buffers (AMX and repacked layouts).

    llama.cpp built with ``-march=native`` on an AMX-capable Xeon uses AMX tiles for Q4_K matmuls,
    and that crashes the process (SIGSEGV in ``ldtilecfg``) in VMs that advertise AMX but do not
    enable its register state, such as Firecracker guests. The plain CPU path is correct
    everywhere. llama-cpp-python does not expose ``use_extra_bufts``, so the default model params
    are patched while a model loads.
    """
    import llama_cpp.llama_cpp as bindings

    with _PATCH_LOCK:
        original = bindings.llama_model_default_params

        def params_without_extra_buffers() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        bindings.llama_model_default_params = params_without_extra_buffers
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    stops: list[str]


class _Captured(Exception):
    """Control flow, not an error: carries the prompt out of the chat handler."""

    def __init__(self, prompt: list[int], stop: Any) -> None:
        super().__init__()
        self.prompt = prompt
        self.stop = stop


class _PromptCapture:
    """Stands in for ``Llama`` inside a chat handler: the handler formats and tokenizes the
    conversation, then calls ``create_completion``, which hands back the prompt instead."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    def create_completion(self, *, prompt: list[int], stop: Any = None, **_: Any) -> Any:
        raise _Captured(list(prompt), stop)


def load_gguf(gguf_path: Path, n_ctx: int, n_threads: int | None, chat_format: str | None) -> Any:
    """A ``Llama`` for ``gguf_path``; ``chat_format`` None: the GGUF's own template, or for a GGUF
    without one its architecture's family where known (``_FORMATS_WITHOUT_TEMPLATE``)."""
    from llama_cpp import Llama

    if not gguf_path.is_file():
        raise EngineFailure(f"model file not found: {gguf_path}")
    with extra_buffer_types_disabled():
        llama = Llama(
            model_path=str(gguf_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            chat_format=chat_format,
            verbose=False,
        )
    if chat_format is None and "tokenizer.chat_template" not in llama.metadata:
        family = llama.metadata.get("general.architecture", "")
        llama.chat_format = _FORMATS_WITHOUT_TEMPLATE.get(family, llama.chat_format)
    return llama


def format_prompt(llama: Any, request: ChatCompletionRequest, stop: list[str]) -> Prompt:
    """The prompt tokens and stop strings ``create_chat_completion`` would use.

    Hold the engine's lock."""
    from llama_cpp import llama_chat_format

    # OpenAI's "developer" role is its newer name for "system"; templates know only "system".
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in request.messages
    ]
    handler: Any = (
        llama.chat_handler
        or llama._chat_handlers.get(llama.chat_format)
        or llama_chat_format.get_chat_completion_handler(llama.chat_format)
    )
    try:
        handler(llama=_PromptCapture(llama), messages=messages, stop=list(stop))
    except _Captured as captured:
        stops = captured.stop or []
        return Prompt(captured.prompt, [stops] if isinstance(stops, str) else list(stops))
    except Exception as exc:
        # Template errors can quote the conversation: keep only the exception type.
        log.warning("chat template failed: %s", type(exc).__name__)
        raise EngineFailure("the model's chat template rejected the conversation") from None
    raise EngineFailure("the chat handler did not build a prompt")
