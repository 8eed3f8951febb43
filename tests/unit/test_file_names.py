"""Output names near the file system's 255-byte limit: :func:`msma.utils.files.shorten_name`, the temporary file of
:func:`msma.utils.files.atomic_write` and ``msma eval``'s default report name (a photo or checkpoint may use the whole
limit; what msma appends to it must still fit)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from msma.evaluation.report import default_output
from msma.utils.files import NAME_MAX_BYTES, atomic_write_text, shorten_name


def test_short_names_are_kept() -> None:
    assert shorten_name("takeo", 10) == "takeo"
    assert shorten_name("é" * 5, 10) == "é" * 5  # 10 bytes: fits exactly


def test_long_names_keep_a_prefix_and_a_hash_of_the_whole_name() -> None:
    name = "a" * 300
    short = shorten_name(name, 200)
    assert len(short.encode()) == 200
    assert short == "a" * 191 + "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
    assert shorten_name(name, 200) == short  # deterministic
    # Names sharing the kept prefix stay apart.
    assert shorten_name("a" * 299 + "b", 200) != short


def test_a_cut_multibyte_character_is_dropped_not_split() -> None:
    name = "写" * 100  # 3 bytes each
    short = shorten_name(name, 50)
    encoded = short.encode("utf-8")  # valid UTF-8, or this raises
    assert len(encoded) <= 50 and short[-9] == "~"
    assert short.count("写") == 13  # 41 bytes left for the prefix: 13 whole characters (39 bytes), not 13.67


def test_max_bytes_below_the_hash_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 10"):
        shorten_name("abc", 9)


def test_atomic_write_of_a_name_at_the_limit(tmp_path: Path) -> None:
    """The temporary file repeated the whole target name (``.<name>.<random>.tmp``): a 250-byte target, legal
    itself, failed with 'File name too long' before anything was written."""
    target = tmp_path / ("b" * 245 + ".json")
    assert len(target.name.encode()) == 250 <= NAME_MAX_BYTES
    atomic_write_text(target, '{"ok": 1}')
    assert target.read_text() == '{"ok": 1}'
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left


def test_eval_report_name_of_a_long_checkpoint_name(tmp_path: Path) -> None:
    ckpt = tmp_path / ("run" + "x" * 240 + ".ckpt")
    out = default_output(str(ckpt), "aflw2000_3d", "deep3d")
    assert (
        out.parent == tmp_path and out.name.startswith("eval_runxxx") and out.name.endswith("_aflw2000_3d_deep3d.json")
    )
    assert len(out.name.encode()) <= NAME_MAX_BYTES
    atomic_write_text(out, "{}")  # the file system takes it
    assert default_output(str(tmp_path / "best.ckpt"), "photos", None) == tmp_path / "eval_best_photos.json"
