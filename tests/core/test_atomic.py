"""A file or folder written through core.atomic is the previous complete one or the new
complete one, never a partial one, and nothing is left beside it."""

from __future__ import annotations

import pytest

from clip_lora_pipeline.core.atomic import atomic_dir, atomic_path, settled_dir


def test_atomic_path_renames_a_complete_file_into_place(tmp_path):
    final = tmp_path / "sub" / "table.parquet"
    with atomic_path(final) as staging:
        assert staging.parent == final.parent and staging.name.startswith(".table.parquet.")
        staging.write_text("new")
        assert not final.exists()  # not before the block ends
    assert final.read_text() == "new"
    assert [p.name for p in final.parent.iterdir()] == ["table.parquet"]


def test_atomic_path_interrupted_keeps_the_previous_file(tmp_path):
    final = tmp_path / "metrics.json"
    final.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as staging:
        staging.write_text("half")
        raise KeyboardInterrupt
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_dir_replaces_the_folder_or_leaves_it(tmp_path):
    final = tmp_path / "last"
    for content in ("first", "second"):
        with atomic_dir(final) as staging:
            (staging / "state").write_text(content)
    assert (final / "state").read_text() == "second"
    with pytest.raises(RuntimeError), atomic_dir(final) as staging:
        (staging / "state").write_text("half")
        raise RuntimeError("killed")
    assert (final / "state").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_a_kill_between_the_renames_is_undone_and_blocks_nothing(tmp_path):
    final = tmp_path / "last"
    with atomic_dir(final) as staging:
        (staging / "state").write_text("previous")
    final.rename(tmp_path / "last.old")  # killed after the first rename
    assert settled_dir(final) and (final / "state").read_text() == "previous"
    assert not (tmp_path / "last.old").exists()
    # killed after the second rename, before the old one was removed
    (tmp_path / "last.old").mkdir()
    (tmp_path / "last.old" / "state").write_text("older")
    with atomic_dir(final) as staging:
        (staging / "state").write_text("new")
    assert (final / "state").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    assert not settled_dir(tmp_path / "never")
