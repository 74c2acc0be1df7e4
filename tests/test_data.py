from pathlib import Path

import pytest

from reqcheck.data import fingerprint, load_examples, stratified_split
from reqcheck.errors import ReqcheckError


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
