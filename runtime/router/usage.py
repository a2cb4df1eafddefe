"""Token usage as the engine reports it: what a tenant's tokens-per-minute budget is debited.

vLLM reports `usage` (`prompt_tokens`, `completion_tokens`) at the end of a non-streaming answer.
A streaming answer carries it only when the request asks with `stream_options.include_usage`, in
one last event whose `choices` is empty. `ask_for_usage` adds that option when the client did not
ask, and `SseTap` strips that event again from what such a client receives, so the client sees
the stream it asked for. Only the engine's own figures are used: the router never tokenizes.

Cost on the request path: a non-streaming body is searched once for `"usage"` (a C scan); a
stream is cut at event boundaries (`\\n\\n`) and only the events holding `"usage"` are parsed.
"""

from __future__ import annotations

import re
from typing import Any

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    import json

    _loads = json.loads

# `"usage": {` outside a string: inside a JSON string the quotes would be escaped (`\"usage\"`).
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_USAGE_KEY = b'"usage"'
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
# The usage object is short; its counts come first (vLLM's UsageInfo field order).
_USAGE_WINDOW = 512
# A stream whose events never end (no blank line within this much) is relayed as it comes.
MAX_EVENT_BYTES = 64 * 1024
# A non-streaming body larger than the relay buffer is searched in its last bytes only.
TAIL_BYTES = 4096
_SEPARATOR = b"\n\n"
_STREAM_OPTION = b'"stream_options"'
_WHITESPACE = b" \t\r\n"
_CLOSE = ord("}")


def ask_for_usage(body: bytes | bytearray, document: dict[str, Any]) -> tuple[bytes | bytearray, bool]:
    """(the body to send, whether the router added `include_usage`) for a parsed request.

    Only a streaming request (`"stream": true`) needs it; vLLM refuses `stream_options` otherwise.
    The option goes in as one more key before the closing brace: JSON decoders, vLLM's included,
    keep the last of duplicate keys, so a client's own `stream_options` (without include_usage)
    is repeated with it merged in, and the large image strings are never copied into a new document.
    """
    if document.get("stream") is not True:
        return body, False
    options = document.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return body, False
    if options is not None and not isinstance(options, dict):
        return body, False  # malformed: vLLM answers it with its own 400
    end = len(body) - 1
    while end >= 0 and body[end] in _WHITESPACE:
        end -= 1
    if end < 0 or body[end] != _CLOSE:
        return body, False
    merged = {**(options or {}), "include_usage": True}
    extra = b',' + _STREAM_OPTION + b':' + _dumps(merged)
    if isinstance(body, bytearray):
        # In place: only the closing brace moves, a 50 MB image body is not copied.
        body[end:end] = extra
        return body, True
    return body[:end] + extra + body[end:], True


def _dumps(value: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(value)
    except NameError:  # pragma: no cover
        import json

        return json.dumps(value, separators=(",", ":")).encode()


def usage_in(text: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens of the last `usage` object in a JSON text, or None."""
    # Backwards from the end, where vLLM puts it: a C scan for the key, the regex only there.
    at = text.rfind(_USAGE_KEY)
    found = None
    while at >= 0:
        found = _USAGE.match(text, at)
        if found is not None:
            break
        at = text.rfind(_USAGE_KEY, 0, at)
    if found is None:
        return None
    window = text[found.end(): found.end() + _USAGE_WINDOW]
    prompt = _PROMPT.search(window)
    completion = _COMPLETION.search(window)
    if prompt is None and completion is None:
        return None
    return (int(prompt.group(1)) if prompt else 0, int(completion.group(1)) if completion else 0)


class Tap:
    """Collects the usage of one answer. `prompt`/`completion` are the engine's counts once
    `reported`; `events` counts the stream's events (the fallback estimate when a stream breaks
    off before its usage event)."""

    __slots__ = ("prompt", "completion", "reported", "events")

    def __init__(self) -> None:
        self.prompt = 0
        self.completion = 0
        self.reported = False
        self.events = 0

    def _found(self, usage: tuple[int, int] | None) -> None:
        if usage is not None:
            self.prompt, self.completion = usage
            self.reported = True

    def body(self, payload: bytes) -> bytes:
        """A whole answer, relayed in one write; returns what the client gets."""
        self._found(usage_in(payload))
        return payload

    def feed(self, chunk: bytes) -> bytes:
        """A chunk of an answer relayed as it comes; returns what the client gets."""
        return chunk

    def finish(self) -> bytes:
        return b""

    @property
    def tokens(self) -> int:
        """What the tenant's budget is debited: the engine's counts, or, for a stream cut short,
        one completion token per event relayed (vLLM sends about one token per event)."""
        if self.reported:
            return self.prompt + self.completion
        return self.events


class BodyTap(Tap):
    """A non-streaming answer relayed in chunks (too large to buffer): its last bytes are searched."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        super().__init__()
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        self._tail = (self._tail + chunk)[-TAIL_BYTES:]
        return chunk

    def finish(self) -> bytes:
        self.body(self._tail)
        return b""


class SseTap(Tap):
    """A server-sent event stream. With `strip`, the usage-only event (no choices) that the
    router asked for is left out of what the client receives."""

    __slots__ = ("strip", "_partial")

    def __init__(self, *, strip: bool) -> None:
        super().__init__()
        self.strip = strip
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._partial + chunk if self._partial else chunk
        end = data.rfind(_SEPARATOR)
        if end < 0:
            if len(data) > MAX_EVENT_BYTES:
                # Not the event stream expected: relay it untouched rather than hold it.
                self._partial = b""
                return data
            # An unfinished event: an SSE client acts only on whole events, so holding it costs nothing.
            self._partial = data
            return b""
        end += len(_SEPARATOR)
        complete, self._partial = data[:end], data[end:]
        return self._events(complete)

    def finish(self) -> bytes:
        rest, self._partial = self._partial, b""
        return self._events(rest) if rest else b""

    def body(self, payload: bytes) -> bytes:
        # A stream answered with a Content-Length arrives whole: the same cut, in one go.
        return self.feed(payload) + self.finish()

    def _events(self, complete: bytes) -> bytes:
        self.events += complete.count(_SEPARATOR)
        if _USAGE_KEY not in complete or _USAGE.search(complete) is None:
            return complete
        kept = []
        for event in complete.split(_SEPARATOR):
            if not event:
                continue
            if _USAGE.search(event) is not None and self._usage_event(event):
                continue
            kept.append(event + _SEPARATOR)
        return b"".join(kept)

    def _usage_event(self, event: bytes) -> bool:
        """Read the usage of an event; True when the client is not to get it (usage only, and the
        router asked for it)."""
        data = event.strip()
        if not data.startswith(b"data:"):
            return False
        try:
            doc = _loads(data[5:])
        except ValueError:
            return False
        if not isinstance(doc, dict) or not isinstance(doc.get("usage"), dict):
            return False
        usage = doc["usage"]
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            self.prompt, self.completion, self.reported = prompt, completion, True
        return self.strip and doc.get("choices") == []


def tap_for(document: dict[str, Any], added_usage: bool) -> Tap:
    """The tap for an admitted request: streams are cut into events, other answers read whole."""
    if document.get("stream") is True:
        return SseTap(strip=added_usage)
    return BodyTap()
