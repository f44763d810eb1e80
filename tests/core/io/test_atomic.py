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

    monkeypatch.setattr(os, "replace", no_space)  # publishing over a file (overwrite)
    monkeypatch.setattr(os, "link", no_space)  # publishing a new name
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="No space left on device"):
            write_text_atomic(tmp_path / "counts.csv", "image,class,count\n", overwrite=overwrite)
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_permissions_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "counts.csv", "a,b\n")
        replaced = write_text_atomic(path, "c,d\n", overwrite=True)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert replaced.stat().st_mode & 0o777 == mode


def test_a_target_created_while_writing_is_never_replaced(tmp_path):
    target = tmp_path / "annotations.json"
    with pytest.raises(OutputExistsError), atomic_path(target) as tmp:
        tmp.write_text("ours")
        target.write_text("another process's")  # after our check, before our publish
    assert target.read_text() == "another process's"
    assert os.listdir(tmp_path) == ["annotations.json"]  # our temporary file is gone


def test_publishing_without_hard_links_still_refuses_an_existing_target(tmp_path, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    target = write_text_atomic(tmp_path / "a.txt", "first")
    assert target.read_text() == "first"
    with pytest.raises(OutputExistsError), atomic_path(target) as tmp:
        tmp.write_text("second")
    assert target.read_text() == "first" and os.listdir(tmp_path) == ["a.txt"]
