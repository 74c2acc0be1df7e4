import json
import re
from pathlib import Path

import pytest

from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import fingerprint, load_examples, stratified_split


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return path


def test_every_bad_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"item": "ok", "label": "yes"}\n'
        "not json\n"
        '{"item": "x"}\n'
        "\n"
        '{"item": "", "label": "no"}\n'
        '{"item": "x", "label": 1}\n'
        '["a list"]\n',
    )
    with pytest.raises(ReqcheckError) as info:
        load_examples(path)
    message = str(info.value)
    assert "5 bad line(s)" in message
    for line, reason in [
        (2, "not valid JSON"),
        (3, "missing required key 'label'"),
        (5, "'item' is empty"),
        (6, "'label' must be a string"),
        (7, "expected a JSON object"),
    ]:
        assert f"{path}:{line}: {reason}" in message


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = write(tmp_path, '\n{"item": "a", "label": "yes", "id": 7}\n\n{"item": "b", "label": "no"}\n')
    examples = load_examples(path)
    assert [(e.item, e.label, e.id, e.line) for e in examples] == [("a", "yes", "7", 2), ("b", "no", None, 4)]


@pytest.mark.parametrize("content", [None, "", "\n\n"])
def test_missing_or_empty_file_is_a_clear_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReqcheckError, match="does not exist|holds no examples"):
        load_examples(path)


def test_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    rows = "".join(f'{{"item": "item {i}", "label": "{"yes" if i % 4 else "no"}"}}\n' for i in range(100))
    examples = load_examples(write(tmp_path, rows))
    train, val = stratified_split(examples, 0.2, seed=3)
    assert len(train) + len(val) == 100
    assert sum(e.label == "no" for e in val) == 5 and sum(e.label == "yes" for e in val) == 15
    again = stratified_split(examples, 0.2, seed=3)[1]
    assert [e.item for e in again] == [e.item for e in val]
    assert [e.item for e in stratified_split(examples, 0.2, seed=4)[1]] != [e.item for e in val]


def test_fingerprint_ignores_formatting_but_not_content(tmp_path: Path) -> None:
    a = load_examples(write(tmp_path, '{"item": "a", "label": "yes"}\n'))
    b = load_examples(write(tmp_path, '{ "label" : "yes",  "item":"a" }\n\n'))
    c = load_examples(write(tmp_path, '{"item": "a", "label": "no"}\n'))
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_unicode_line_separators_inside_strings_and_a_bom_are_valid(tmp_path: Path) -> None:
    """Fault 13: U+2028, U+2029 and U+0085 are valid in JSON strings (json.dumps writes them raw)."""
    rows = [{"item": f"one{sep}two", "label": "yes"} for sep in ("\u2028", "\u2029", "\u0085")]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows) + "not json\n"
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    with pytest.raises(ReqcheckError) as info:
        load_examples(path)
    assert str(info.value).endswith(f"{path}:4: not valid JSON (Expecting value)")
    path.write_bytes(b"\xef\xbb\xbf" + text.rsplit("not json", 1)[0].encode("utf-8"))
    examples = load_examples(path)
    assert [(e.item, e.line) for e in examples] == [(row["item"], n) for n, row in enumerate(rows, start=1)]


HOSTILE = {
    "deep nesting": ("[" * 100_000, "nested too deeply"),
    "5,000-digit id": ('{"item": "a", "label": "yes", "id": ' + "9" * 5000 + "}", "4300 digits"),
    "lone surrogate": ('{"item": "a \\ud800 b", "label": "yes"}', "unpaired surrogate"),
    "NUL in a string": ('{"item": "a\x00b", "label": "yes"}', "not valid JSON (Invalid control character"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_lines_are_bad_lines_not_tracebacks(tmp_path: Path, case: str) -> None:
    """Fault 14: lines that made json or fingerprint() raise are reported as file:line: reason."""
    line, reason = HOSTILE[case]
    path = write(tmp_path, '{"item": "fine", "label": "no"}\n' + line + "\n")
    with pytest.raises(ReqcheckError, match=f"{re.escape(str(path))}:2: .*{re.escape(reason)}"):
        load_examples(path)


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"item": "a", "label": "yes"}\n{"item": "\xff", "label": "no"}\n')
    with pytest.raises(ReqcheckError, match=f"{re.escape(str(path))}:2: is not UTF-8 text"):
        load_examples(path)
