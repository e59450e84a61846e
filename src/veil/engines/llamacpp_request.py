"""What the llama.cpp engine reads from a chat request: sampling fields, stop strings, and the
fields it refuses because it could neither price nor honour them.

The engine prompts with message text only. Fields it would silently drop (``tools``,
``response_format`` schemas, images and other non-text parts, assistant ``tool_calls``) are refused
with ``UnpricedField`` (400 naming the field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from veil.engines.base import UnpricedField
from veil.wire.openai import ChatCompletionRequest

__all__ = ["OPENAI_SAMPLING", "Sampling", "SamplingDefaults", "StopScanner", "refuse_unpriced"]


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves ``temperature`` or ``top_p`` out is sampled with.

    OpenAI's defaults (1.0 and 1.0: the model's whole distribution) suit large models. A small
    model sampled that way rambles: SmolLM2-135M-Instruct at temperature 1 answers "What is the
    capital of France?" with invented French words most of the time. So an engine can carry its
    model's recommended values; a request that sets a field always gets what it asked for."""

    temperature: float = 1.0
    top_p: float = 1.0


OPENAI_SAMPLING = SamplingDefaults()


@dataclass
class Sampling:
    """OpenAI sampling fields, read leniently: a missing or wrongly typed field falls back to the
    engine's default and an out-of-range number is clamped (the protocol layer does not declare
    these fields)."""

    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @classmethod
    def from_request(
        cls, request: ChatCompletionRequest, defaults: SamplingDefaults = OPENAI_SAMPLING
    ) -> Sampling:
        extra = request.model_extra or {}
        stop = extra.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        seed = extra.get("seed")
        return cls(
            temperature=_number(extra.get("temperature"), defaults.temperature, 0.0, 2.0),
            top_p=_number(extra.get("top_p"), defaults.top_p, 0.0, 1.0),
            presence_penalty=_number(extra.get("presence_penalty"), 0.0, -2.0, 2.0),
            frequency_penalty=_number(extra.get("frequency_penalty"), 0.0, -2.0, 2.0),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            stop=[s for s in stops if isinstance(s, str) and s][:4],
        )


def _number(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return min(max(float(value), low), high)


class StopScanner:
    """Finds stop strings in streamed text, holding back any tail that could start one."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        pending = self._held + text
        hits = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return pending[: min(hits)], True
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:size]):
                    hold = size
                    break
        self._held = pending[len(pending) - hold :]
        return pending[: len(pending) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


# Top-level fields that change what the model reads or must produce; this engine honours none.
_UNHONOURED_FIELDS = ("tools", "tool_choice", "functions", "function_call", "prediction")


def refuse_unpriced(request: ChatCompletionRequest) -> None:
    """Raise ``UnpricedField`` for what this engine would drop from the prompt unseen."""
    extra = request.model_extra or {}
    for name in _UNHONOURED_FIELDS:
        if extra.get(name) not in (None, [], "none"):
            raise UnpricedField(name, "not supported by this model's engine")
    response_format = extra.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise UnpricedField("response_format", 'only {"type": "text"} is supported here')
    for i, message in enumerate(request.messages):
        if (message.model_extra or {}).get("tool_calls"):
            raise UnpricedField(f"messages[{i}].tool_calls", "not supported by this engine")
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.get("type") != "text":
                    raise UnpricedField(
                        f"messages[{i}].content[{j}]", "only text parts are supported here"
                    )
