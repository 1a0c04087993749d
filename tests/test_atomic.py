import pytest

from selfcorrect.atomic import atomic_folder, write_text_atomic


def test_failed_write_leaves_the_old_folder_and_no_debris(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-save")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_successful_write_replaces_the_folder(tmp_path):
    target = tmp_path / "ckpt"
    for text in ("one", "two"):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text(text)
    assert (target / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    write_text_atomic(tmp_path / "LATEST", "x")
    assert (tmp_path / "LATEST").read_text() == "x" and not list(tmp_path.glob(".LATEST*"))
