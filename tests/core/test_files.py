"""The one atomic writer (:mod:`efficientdl.core.files`): whole files, the permissions of a
plain ``open`` (``0o666 & ~umask``), directories created only when a file is written into a
declared output directory."""

import contextlib
import os
import stat

import pytest

from efficientdl.core import files
from efficientdl.errors import DataError, FormatError


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_new_files_get_0666_minus_the_umask(tmp_path, mask):
    with umask(mask):
        assert files.current_umask() == mask
        files.atomic_write(tmp_path / "a.bin", b"abc")
        with open(tmp_path / "plain.bin", "wb") as f:       # what a plain open gives, for comparison
            f.write(b"abc")
    assert mode(tmp_path / "a.bin") == 0o666 & ~mask == mode(tmp_path / "plain.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "plain.bin"]      # no temporary left


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "kept.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    with umask(0o077):
        files.atomic_write(target, b"new")
    assert mode(target) == 0o640 and target.read_bytes() == b"new"


def test_directories_are_made_when_a_file_is_written_into_a_declared_one_and_removed_when_it_fails(tmp_path):
    # an undeclared missing directory is refused, as a plain open refuses it
    with pytest.raises(DataError, match="No such file or directory"):
        files.atomic_write(tmp_path / "undeclared" / "c.bin", b"x")
    assert list(tmp_path.iterdir()) == []

    files.declare_output_directory(tmp_path / "a")
    assert list(tmp_path.iterdir()) == []                # declaring creates nothing
    target = tmp_path / "a" / "b" / "c.bin"
    with umask(0o022):
        files.atomic_write(target, b"x")
    assert target.read_bytes() == b"x" and mode(tmp_path / "a" / "b") == 0o755

    files.declare_output_directory(tmp_path / "new")
    failing = tmp_path / "new" / "deeper" / "f.bin"
    with pytest.raises(RuntimeError):
        with files.atomic_open(failing) as stream:
            stream.write(b"half")
            raise RuntimeError("the producer failed")
    assert not (tmp_path / "new").exists()             # nothing left: no file, no directory

    files.declare_output_directory(tmp_path / "n2")
    with pytest.raises(FormatError, match=r"cannot write \(No space left on device\)"):
        with files.atomic_open(tmp_path / "n2" / "f.bin", FormatError) as stream:
            raise OSError(28, "No space left on device")
    assert not (tmp_path / "n2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_errors_are_one_line_of_the_callers_kind(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataError, match="is a directory"):
        files.atomic_write(tmp_path, b"x")
    with pytest.raises(DataError, match="cannot write checkpoint") as e:
        files.atomic_write(tmp_path / "file" / "below.bin", b"x", what=" checkpoint")     # a file on the way
    files.declare_output_directory(tmp_path / "file" / "sub")
    with pytest.raises(DataError, match="cannot write"):
        files.atomic_write(tmp_path / "file" / "sub" / "below.bin", b"x")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
