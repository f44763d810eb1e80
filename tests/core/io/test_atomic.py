import os

import pytest

from napari_cellquant.core.errors import OutputError, OutputExistsError
from napari_cellquant.core.io.atomic import atomic_path, write_text_atomic


def test_refuses_to_overwrite_unless_asked(tmp_path):
    target = tmp_path / "out.json"
    write_text_atomic(target, "first")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_text_atomic(target, "second")
    assert target.read_text() == "first"
    write_text_atomic(target, "second", overwrite=True)
    assert target.read_text() == "second"


def test_failure_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_temp_file_keeps_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "labels.tif") as tmp:
        assert tmp.suffix == ".tif"
        tmp.write_bytes(b"x")
    assert (tmp_path / "labels.tif").read_bytes() == b"x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write here"):
            write_text_atomic(folder / "x.txt", "data")
    finally:
        folder.chmod(0o700)


def test_full_disk_during_rename_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OutputError, match="No space left on device"):
        write_text_atomic(tmp_path / "counts.csv", "image,class,count\n")
    assert os.listdir(tmp_path) == []
