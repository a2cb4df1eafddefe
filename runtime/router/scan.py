"""Large JSON bodies without a long GIL hold: cut the long string literals out before parsing.

A chat request with images is mostly base64 text inside a few JSON strings. Parsing all of it
with orjson is one C call that holds the GIL for the whole body (a 50 MB body stalled every other
stream on the event loop for about 250 ms, even from a worker thread: docs/benchmarks.md).
`shrink` finds the string literals with `bytes.find`, a megabyte at a time, in Python code that the
interpreter interrupts every switch interval, replaces each literal of `BIG_STRING_BYTES` or more
by a short placeholder, and hands back the reduced document (a few KB, parsed in microseconds)
and the literals as zero-copy memoryviews.

Exactness: in valid JSON every `"` outside a string opens one and the next unescaped `"` closes
it, which is the rule used here; the reduced document is then parsed by orjson, which checks all
the structure around the placeholders. A long literal that holds a backslash (an escape would make
its decoded text differ from its bytes) or a body with more than `MAX_STRINGS` literals is not
reduced: the caller parses it whole.
"""

from __future__ import annotations

import secrets

BIG_STRING_BYTES = 64 * 1024
MAX_STRINGS = 20_000
# bytes.find holds the GIL for its whole range: a 50 MB range is one call of several ms. Searched a
# window at a time, the interpreter can hand the GIL to the event loop between the windows.
WINDOW_BYTES = 1 << 20
# A tenant cannot guess the placeholders: a per-process random part (a guessed one would only make
# the router check a long literal in its place while vLLM gets the short string).
_TOKEN = secrets.token_hex(8)
PLACEHOLDER_PREFIX = f"\x00pixtral-{_TOKEN}:"
_PLACEHOLDER_JSON = b'"\\u0000pixtral-' + _TOKEN.encode() + b':%d"'


def shrink(body: bytes) -> tuple[bytes, dict[str, memoryview]] | None:
    """(reduced JSON, placeholder -> literal bytes), or None when the body is parsed whole."""
    if len(body) < BIG_STRING_BYTES:
        return None
    def find(needle: bytes, start: int, stop: int | None = None) -> int:
        stop = len(body) if stop is None else stop
        while start < stop:
            hit = body.find(needle, start, min(start + WINDOW_BYTES, stop))
            if hit >= 0:
                return hit
            start += WINDOW_BYTES
        return -1

    view = memoryview(body)
    pieces: list[bytes | memoryview] = []
    big: dict[str, memoryview] = {}
    copied_to = 0
    pos = 0
    strings = 0
    while True:
        start = find(b'"', pos)
        if start < 0:
            break
        strings += 1
        if strings > MAX_STRINGS:
            return None
        end = start
        while True:
            end = find(b'"', end + 1)
            if end < 0:
                return None  # unterminated: the whole-body parse reports it
            backslashes = 0
            k = end - 1
            while body[k] == 0x5C:  # a quote preceded by an odd run of backslashes is escaped
                backslashes += 1
                k -= 1
            if backslashes % 2 == 0:
                break
        if end - start - 1 >= BIG_STRING_BYTES:
            if find(b"\\", start + 1, end) >= 0:
                return None
            name = f"{PLACEHOLDER_PREFIX}{len(big)}"
            big[name] = view[start + 1:end]
            pieces.append(view[copied_to:start])
            pieces.append(_PLACEHOLDER_JSON % (len(big) - 1))
            copied_to = end + 1
        pos = end + 1
    if not big:
        return None
    pieces.append(view[copied_to:])
    return b"".join(pieces), big
