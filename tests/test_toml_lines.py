"""Where a key is written in a TOML file (arbiter/toml_lines.py): the line an error
about a parsed value names."""

from __future__ import annotations

import tomllib

import pytest

from arbiter.toml_lines import decode_error_position, deepest_line, key_lines, line_of

DOCUMENT = """\
# a comment = not a key
title = "x"  # [not.a.table]
[executor]
kind = "local"
timeout.seconds = 5
[executor.options]
"quoted.key" = 1
'literal' = 2
nested = { a = 1, b = [1, 2] }
[[sources]]
text = \"\"\"
fake = "a key inside a string"
[fake.table]
\"\"\"
raw = '''
other = 1'''
list = [
  "fake = 1",
  { inline = true },  # and = a comment
]
after = true
"""


def test_the_document_is_valid_toml() -> None:
    tomllib.loads(DOCUMENT)


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("title", 2),
        ("executor", 3),
        ("executor.kind", 4),
        ("executor.timeout", 5),  # written by the dotted key
        ("executor.timeout.seconds", 5),
        ("executor.options", 6),
        ("executor.options.quoted.key", 7),
        ("executor.options.literal", 8),
        ("executor.options.nested", 9),
        ("executor.options.nested.b", 9),  # inside an inline table: the holding key's line
        ("sources", 10),
        ("sources.text", 11),
        ("sources.raw", 15),
        ("sources.list", 17),
        ("sources.after", 21),
        ("sources.list.0.inline", 17),
    ],
)
def test_a_key_is_found_on_the_line_that_writes_it(key: str, line: int) -> None:
    assert line_of(DOCUMENT, key) == line


def test_lines_inside_strings_arrays_and_comments_are_not_keys() -> None:
    keys = key_lines(DOCUMENT)
    assert not {"fake", "sources.fake", "sources.other", "a comment", "not"} & set(keys)
    assert "and" not in {k.rpartition(".")[2] for k in keys}


def test_a_key_not_in_the_document_has_no_line() -> None:
    assert line_of(DOCUMENT, "nowhere.at.all") is None


def test_windows_line_ends_count_the_same() -> None:
    assert line_of(DOCUMENT.replace("\n", "\r\n"), "sources.after") == 21


def test_a_decode_error_gives_its_message_line_and_column() -> None:
    with pytest.raises(tomllib.TOMLDecodeError) as err:
        tomllib.loads("a = 1\nb = \n")
    assert decode_error_position(str(err.value)) == ("Invalid value", 2, 5)
    assert decode_error_position("Unclosed array (at end of document)") == (
        "Unclosed array (at end of document)",
        None,
        None,
    )


def test_the_deepest_line_is_where_nesting_goes_deepest() -> None:
    assert deepest_line('a = [1]\nb = [[[["x]]]]"]]]]\nc = [[2]]\n') == 2
