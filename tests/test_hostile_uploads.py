"""Uploads built to cost the server gigabytes or minutes, and films stored unusually: each is answered — a
result or one sentence — at a bounded cost, checked before the expensive step (the decoder, on real X-rays)."""

import tracemalloc

import numpy as np
import pytest
from hostile import (
    damaged_dicom,
    deflated_dicom,
    dicom_dataset,
    dicom_with_frame,
    exif_rotated_jpeg,
    hot_pixel_png,
    repeated_scan_jpeg,
    save_dicom,
    text_chunk_bomb_png,
)
from PIL import Image

from cxr.data.decode import MAX_INFLATED_BYTES, MAX_JPEG_SCANS, ImageInputError, read_radiograph


@pytest.fixture
def grey(sample_dir):
    return Image.open(sorted((sample_dir / "Normal").glob("*.png"))[3]).convert("L")


def _decoded(path) -> np.ndarray:
    image, warnings = read_radiograph(path)
    assert warnings == []
    return np.asarray(image, dtype=np.float64)


def test_a_valid_deflated_dicom_decodes_as_the_same_film_uncompressed(grey, tmp_path):
    pixels = np.asarray(grey, dtype=np.uint16) * 16
    plain = save_dicom(dicom_dataset(pixels), tmp_path / "plain.dcm")
    deflated = deflated_dicom(tmp_path / "deflated.dcm", pixels)
    assert deflated.stat().st_size < plain.stat().st_size
    assert np.array_equal(_decoded(deflated), _decoded(plain))


def test_a_deflate_bomb_is_refused_while_inflating_without_holding_it(grey, tmp_path):
    pixels = np.asarray(grey, dtype=np.uint16) * 16
    bomb = deflated_dicom(tmp_path / "bomb.dcm", pixels, padding_bytes=MAX_INFLATED_BYTES + (64 << 20))
    assert bomb.stat().st_size < 1 << 20  # well under a megabyte
    tracemalloc.start()
    try:
        with pytest.raises(ImageInputError, match="inflates to more than") as refused:
            read_radiograph(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MB held while inflating"  # pydicom alone would hold ~200 MB
    assert "Export it as PNG" in str(refused.value)


def test_a_progressive_jpeg_whose_scans_repeat_is_refused_before_decoding(grey, tmp_path):
    bomb = tmp_path / "scans.jpg"
    bomb.write_bytes(repeated_scan_jpeg(grey, MAX_JPEG_SCANS * 3))
    with pytest.raises(ImageInputError, match=r"holds \d+ scans.*baseline JPEG or PNG"):
        read_radiograph(bomb)
    ordinary = tmp_path / "progressive.jpg"
    grey.save(ordinary, progressive=True, quality=95)
    assert np.abs(_decoded(ordinary) - np.asarray(grey)).mean() < 2


@pytest.mark.parametrize("fmt", ["JPEG", "JPEG2000"])
def test_a_dicom_frame_larger_than_its_header_is_refused_before_decoding(fmt, grey, tmp_path):
    crafted = dicom_with_frame(tmp_path / "crafted.dcm", grey.resize((1024, 1024)), fmt, header_size=(64, 64))
    with pytest.raises(ImageInputError, match="image data is 1024×1024 pixels, but its header says 64×64"):
        read_radiograph(crafted)
    honest = dicom_with_frame(tmp_path / "honest.dcm", grey, fmt)
    plain = save_dicom(dicom_dataset(np.asarray(grey), bits=8), tmp_path / "plain.dcm")
    error = np.abs(_decoded(honest) - _decoded(plain)).mean()
    assert error < (2 if fmt == "JPEG" else 1e-9), error  # lossless JPEG 2000: the same film exactly


def test_a_large_jpeg_2000_frame_is_decoded_reduced(grey, tmp_path):
    big = grey.resize((4096, 4096), Image.Resampling.BICUBIC)
    image, _ = read_radiograph(dicom_with_frame(tmp_path / "big.dcm", big, "JPEG2000"))
    assert image.size == (2048, 2048)
    small = np.asarray(big.resize((2048, 2048), Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(np.asarray(image, dtype=np.float64) - small).mean() < 3


@pytest.mark.parametrize("field", ["NumberOfFrames", "Rows"])
def test_a_damaged_dicom_header_is_one_sentence(field, grey, tmp_path):
    damaged_dicom(tmp_path / "x.dcm", np.asarray(grey, dtype=np.uint16) * 16, field)
    with pytest.raises(ImageInputError) as refused:
        read_radiograph(tmp_path / "x.dcm")
    message = str(refused.value)
    assert "damaged" in message and "Export it as PNG" in message
    assert "invalid literal" not in message and "Traceback" not in message and "\n" not in message


def test_a_phone_jpeg_is_turned_upright_by_its_exif_orientation(grey, tmp_path):
    decoded = _decoded(exif_rotated_jpeg(grey, tmp_path / "phone.jpg"))
    assert decoded.shape == np.asarray(grey).shape
    assert np.abs(decoded - np.asarray(grey)).mean() < 2  # upright; stored sideways it differs by far more


def test_one_hot_pixel_does_not_set_a_16_bit_films_contrast(grey, tmp_path):
    decoded = _decoded(hot_pixel_png(grey, tmp_path / "hot.png"))
    film = np.asarray(grey, dtype=np.float64)
    # the 12-bit film stretched from its own darkest to brightest pixel, the hot one clipped
    expected = (film - film.min()) / (film.max() - film.min()) * 255
    assert np.abs(decoded - expected).mean() < 2
    assert (decoded < 8).mean() < (film < 8).mean() + 0.01  # not blacked out


def test_a_text_chunk_bomb_gets_a_sentence_without_pillow_internals(grey, tmp_path):
    with pytest.raises(ImageInputError) as refused:
        read_radiograph(text_chunk_bomb_png(grey, tmp_path / "text.png"))
    message = str(refused.value)
    assert "damaged" in message and "PngImagePlugin" not in message and "MAX_TEXT_CHUNK" not in message
