"""Safe image loading: every bad-input case and every conversion."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msma.data import io as dio
from msma.data.io import BadImageError, image_to_tensor, list_images, load_image


def _rgb(h: int = 40, w: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _reason(path: Path) -> str:
    with pytest.raises(BadImageError) as info:
        load_image(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    return info.value.reason


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.image.dtype == np.float32 and loaded.image.shape == (40, 50, 3)
    np.testing.assert_allclose(loaded.image, arr / 255.0, atol=1e-6)
    assert loaded.scale == 1.0 and loaded.notes == () and loaded.original_size == (40, 50)
    np.testing.assert_array_equal(loaded.as_uint8(), arr)
    t = image_to_tensor(loaded.image)
    assert t.shape == (3, 40, 50) and float(t.max()) <= 1.0


def test_zero_byte(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _reason(tmp_path / "empty.jpg") == "zero_byte"


def test_missing_file(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nope.jpg") == "missing"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    assert _reason(tmp_path / "dir.jpg") == "unreadable"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_and_device_are_unreadable_without_blocking(tmp_path: Path) -> None:
    """A named pipe called ``.jpg`` (opening it blocks until something writes) and a link to ``/dev/zero`` (reading
    it never ends) are skipped at once as unreadable, never opened."""
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zeros.png").symlink_to("/dev/zero")
    outcome: dict[str, object] = {}

    def load_both() -> None:
        outcome["pipe"] = _reason_and_detail(tmp_path / "pipe.jpg")
        outcome["zeros"] = _reason_and_detail(tmp_path / "zeros.png")

    worker = threading.Thread(target=load_both, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "load_image blocked on a named pipe or device"
    assert outcome["pipe"] == ("unreadable", "a named pipe (FIFO), not a regular file")
    assert outcome["zeros"] == ("unreadable", "a character device, not a regular file")


def _reason_and_detail(path: Path) -> tuple[str, str]:
    with pytest.raises(BadImageError) as info:
        load_image(path)
    return info.value.reason, info.value.detail


def test_permission_error_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(_rgb()).save(tmp_path / "a.png")

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError("permission denied")

    monkeypatch.setattr(dio.Image, "open", deny)
    assert _reason(tmp_path / "a.png") == "unreadable"


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("hello, this is not a JPEG\n" * 20)
    assert _reason(tmp_path / "text.jpg") == "not_an_image"


def test_a_phone_heic_photo_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    with pytest.raises(dio.BadImageError) as info:
        dio.load_image(path)
    assert info.value.reason == "unsupported"
    assert "cannot read .HEIC photos; convert to JPEG or PNG" in info.value.detail


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"t.{fmt.lower()}"
    Image.fromarray(_rgb(200, 200)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path) == "truncated"


def test_grayscale(tmp_path: Path) -> None:
    gray = _rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.image.shape == (40, 50, 3) and "grayscale" in loaded.notes
    for c in range(3):
        np.testing.assert_allclose(loaded.image[..., c], gray / 255.0, atol=1e-6)


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((40, 50, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:, :25, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert "alpha" in loaded.notes
    np.testing.assert_allclose(loaded.image[0, 0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(loaded.image[0, 40], [1.0, 1.0, 1.0], atol=1e-6)


def test_16bit_grayscale(tmp_path: Path) -> None:
    arr = np.linspace(0, 65535, 40 * 50).reshape(40, 50).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    loaded = load_image(tmp_path / "d.png")
    assert "16bit" in loaded.notes
    np.testing.assert_allclose(loaded.image[..., 1], arr / 65535.0, atol=1e-5)
    assert loaded.image.max() <= 1.0 and loaded.image[-1, -1, 0] == pytest.approx(1.0)


def test_float_tiff_with_nonfinite_pixels(tmp_path: Path) -> None:
    """A float TIFF: NaN / inf pixels become 0 and are noted; one with no finite pixel is refused with its reason."""
    arr = np.linspace(0, 200, 40 * 50).reshape(40, 50).astype(np.float32)
    arr[0, :5] = np.nan
    arr[1, :5] = np.inf
    Image.fromarray(arr).save(tmp_path / "f.tif")
    loaded = load_image(tmp_path / "f.tif")
    assert "nonfinite_zeroed" in loaded.notes and np.isfinite(loaded.image).all()
    assert np.all(loaded.image[:2, :5] == 0.0)
    np.testing.assert_allclose(loaded.image[-1, -1], [200 / 255.0] * 3, atol=1e-6)  # peak > 1: a 0-255 scale
    Image.fromarray(np.full((40, 50), np.nan, np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(BadImageError, match="no_pixel_values") as err:
        load_image(tmp_path / "nan.tif")
    assert err.value.reason == "no_pixel_values" and err.value.path == tmp_path / "nan.tif"


def test_16bit_rgb_png(tmp_path: Path) -> None:
    import cv2

    arr = (np.linspace(0, 1, 40 * 50 * 3).reshape(40, 50, 3) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c.png"), arr[..., ::-1])  # OpenCV writes 48-bit BGR PNGs
    loaded = load_image(tmp_path / "c.png")
    assert loaded.image.shape == (40, 50, 3)
    np.testing.assert_allclose(loaded.image, arr / 65535.0, atol=1.0 / 255 + 1e-6)


def test_palette(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    assert loaded.image.shape == (40, 50, 3) and "palette" in loaded.notes


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[:5, :5] = 255  # white top-left corner in the stored pixels
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "e.jpg", exif=exif.tobytes(), quality=100)
    loaded = load_image(tmp_path / "e.jpg")
    assert "exif_rotated" in loaded.notes
    assert loaded.image.shape == (60, 40, 3)  # width and height swapped
    assert loaded.original_size == (60, 40)
    # After a clockwise rotation the stored top-left corner is at the top-right.
    assert loaded.image[:5, -5:].mean() > 0.9 and loaded.image[:5, :5].mean() < 0.1


@pytest.mark.parametrize("size", [(31, 100), (100, 20), (8, 8)])
def test_tiny_rejected(tmp_path: Path, size: tuple[int, int]) -> None:
    Image.fromarray(_rgb(*size)).save(tmp_path / "s.png")
    assert _reason(tmp_path / "s.png") == "too_small"


def test_min_side_32_accepted(tmp_path: Path) -> None:
    Image.fromarray(_rgb(32, 32)).save(tmp_path / "s.png")
    assert load_image(tmp_path / "s.png").image.shape == (32, 32, 3)


def test_huge_downscaled_with_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arr = np.zeros((40, 8200, 3), dtype=np.uint8)
    arr[:, 4100:] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    with caplog.at_level(logging.INFO, logger="msma.data.io"):
        loaded = load_image(tmp_path / "wide.png")
    assert "downscaled" in loaded.notes and "larger than 8192" in caplog.text
    assert loaded.width == 8192 and loaded.original_size == (40, 8200)
    assert loaded.scale == pytest.approx(8192 / 8200)
    # loaded -> original mapping: the right edge maps back to the right edge.
    m = loaded.loaded_to_original()
    right = m @ np.array([8192 - 0.5, 0.0, 1.0])
    assert right[0] == pytest.approx(8200 - 0.5)


def test_max_side_parameter(tmp_path: Path) -> None:
    Image.fromarray(_rgb(100, 300)).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png", max_side=150)
    assert loaded.image.shape == (50, 150, 3)


def test_decompression_bomb_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(_rgb(100, 100)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert _reason(tmp_path / "a.png") == "too_large"


def test_bad_image_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(BadImageError("/x/y.jpg", "truncated", "half")))
    assert err.reason == "truncated" and err.path == Path("/x/y.jpg") and err.detail == "half"


def test_list_images(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ["b.JPG", "a.png", "sub/c.jpeg", ".hidden/d.jpg", "notes.txt", ".e.jpg", "f.gif"]:
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.png", "b.JPG", "f.gif", "sub/c.jpeg"]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_images(tmp_path / "missing")


def test_animated_gif_and_multipage_tiff_give_their_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((40, 50, 3), v, np.uint8)) for v in (200, 30, 90)]
    for name in ("a.gif", "a.tif"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
        loaded = load_image(tmp_path / name)
        assert "first_frame" in loaded.notes and loaded.image.shape == (40, 50, 3)
        np.testing.assert_allclose(loaded.image, 200 / 255.0, atol=1e-6)
    frames[1].save(tmp_path / "still.gif")
    assert "first_frame" not in load_image(tmp_path / "still.gif").notes


def test_big_but_not_a_bomb_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between Pillow's warning and error thresholds: loaded (and downscaled if needed), not rejected."""
    Image.fromarray(_rgb(100, 100)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    assert load_image(tmp_path / "a.png").image.shape == (100, 100, 3)


def test_huge_jpeg_draft_decoding(tmp_path: Path) -> None:
    """A 9000 px wide JPEG: decoded at reduced scale, exactly max_side wide, content where it belongs."""
    arr = np.zeros((400, 9000, 3), dtype=np.uint8)
    arr[:, 4500:] = 255
    Image.fromarray(arr).save(tmp_path / "wide.jpg", quality=90)
    loaded = load_image(tmp_path / "wide.jpg")
    assert loaded.width == 8192 and loaded.height == round(400 * 8192 / 9000)
    assert "downscaled" in loaded.notes and loaded.scale == pytest.approx(8192 / 9000)
    edge = int(4500 * loaded.scale)
    assert loaded.image[:, edge - 20 : edge - 5].mean() < 0.05 and loaded.image[:, edge + 5 : edge + 20].mean() > 0.95


def test_exif_rotated_tiny_rejected_before_decoding(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb(20, 60))
    exif = img.getexif()
    exif[0x0112] = 8
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert _reason(tmp_path / "r.jpg") == "too_small"


def test_array_to_float_rgb_dtypes_shapes_and_errors() -> None:
    from msma.data.io import array_to_float_rgb

    u8 = np.array([[[0, 128, 255]]], np.uint8)
    np.testing.assert_allclose(array_to_float_rgb(u8, "a"), [[[0.0, 128 / 255, 1.0]]], atol=1e-7)
    u16 = np.array([[65535, 0]], np.uint16)  # grey -> RGB
    out = array_to_float_rgb(u16, "a")
    assert out.shape == (1, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0], [1.0, 0.0])
    rgba = np.full((2, 2, 4), 0.25, np.float32)  # 0.25 over white at alpha 0.25: 0.25 * 0.25 + 0.75
    np.testing.assert_allclose(array_to_float_rgb(rgba, "a"), np.full((2, 2, 3), 0.8125), atol=1e-7)
    pil = Image.fromarray(np.full((3, 4), 51, np.uint8), mode="L")
    np.testing.assert_allclose(array_to_float_rgb(pil, "a"), np.full((3, 4, 3), 0.2), atol=1e-6)
    with pytest.raises(ValueError, match="shot.png: float images must lie in"):
        array_to_float_rgb(np.full((2, 2, 3), 2.0), "shot.png")
    with pytest.raises(ValueError, match="shot.png: expected an"):
        array_to_float_rgb(np.zeros((2, 2, 2), np.uint8), "shot.png")
    with pytest.raises(ValueError, match="shot.png: the image holds NaN or infinite"):
        array_to_float_rgb(np.full((2, 2, 3), np.nan, np.float32), "shot.png")
    with pytest.raises(ValueError, match="frame 3: a floating-point image whose every pixel is NaN"):
        array_to_float_rgb(Image.fromarray(np.full((3, 4), np.nan, np.float32)), "frame 3")


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "P", "LA"])
def test_array_to_float_rgb_of_a_pil_image_equals_loading_it_from_a_file(tmp_path: Path, mode: str) -> None:
    """Oracle: the same picture saved as PNG and read by load_image (16-bit grey scaled by 65535, not clipped at
    255; transparency over white; palette expanded)."""
    from msma.data.io import array_to_float_rgb

    g = np.random.default_rng(5)
    if mode == "I;16":
        pil = Image.fromarray(g.integers(0, 65536, (40, 48), dtype=np.uint16))
    elif mode == "RGBA":
        pil = Image.fromarray(g.integers(0, 256, (40, 48, 4), dtype=np.uint8), mode="RGBA")
    elif mode == "P":
        pil = Image.fromarray(g.integers(0, 256, (40, 48, 3), dtype=np.uint8)).convert("P")
    else:
        pil = Image.fromarray(g.integers(0, 256, (40, 48, 2), dtype=np.uint8), mode="LA")
    path = tmp_path / f"img-{mode.replace(';', '')}.png"
    pil.save(path)
    want = load_image(path).image
    got = array_to_float_rgb(pil, "<pil>")
    assert got.shape == (40, 48, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6)
    if mode in ("RGBA",):  # the array route composites the same way
        np.testing.assert_allclose(array_to_float_rgb(np.asarray(pil), "<array>"), want, atol=2e-6)
