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


def test_start_up_cleaning_leaves_a_users_own_hidden_files_alone(tmp_path):
    from selfcorrect.atomic import remove_temporaries

    mine = [".env.old", ".data.tmp", ".notes.tmp-v2", ".git.old"]
    for name in mine:
        (tmp_path / name).mkdir()
    leftover = tmp_path / ".final.sc-tmp-ab12cd34"  # what a kill -9 mid-write leaves
    leftover.mkdir()
    (tmp_path / ".LATEST.sc-tmp").write_text("x")
    assert [p.name for p in remove_temporaries(tmp_path)] == [".LATEST.sc-tmp", ".final.sc-tmp-ab12cd34"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mine)


@pytest.mark.parametrize("fail_at", [1, 2], ids=["after-retiring-the-old", "moving-the-new-in"])
def test_an_interruption_between_the_two_renames_keeps_the_old_folder(tmp_path, monkeypatch, fail_at):
    import os

    from selfcorrect import atomic

    target = tmp_path / "final"
    with atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    calls = []
    real_replace = os.replace

    def replace(src, dst):
        calls.append(src)
        if len(calls) == fail_at and fail_at == 2:
            raise OSError("disk gone")
        real_replace(src, dst)
        if len(calls) == fail_at:  # a signal's exception raised just after the rename returned
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises((KeyboardInterrupt, OSError)):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("new")
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
