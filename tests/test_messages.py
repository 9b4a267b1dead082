"""How messages reach the user: one-line errors are one line, our warnings read like our other messages."""

from __future__ import annotations

import codecs
import subprocess
import sys
from pathlib import Path

import pytest

import mlm_lightning
from mlm_lightning.__main__ import main
from mlm_lightning.errors import MLMError
from tests.conftest import make_corpus
from tests.helpers import assert_one_line
from tests.test_bad_input import set_arg

ONE_LINE_CASES = {
    "negative max_steps": (["--trainer.max_steps", "-5"], "error: trainer.max_steps must be -1 (no limit) or >= 0"),
    "unreachable URL": (["--data.train_files", "[http://127.0.0.1:9/x.txt]"], "error: could not download"),
    "unwritable cache": (["--data.cache_dir", "{tmp}/a_file/cache"], "error: cannot write to"),
}


@pytest.mark.parametrize("case", ONE_LINE_CASES, ids=list(ONE_LINE_CASES))
def test_a_one_line_error_is_one_line(case: str, tiny_args: list[str], tmp_path: Path, capfd) -> None:
    # Lightning's "Seed set to 42" came first: seeding happens before the configuration is checked.
    (tmp_path / "a_file").write_text("not a folder")
    args = list(tiny_args)
    flags, start = ONE_LINE_CASES[case]
    for key, value in zip(flags[::2], flags[1::2]):
        args = set_arg(args, key, value.format(tmp=tmp_path))
    capfd.readouterr()
    assert main(["fit", *args]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(start), err


_WARN_SCRIPT = """
import sys, warnings
from mlm_lightning.quiet import quiet_libraries
ours, message = sys.argv[1], sys.argv[2]
with quiet_libraries():
    import lightning.fabric.utilities.warnings  # sets Lightning's formatter once the command has started, as a run does
    warnings.warn_explicit(message, UserWarning, ours, 257)
    warnings.warn_explicit("theirs", UserWarning, "/site-packages/other/x.py", 3)
"""


def test_our_warnings_are_printed_like_our_other_messages() -> None:
    # They read ".../mlm_lightning/data/cache.py:257: the tokenization cache entry ... is damaged".
    ours = str(Path(mlm_lightning.__file__).parent / "data" / "cache.py")
    message = "the tokenization cache entry /c/x is damaged (meta.json is missing):\n rebuilding it"
    cmd = [sys.executable, "-c", _WARN_SCRIPT, ours, message]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert lines[0] == "warning: the tokenization cache entry /c/x is damaged (meta.json is missing): rebuilding it"
    assert "/site-packages/other/x.py:3" in lines[1] and "theirs" in lines[1]  # others' warnings as before


@pytest.mark.parametrize("encoding_errors", ["strict", "replace"])
def test_a_utf16_file_says_so_and_how_to_convert_it(
    encoding_errors: str, tiny_args: list[str], tmp_path: Path, capsys
) -> None:
    # It suggested encoding_errors=replace, which reads ASCII in UTF-16 as letters and NUL bytes: garbage to train on.
    path = tmp_path / "utf16.txt"
    path.write_text("\n".join(make_corpus(30)), encoding="utf-16")  # with a byte-order mark, as Windows tools write
    args = set_arg(set_arg(tiny_args, "--data.train_files", f"[{path}]"), "--data.encoding_errors", encoding_errors)
    capsys.readouterr()
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert_one_line(err, f"{path}:", "UTF-16", f"iconv -f UTF-16 -t UTF-8 {path} > {tmp_path / 'utf16.utf8.txt'}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("codec", "bom", "name"),
    [
        ("utf-16-be", codecs.BOM_UTF16_BE, "UTF-16 big-endian"),
        ("utf-32-le", codecs.BOM_UTF32_LE, "UTF-32 little-endian"),
        ("utf-32-be", codecs.BOM_UTF32_BE, "UTF-32 big-endian"),
    ],
)
@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_every_utf16_and_utf32_byte_order_mark_is_recognised(
    codec: str, bom: bytes, name: str, suffix: str, tmp_path: Path
) -> None:
    from mlm_lightning.data.reading import file_digest

    path = tmp_path / f"f{suffix}"
    path.write_bytes(bom + "text\n".encode(codec))
    with pytest.raises(MLMError, match=f"looks like {name.split()[0]}, not UTF-8 .*{name} byte-order mark"):
        file_digest(path, "replace")
    path.write_bytes(codecs.BOM_UTF8 + b"text\n")  # UTF-8's own mark is fine
    assert file_digest(path, "strict")[1] == 0
