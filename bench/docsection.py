"""One marked section of docs/benchmarks.md, written by the benchmark that measured it."""

from __future__ import annotations

from pathlib import Path


def replace_section(docs: Path, start: str, end: str, section: str) -> None:
    """Puts `section` (which carries its own `start` and `end` markers) in place of the text between
    the markers, or at the end of the file when they are not there yet."""
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    docs.write_text(text)
