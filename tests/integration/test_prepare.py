"""``msma prepare`` on generated folders of photos with bad files: the summary counts are right, reruns hit the
cache, an interrupted command loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msma.cli import main as msma_main

BAD_KINDS = ("zero_byte", "truncated", "not_an_image", "too_small", "no_face", "unsupported")


def make_folder(root: Path, n_good: int, n_bad_each: int = 1, seed: int = 0) -> dict[str, int]:
    """Astronaut variants (scale, shift, flip, grayscale, JPEG/PNG, nested folders) plus bad files.

    Returns:
        Expected counts: ``{"images": ..., "usable": ..., <skip reason>: ...}``.
    """
    import skimage.data

    photo = skimage.data.astronaut()
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        scale = rng.uniform(0.75, 1.15)
        img = Image.fromarray(photo).resize((round(512 * scale), round(512 * scale)), Image.Resampling.BICUBIC)
        dx, dy = (int(v) for v in rng.integers(0, 40, size=2))
        img = img.crop((dx, dy, img.width - int(rng.integers(0, 40)), img.height - int(rng.integers(0, 40))))
        if i % 3 == 1:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if i % 5 == 2:
            img = img.convert("L")
        folder = root / f"part{i % 4}"
        folder.mkdir(exist_ok=True)
        if i % 2:
            img.save(folder / f"good{i:03d}.jpg", quality=int(rng.integers(70, 96)))
        else:
            img.save(folder / f"good{i:03d}.png")
    jpeg = next(root.rglob("*.jpg")).read_bytes() if n_good > 1 else b""
    for k in range(n_bad_each):
        (root / f"empty{k}.jpg").write_bytes(b"")
        (root / f"truncated{k}.jpg").write_bytes(jpeg[: len(jpeg) // 3])
        (root / f"text{k}.png").write_text("definitely not a PNG")
        Image.fromarray(photo[:20, :25]).save(root / f"tiny{k}.png")
        Image.fromarray(np.full((96, 128, 3), 40 + 10 * k, np.uint8)).save(root / f"blank{k}.png")
        (root / f"IMG_{k:04d}.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))  # a phone's photo
    expected = {"images": n_good + len(BAD_KINDS) * n_bad_each, "usable": n_good}
    expected.update({reason: n_bad_each for reason in BAD_KINDS})
    return expected


def _prepare_command(photos: Path, cache: Path) -> list[str]:
    """``msma prepare`` of ``photos`` into ``cache`` as a separate process (the installed module's entry point)."""
    return [sys.executable, "-m", "msma.cli", "prepare", "--data", str(photos), "--cache", str(cache)]


def _check(summary: dict[str, object], expected: dict[str, int]) -> None:
    assert summary["images"] == expected["images"]
    assert summary["usable"] == expected["usable"]
    assert summary["skipped"] == {r: expected[r] for r in BAD_KINDS}


def test_prepare_counts_and_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = make_folder(tmp_path / "photos", n_good=8)
    cache = tmp_path / "cache"
    args = ["prepare", "--data", str(tmp_path / "photos"), "--landmarks", "dlib", "--cache", str(cache)]
    assert msma_main([*args, "--json", str(tmp_path / "s1.json"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    first = json.loads((tmp_path / "s1.json").read_text())
    _check(first, expected)
    assert first["computed"] == expected["images"] and first["cached"] == 0
    assert first["faces"] == expected["usable"]  # largest face per image
    assert f"images: {expected['images']}" in out and "skipped zero_byte: 1" in out and "skipped no_face: 1" in out
    assert "skipped unsupported: 1" in out  # a phone's HEIC photo is named, not passed over
    # the labelling pass is timed: the rate is the images over the seconds, and the summary prints both
    assert first["seconds"] > 0 and first["images_per_s"] == pytest.approx(expected["images"] / first["seconds"])
    assert f"labelling pass: {first['seconds']:.1f} s ({first['images_per_s']:.1f} images/s)" in out

    assert msma_main([*args, "--json", str(tmp_path / "s2.json"), "--all-faces"]) == 0
    second = json.loads((tmp_path / "s2.json").read_text())
    _check(second, expected)
    assert second["computed"] == 0 and second["cached"] == expected["images"]
    assert second["faces"] >= expected["usable"]


def test_prepare_with_workers(tmp_path: Path) -> None:
    """Two labelling processes: same counts and same labels as one; duplicated files labelled once."""
    from msma.data.prepare import prepare_folder

    expected = make_folder(tmp_path / "photos", n_good=4, n_bad_each=2, seed=3)
    par = prepare_folder(tmp_path / "photos", cache_dir=tmp_path / "c2", workers=2)
    seq = prepare_folder(tmp_path / "photos", cache_dir=tmp_path / "c1")
    _check(par.as_dict(), expected)
    assert par.as_dict()["skipped"] == seq.as_dict()["skipped"]
    assert par.seconds > 0 and seq.seconds > 0  # both paths time their labelling pass
    # Identical bad files (the two empty, truncated, text, tiny and HEIC files) share one entry each.
    assert par.computed == seq.computed == expected["images"] - 5 and par.cached == seq.cached == 5
    assert [lab.payload() if lab else None for _, lab in par.labels] == [
        lab.payload() if lab else None for _, lab in seq.labels
    ]
    again = prepare_folder(tmp_path / "photos", cache_dir=tmp_path / "c2", workers=2)
    assert again.computed == 0 and again.cached == expected["images"]


def test_prepare_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert msma_main(["prepare", "--data", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "p").mkdir()
    assert msma_main(["prepare", "--data", str(tmp_path / "p"), "--weights", str(tmp_path / "no.dat")]) == 2
    assert "no.dat" in capsys.readouterr().err
    (tmp_path / "p" / "notes.txt").write_text("no photos here")
    assert msma_main(["prepare", "--data", str(tmp_path / "p"), "--landmarks", "gt", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "images: 0" in captured.out and f"{tmp_path / 'p'}: no photos in this folder or below it" in captured.err


def test_prepare_interrupted_and_resumed(tmp_path: Path) -> None:
    """SIGKILL ``msma prepare`` mid-way, rerun: same counts as a clean run, every image labelled once."""
    expected = make_folder(tmp_path / "photos", n_good=6, seed=1)
    cache = tmp_path / "cache"
    cmd = _prepare_command(tmp_path / "photos", cache)
    proc = subprocess.Popen([*cmd, "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if len(list(cache.glob("*/*/*.json"))) >= 3 or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(list(cache.glob("*/*/*.json")))
    assert done >= 3
    result = subprocess.run([*cmd, "--json", str(tmp_path / "s.json"), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    _check(summary, expected)
    assert summary["cached"] >= done and summary["computed"] + summary["cached"] == expected["images"]
    entries = list(cache.glob("*/*/*.json"))
    assert len(entries) == expected["images"] == len({e.stem for e in entries})
    assert not list(cache.rglob(".tmp-*"))


@pytest.mark.slow
def test_prepare_100_images(tmp_path: Path) -> None:
    """The acceptance run: 100 files (88 photos, 12 bad), through the installed console entry point."""
    expected = make_folder(tmp_path / "photos", n_good=88, n_bad_each=2, seed=2)
    assert expected["images"] == 100
    t0 = time.perf_counter()
    cmd = _prepare_command(tmp_path / "photos", tmp_path / "c")
    result = subprocess.run([*cmd, "--json", str(tmp_path / "s.json")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    _check(summary, expected)
    print(f"msma prepare on 100 images: {time.perf_counter() - t0:.1f} s\n{result.stdout}")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_prepare_skips_a_named_pipe_and_a_device(tmp_path: Path) -> None:
    """A named pipe called ``.jpg`` in a folder hung ``msma prepare`` for ever (hashing opened it and waited for a
    writer); it and a link to ``/dev/zero`` are now skipped as unreadable and the run ends."""
    expected = make_folder(tmp_path / "photos", n_good=2, n_bad_each=0)
    os.mkfifo(tmp_path / "photos" / "pipe.jpg")
    (tmp_path / "photos" / "zeros.png").symlink_to("/dev/zero")
    cmd = _prepare_command(tmp_path / "photos", tmp_path / "c")
    result = subprocess.run(
        [*cmd, "--json", str(tmp_path / "s.json"), "--no-progress"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["images"] == expected["images"] + 2 and summary["usable"] == expected["usable"]
    assert summary["skipped"] == {"unreadable": 2}
