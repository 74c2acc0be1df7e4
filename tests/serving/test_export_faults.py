"""`reqcheck export` against what users' folders hold: it writes only its own files, each whole or not at all.

Issue 33: an adapter-only export deleted the `base.gguf` an earlier `--base` export left; a symlinked
`--gguf` folder was replaced by a real one; the folder and start file were private whatever the umask; a
converter that wrote nothing or garbage gave a traceback.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from reqcheck.atomic import STAGING_PREFIX, atomic_directory, atomic_write_text
from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import content_hash
from reqcheck.formats.served import TASK_NAME_KEY, ServedTag
from reqcheck.serving import export as export_module
from reqcheck.serving.export import ADAPTER_FILE, BASE_FILE, START_FILE, export
from reqcheck.training.loop import TrainResult


def _tag(gguf_file: Path) -> ServedTag:
    return ServedTag.parse(gguf.GGUFReader(gguf_file).get_field(TASK_NAME_KEY).contents())


def _tag_of(adapter: Path) -> ServedTag:
    return ServedTag(adapter.name, content_hash(adapter))


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    """A umask of 022, as on most machines: group and others may read."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_an_adapter_only_export_keeps_the_base_an_earlier_export_left(
    tiny_adapters: dict[str, TrainResult], llama_cpp: Path, tmp_path: Path
) -> None:
    lora, alora = tiny_adapters["lora"].outfile, tiny_adapters["alora"].outfile
    out = tmp_path / "served"
    export(lora, out)
    (out / BASE_FILE).write_bytes(b"the base an earlier --base export wrote")  # a real one takes minutes
    export(alora, out)  # retrained, re-exported without --base
    assert (out / BASE_FILE).read_bytes() == b"the base an earlier --base export wrote"
    assert _tag(out / ADAPTER_FILE) == _tag_of(alora)
    assert _names(out) == sorted([ADAPTER_FILE, BASE_FILE, START_FILE])


def test_a_symlinked_folder_is_followed_not_replaced(
    tiny_adapters: dict[str, TrainResult], llama_cpp: Path, tmp_path: Path
) -> None:
    lora, alora = tiny_adapters["lora"].outfile, tiny_adapters["alora"].outfile
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    export(lora, link)
    exported = export(alora, link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert _tag(real / ADAPTER_FILE) == _tag_of(alora)
    assert exported.adapter == link / ADAPTER_FILE
    assert _names(real) == sorted([ADAPTER_FILE, START_FILE]) and _names(tmp_path) == ["link", "real"]


def test_modes_follow_the_umask(
    tiny_adapters: dict[str, TrainResult], llama_cpp: Path, tmp_path: Path, umask: None
) -> None:
    out = tmp_path / "served"
    export(tiny_adapters["lora"].outfile, out)
    assert _mode(out) == 0o755
    assert {name: _mode(out / name) for name in _names(out)} == {ADAPTER_FILE: 0o644, START_FILE: 0o644}


def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: None) -> None:
    """The JSON and HTML gate reports, and every other file and folder written atomically."""
    atomic_write_text(tmp_path / "report.json", "{}")
    with atomic_directory(tmp_path / "adapter") as tmp:
        (tmp / "reqcheck.json").write_text("{}")
    assert _mode(tmp_path / "report.json") == 0o644 and _mode(tmp_path / "adapter") == 0o755
    os.umask(0o077)  # a user who keeps everything private still does
    atomic_write_text(tmp_path / "private.json", "{}")
    with atomic_directory(tmp_path / "private") as tmp:
        (tmp / "x").write_text("x")
    assert _mode(tmp_path / "private.json") == 0o600 and _mode(tmp_path / "private") == 0o700


