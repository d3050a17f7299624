"""Image loading (bit depths, EXIF orientation, transparency, the pixel limit) and whole-folder writes."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pigeon_bench import fileio
from pigeon_bench.errors import UserError


def gray(path: Path) -> np.ndarray:
    """The first channel of a loaded image (all three are equal for a grey picture)."""
    im = fileio.load_rgb(path)
    assert im.mode == "RGB"
    return np.asarray(im)[..., 0]


def test_16_bit_images_scale_from_their_full_range(tmp_path):
    dark = np.full((4, 4), 200, dtype=np.uint16)  # every value <= 255: a very dark 16-bit picture
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert Image.open(tmp_path / "dark.png").mode == "I;16"
    assert (gray(tmp_path / "dark.png") == 1).all()  # 200 / 65535 * 255, not full brightness
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 17 * 257)  # 8-bit values 0..255, times 257
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    np.testing.assert_array_equal(gray(tmp_path / "ramp.png"), ramp // 257)
    # 16-bit PGM opens as 32-bit mode I: the same 16-bit range.
    (tmp_path / "dark.pgm").write_bytes(b"P5\n4 4\n65535\n" + dark.astype(">u2").tobytes())
    assert Image.open(tmp_path / "dark.pgm").mode == "I"
    assert (gray(tmp_path / "dark.pgm") == 1).all()


def test_32_bit_integer_and_float_modes():
    wide = Image.fromarray(np.array([[-5, 0, 2**30, 2**31 - 1]], dtype=np.int32))
    assert wide.mode == "I"
    # Beyond 16 bits: from 0..2**31-1, negatives black.
    assert np.asarray(fileio.to_rgb(wide))[0, :, 0].tolist() == [0, 0, 128, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert floats.mode == "F"
    assert np.asarray(fileio.to_rgb(floats))[0, :, 0].tolist() == [0, 128, 255, 0]
    with pytest.raises(UserError, match=r"float image holds values 0\.\.200, outside 0\.\.1"):
        fileio.to_rgb(Image.fromarray(np.array([[0.0, 200.0]], dtype=np.float32)))


def test_float_tiff_outside_0_1_is_one_line_naming_the_file(tmp_path):
    Image.fromarray(np.full((2, 2), 180.0, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UserError, match=r"f\.tif: a float image holds values 180\.\.180"):
        fileio.load_rgb(tmp_path / "f.tif")


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (32, 16), (255, 0, 0))
    stored.paste((0, 0, 255), (16, 0, 32, 16))  # left half red, right half blue, as the camera stored it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    upright = fileio.load_rgb(tmp_path / "photo.jpg")
    assert upright.size == (16, 32)
    top, bottom = upright.getpixel((8, 4)), upright.getpixel((8, 28))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the left (red) half is now on top


def test_transparency_is_composited_over_white(tmp_path):
    im = Image.new("L", (2, 1), 0)
    im.putpixel((1, 0), 90)
    im.save(tmp_path / "trns.png", transparency=0)  # a tRNS chunk: black is transparent
    assert gray(tmp_path / "trns.png").tolist() == [[255, 90]]
    premultiplied = Image.new("LA", (1, 1), (0, 0)).convert("La")
    assert fileio.to_rgb(premultiplied).getpixel((0, 0)) == (255, 255, 255)
    frames = [Image.new("RGB", (4, 4), c) for c in ((10, 200, 10), (200, 10, 10))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    r, g, _ = fileio.load_rgb(tmp_path / "anim.gif").getpixel((0, 0))
    assert g > 150 > r  # the first frame


def big_png(path: Path, side: int) -> Path:
    """A real side x side 1-bit PNG, all black: a few KB on disk for 400 million pixels at 20000."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def test_decompression_bomb_is_one_line_with_size_limit_and_remedy(tmp_path, monkeypatch):
    monkeypatch.delenv(fileio.MAX_PIXELS_ENV, raising=False)
    path = big_png(tmp_path / "huge.png", 20000)
    assert path.stat().st_size < 100_000
    with pytest.raises(UserError) as info:
        fileio.load_rgb(path)
    message = str(info.value)
    assert "\n" not in message and "huge.png" in message
    assert "400,000,000 pixels" in message and "limit of 178,956,970 pixels" in message
    assert "set PIGEON_BENCH_MAX_IMAGE_PIXELS to 200000000 or more" in message


def test_the_pixel_limit_comes_from_the_environment(tmp_path, monkeypatch):
    Image.new("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "small.png")  # 25 pixels
    monkeypatch.setenv(fileio.MAX_PIXELS_ENV, "12")
    with pytest.raises(UserError, match="25 pixels is above the limit of 24 pixels"):
        fileio.load_rgb(tmp_path / "small.png")
    monkeypatch.setenv(fileio.MAX_PIXELS_ENV, "13")
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow warns between the limit and twice it
        assert fileio.load_rgb(tmp_path / "small.png").getpixel((0, 0)) == (1, 2, 3)
    for bad in ("many", "0", "-3"):
        monkeypatch.setenv(fileio.MAX_PIXELS_ENV, bad)
        with pytest.raises(UserError, match="PIGEON_BENCH_MAX_IMAGE_PIXELS must be a whole number"):
            fileio.load_rgb(tmp_path / "small.png")
    monkeypatch.delenv(fileio.MAX_PIXELS_ENV)
    assert fileio.max_image_pixels() == 89_478_485  # Pillow's own default


def test_atomic_dir_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    full = r"cannot write the folder .*/d: No space left on device; nothing was changed"
    with pytest.raises(UserError, match=full), fileio.whole_dir(dest, "the folder") as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and (dest / "old.txt").read_text() == "old"


def test_atomic_dir_follows_a_symlink_and_takes_dot(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "old.txt").write_text("old")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    with fileio.atomic_dir(tmp_path / "link") as tmp:
        (tmp / "new.txt").write_text("new")
    assert (tmp_path / "link").is_symlink() and [p.name for p in (tmp_path / "link").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    monkeypatch.chdir(tmp_path / "real")
    with fileio.atomic_dir(".") as tmp:
        (tmp / "dot.txt").write_text("dot")
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["dot.txt"]
