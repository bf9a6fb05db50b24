"""Where a key is written in a TOML file, so an error about a parsed value can name
``file:line`` (``tomllib`` parses values but keeps no positions).

:func:`key_lines` scans the text once: table headers (``[a.b]``, ``[[a.b]]``) and
``key = value`` lines, with bare, quoted and dotted keys. Values are skipped whole,
including multi-line strings and arrays, so a line inside one is never taken for a
key. A key inside an inline table (``a = { b = 1 }``) or an array is found at the
line of the key that holds it. Meant for text ``tomllib`` has already accepted.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DECODE_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def line_of(text: str, key: str) -> int | None:
    """The line (1-based) where the dotted ``key`` (``groups.EU.countries``) is first
    written; for a key not written as such (inside an inline table, an array element),
    the line of the nearest enclosing key. None if not even its top-level key is."""
    lines = key_lines(text)
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0]
    return None


def key_lines(text: str) -> dict[str, int]:
    """Every key path written in ``text`` (dotted, and each of its prefixes) → the
    first line that writes it."""
    found: dict[str, int] = {}
    table: tuple[str, ...] = ()
    value = _Value()

    def record(path: tuple[str, ...], line: int) -> None:
        for end in range(1, len(path) + 1):
            found.setdefault(".".join(path[:end]), line)

    for number, line in enumerate(text.split("\n"), start=1):
        if value.open:
            value.scan(line, 0)
            continue
        start = len(line) - len(line.lstrip(" \t"))
        if line.startswith("[", start):
            depth = 2 if line.startswith("[[", start) else 1
            parsed = _dotted_key(line, start + depth)
            if parsed is not None:
                table = parsed[0]
                record(table, number)
            continue
        parsed = _dotted_key(line, start)
        if parsed is not None and line.startswith("=", parsed[1]):
            record((*table, *parsed[0]), number)
            value.scan(line, parsed[1] + 1)
    return found


def decode_error_position(message: str) -> tuple[str, int | None, int | None]:
    """``tomllib``'s error message without its ``(at line L, column C)`` suffix, and L
    and C (None when the message names no position, e.g. "at end of document")."""
    match = _DECODE_POSITION.search(message)
    if match is None:
        return message, None, None
    return message[: match.start()], int(match.group(1)), int(match.group(2))


def last_line(text: str) -> int:
    """The number of the last line with anything on it (where "end of document" is)."""
    return text.rstrip().count("\n") + 1


def deepest_line(text: str) -> int:
    """The first line where arrays and inline tables are nested deepest (where a
    document too deeply nested for the parser goes too deep)."""
    value = _Value()
    deepest, where = 0, 1
    for number, line in enumerate(text.split("\n"), start=1):
        value.scan(line, 0)
        if value.deepest > deepest:
            deepest, where = value.deepest, number
    return where


def _dotted_key(line: str, i: int) -> tuple[tuple[str, ...], int] | None:
    """The dotted key starting at ``line[i]`` and the index just after it (and the
    blanks after it), or None if no key starts there."""
    parts: list[str] = []
    while True:
        i = _skip_blanks(line, i)
        if line.startswith('"', i) or line.startswith("'", i):
            quote = line[i]
            end = i + 1
            while end < len(line) and line[end] != quote:
                end += 2 if quote == '"' and line[end] == "\\" else 1
            if end >= len(line):
                return None
            raw = line[i : end + 1]
            try:
                parts.append(str(tomllib.loads(f"k = {raw}")["k"]))
            except tomllib.TOMLDecodeError:
                parts.append(raw[1:-1])
            i = end + 1
        else:
            match = _BARE_KEY.match(line, i)
            if match is None:
                return None
            parts.append(match.group())
            i = match.end()
        i = _skip_blanks(line, i)
        if not line.startswith(".", i):
            return tuple(parts), i
        i += 1


def _skip_blanks(line: str, i: int) -> int:
    while i < len(line) and line[i] in " \t":
        i += 1
    return i


@dataclass
class _Value:
    """Scans a value, line by line: whether it continues on the next line (an open
    multi-line string, array or inline table) and how deep it nests."""

    quote: str = ""
    depth: int = 0
    deepest: int = 0

    @property
    def open(self) -> bool:
        return bool(self.quote) or self.depth > 0

    def scan(self, line: str, i: int) -> None:
        self.deepest = self.depth
        while i < len(line):
            if self.quote:
                if line[i] == "\\" and self.quote in ('"', '"""'):
                    i += 2
                elif line.startswith(self.quote, i):
                    i += len(self.quote)
                    # a multi-line string may end in one or two quotes of its own
                    while len(self.quote) == 3 and line.startswith(self.quote[0], i):
                        i += 1
                    self.quote = ""
                else:
                    i += 1
                continue
            c = line[i]
            if c == "#":
                break
            if line.startswith('"""', i) or line.startswith("'''", i):
                self.quote = line[i : i + 3]
                i += 3
                continue
            if c in "\"'":
                self.quote = c
            elif c in "[{":
                self.depth += 1
                self.deepest = max(self.deepest, self.depth)
            elif c in "]}":
                self.depth = max(0, self.depth - 1)
            i += 1
        if len(self.quote) == 1:
            self.quote = ""  # a one-line string cannot go on (tomllib refused it already)