@pytest.mark.parametrize(
    "converter",
    [
        "import sys\n",  # exits 0 and writes nothing
        "import sys\nopen(sys.argv[sys.argv.index('--outfile') + 1], 'wb').write(b'not a gguf file')\n",
    ],
    ids=["writes-nothing", "writes-garbage"],
)
def test_a_converter_that_writes_no_gguf_is_one_sentence_and_leaves_nothing(
    converter: str, tiny_adapters: dict[str, TrainResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "convert_lora_to_gguf.py").write_text(converter)
    monkeypatch.setenv("REQCHECK_LLAMA_CPP", str(tree))
    out = tmp_path / "served"
    with pytest.raises(ReqcheckError, match=r"convert_lora_to_gguf\.py .*REQCHECK_LLAMA_CPP") as caught:
        export(tiny_adapters["lora"].outfile, out)
    assert "\n" not in str(caught.value)
    assert not out.exists()


def _interrupting(*args: object) -> None:
    raise KeyboardInterrupt  # how the CLI turns SIGTERM


def test_an_interrupted_export_leaves_the_folder_as_it_was(
    tiny_adapters: dict[str, TrainResult], llama_cpp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "served"
    export(tiny_adapters["lora"].outfile, out)
    before = {name: (out / name).read_bytes() for name in _names(out)}
    monkeypatch.setattr(export_module, "_set_keys", _interrupting)
    with pytest.raises(KeyboardInterrupt):
        export(tiny_adapters["alora"].outfile, out)
    assert {name: (out / name).read_bytes() for name in _names(out)} == before
    with pytest.raises(KeyboardInterrupt):
        export(tiny_adapters["alora"].outfile, tmp_path / "fresh")
    assert _names(tmp_path) == ["served"]


def test_two_exports_into_one_folder_at_once_give_one_failure_and_one_whole_folder(
    tiny_adapters: dict[str, TrainResult], llama_cpp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lora, alora = tiny_adapters["lora"].outfile, tiny_adapters["alora"].outfile
    out = tmp_path / "served"
    set_keys = export_module._set_keys
    outcomes: dict[str, str] = {}

    def another_export_meanwhile(*args: object) -> None:
        if not outcomes:  # while the first export converts, a second one starts into the same folder
            outcomes["inner"] = "running"
            try:
                export(alora, out)
                outcomes["inner"] = "ok"
            except ReqcheckError as exc:
                outcomes["inner"] = str(exc)
        set_keys(*args)

    monkeypatch.setattr(export_module, "_set_keys", another_export_meanwhile)
    try:
        export(lora, out)
        outcomes["outer"] = "ok"
    except ReqcheckError as exc:
        outcomes["outer"] = str(exc)
    assert sorted(outcomes.values()).count("ok") == 1, outcomes
    failure = next(message for message in outcomes.values() if message != "ok")
    assert "another" in failure and "\n" not in failure
    winner = lora if outcomes["outer"] == "ok" else alora
    assert _names(out) == sorted([ADAPTER_FILE, START_FILE])
    assert _tag(out / ADAPTER_FILE) == _tag_of(winner)


def test_a_staging_folder_a_killed_export_left_is_cleared_not_refused(
    tiny_adapters: dict[str, TrainResult], llama_cpp: Path, tmp_path: Path
) -> None:
    out = tmp_path / "served"
    stale = out / f"{STAGING_PREFIX}dead"
    stale.mkdir(parents=True)
    (stale / ADAPTER_FILE).write_bytes(b"half an adapter")  # SIGKILL leaves what it had written
    export(tiny_adapters["lora"].outfile, out)
    assert _names(out) == sorted([ADAPTER_FILE, START_FILE])


SLOW_CONVERTER = """import os, sys, time
open(sys.argv[sys.argv.index('--outfile') + 1], 'wb').write(b'GGUF half')
open(os.environ['CONVERTING'], 'w').close()
time.sleep(60)
"""


def test_sigterm_during_an_export_leaves_the_folder_as_it_was(
    tiny_adapters: dict[str, TrainResult], tmp_path: Path
) -> None:
    """As CI cancels a job: the CLI turns SIGTERM into an interrupt, the converter is stopped, nothing stays."""
    tree, out, marker = tmp_path / "llama.cpp", tmp_path / "served", tmp_path / "converting"
    tree.mkdir()
    (tree / "convert_lora_to_gguf.py").write_text(SLOW_CONVERTER)
    out.mkdir()
    earlier = {ADAPTER_FILE: b"earlier adapter", BASE_FILE: b"earlier base", START_FILE: b"earlier start"}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    env = dict(os.environ, REQCHECK_LLAMA_CPP=str(tree), CONVERTING=str(marker))
    command = [sys.executable, "-c", "from reqcheck.cli import main; main()", "export"]
    with subprocess.Popen(
        [*command, str(tiny_adapters["lora"].outfile), "--gguf", str(out)], env=env, stderr=subprocess.PIPE
    ) as process:
        try:
            started = time.monotonic()
            while not marker.exists() and process.poll() is None and time.monotonic() - started < 180:
                time.sleep(0.2)
            assert marker.exists(), "the export never reached the converter"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) != 0
        finally:
            process.kill()
    assert {name: (out / name).read_bytes() for name in _names(out)} == earlier
    assert _names(tmp_path) == ["converting", "llama.cpp", "served"]
