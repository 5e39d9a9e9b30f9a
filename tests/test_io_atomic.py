"""The one writer: a failed write leaves the old file, no temporary file, and one coder error naming the file."""

import errno
import os

import pytest

import coder.io.atomic
from coder.errors import RunIOError
from coder.io.atomic import write_text


def _full_disk(handle):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _write_then_refuse_rename(monkeypatch):
    def refuse(source, target):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(coder.io.atomic.os, "replace", refuse)
    return lambda handle: handle.write(b"new")


@pytest.mark.parametrize(("write", "reason"), [
    (lambda monkeypatch: _full_disk, "No space left on device"),
    (_write_then_refuse_rename, "Permission denied"),
], ids=["disk-full", "permission-denied"])
def test_a_refused_write_is_one_error_naming_the_file_and_leaves_the_old_one(tmp_path, monkeypatch, write, reason):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RunIOError, match=f"{target}: cannot write it \\({reason}\\)") as caught:
        coder.io.atomic.write_atomically(target, write(monkeypatch))
    assert isinstance(caught.value, OSError)  # a cache writer that may go on without its file still catches it
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_write_text_round_trips(tmp_path):
    write_text(tmp_path / "a.txt", "é")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é"
