"""Every hostile or unusual upload ``tests/hostile.py`` builds, one by one, on the launched app: each is answered —
a result or one sentence — within 15 s, with the server's peak memory at most 300 MB above what it held before, and the
server answers an ordinary film after each. The bombs are full size where building them is quick (the
progressive JPEG, the frames inside DICOM), smaller where the real one would be slow to build (the deflate bomb
inflates to 200 MB, past the cap, not to a gigabyte).

Rows tested elsewhere on a launched app (tests/test_app.py): one server-wide limit
(``test_one_concurrency_limit_bounds_every_endpoint_together``, which also shows /monitoring is not served),
kept images (``test_the_images_pages_keep_share_one_memory_budget``), the upload route's cap
(``test_the_upload_route_keeps_only_films_within_its_space``), uploads never analysed
(``test_an_upload_never_analysed_is_removed_after_the_upload_wait``), no 0-byte files
(``test_examples_answer_after_the_cache_sweep_which_still_clears_uploads_and_heat_maps``) and SIGTERM
(``test_sigterm_stops_the_app_and_removes_everything_it_stored``).
"""

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import call, launch_app, rss_kib, stop, upload_file
from hostile import (
    damaged_dicom,
    deflated_dicom,
    dicom_with_frame,
    exif_rotated_jpeg,
    hot_pixel_png,
    repeated_scan_jpeg,
    text_chunk_bomb_png,
)
from PIL import Image

from cxr.data.decode import MAX_INFLATED_BYTES

pytestmark = pytest.mark.slow

ANSWER_SECONDS, PEAK_GROWTH_MB = 15, 300


@pytest.fixture(scope="module")
def hostile_app(app_models, sample_dir, tmp_path_factory):
    """The app with both test models and the sample's examples, one request at a time, in a cache of its own."""
    log = tmp_path_factory.mktemp("hostile-app-log") / "app.log"
    cache = tmp_path_factory.mktemp("hostile-app-gradio-cache")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(cache)}
    args = ["--models", ",".join(app_models), "--examples", str(sample_dir), "--concurrency", "1"]
    url, proc = launch_app(args, log, env=env)
    yield url, proc, cache
    stop(proc)


@pytest.fixture(scope="module")
def grey(sample_dir) -> Image.Image:
    return Image.open(sorted((sample_dir / "Normal").glob("*.png"))[3]).convert("L")


def _classify(app, path: Path) -> tuple:
    """``/classify`` of ``path`` as a program sends it; returns the answer, its seconds and the server's peak
    resident memory growth in MB during it."""
    url, proc, _ = app
    before = rss_kib(proc.pid)
    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # the peak (VmHWM) back to the current size
    start = time.monotonic()
    answer = call(url, "classify", [upload_file(url, path)], uuid.uuid4().hex)[0]
    seconds = time.monotonic() - start
    return answer, seconds, (rss_kib(proc.pid, "VmHWM") - before) / 1024


def _probabilities(answer: dict) -> np.ndarray:
    assert answer["error"] is None, answer
    return np.array([list(m["probabilities"].values()) for m in answer["models"].values()])


def _build(row: str, grey: Image.Image, tmp: Path) -> Path:
    pixels16 = np.asarray(grey, dtype=np.uint16) * 16
    if row == "deflate bomb":
        return deflated_dicom(tmp / "bomb.dcm", pixels16, padding_bytes=MAX_INFLATED_BYTES + (64 << 20))
    if row == "valid deflated DICOM":
        return deflated_dicom(tmp / "deflated.dcm", pixels16)
    if row == "progressive JPEG, last scan repeated 2000 times":
        (tmp / "scans.jpg").write_bytes(repeated_scan_jpeg(Image.new("L", (8000, 8000), 128), 2000))
        return tmp / "scans.jpg"
    if row == "JPEG 2000 frame of 10000² in a DICOM saying 64²":
        return dicom_with_frame(tmp / "j2k.dcm", Image.new("L", (10000, 10000), 128), "JPEG2000", (64, 64))
    if row == "JPEG frame of 12000² in a DICOM saying 64²":
        return dicom_with_frame(tmp / "jpeg.dcm", Image.new("L", (12000, 12000), 128), "JPEG", (64, 64))
    if row.startswith("DICOM header: "):
        return damaged_dicom(tmp / "damaged.dcm", pixels16, row.split(": ")[1].split()[0])
    if row == "PNG text-chunk bomb":
        return text_chunk_bomb_png(grey, tmp / "text.png")
    raise AssertionError(row)


#: Each refused row and what its one sentence says (and the words it must not show).
REFUSED = {
    "deflate bomb": "inflates to more than",
    "progressive JPEG, last scan repeated 2000 times": "scans",
    "JPEG 2000 frame of 10000² in a DICOM saying 64²": "image data is 10000×10000 pixels, but its header says 64×64",
    "JPEG frame of 12000² in a DICOM saying 64²": "image data is 12000×12000 pixels, but its header says 64×64",
    'DICOM header: NumberOfFrames "ab"': "damaged",
    "DICOM header: Rows given twice": "damaged",
    "PNG text-chunk bomb": "damaged",
}
INTERNALS = ("Traceback", "invalid literal", "PngImagePlugin", "MAX_TEXT_CHUNK", "pydicom", "/tmp/", "Error(")


@pytest.mark.parametrize("row", list(REFUSED))
def test_each_hostile_upload_is_one_sentence_fast_and_within_memory(row, hostile_app, grey, tmp_path, sample_dir):
    path = _build(row, grey, tmp_path)
    assert path.stat().st_size < 2 << 20  # each is a small file
    answer, seconds, growth = _classify(hostile_app, path)
    message = answer["error"] or ""
    assert REFUSED[row] in message and "\n" not in message, answer
    assert not any(word in message for word in INTERNALS), message
    assert seconds < ANSWER_SECONDS and growth < PEAK_GROWTH_MB, (seconds, growth)
    film = next((sample_dir / "Normal").glob("*.png"))
    assert _classify(hostile_app, film)[0]["error"] is None  # and the server still answers a film


def test_films_stored_unusually_are_answered_as_the_film_they_show(hostile_app, grey, tmp_path):
    """A valid deflated DICOM, a phone JPEG stored sideways (EXIF Orientation 8) and a 12-bit film with one hot
    pixel get the probabilities of the same film stored plainly."""
    plain = tmp_path / "plain.png"
    Image.fromarray(np.asarray(grey, dtype=np.uint16) * 16).save(plain)  # the 12-bit film, no hot pixel
    reference = _probabilities(_classify(hostile_app, plain)[0])
    upright = tmp_path / "upright.jpg"
    grey.save(upright, quality=95)
    cases = {
        "valid deflated DICOM": (_build("valid deflated DICOM", grey, tmp_path), reference),
        "hot pixel": (hot_pixel_png(grey, tmp_path / "hot.png"), reference),
        "EXIF orientation": (
            exif_rotated_jpeg(grey, tmp_path / "phone.jpg"),
            _probabilities(_classify(hostile_app, upright)[0]),
        ),
    }
    for name, (path, expected) in cases.items():
        answer, seconds, growth = _classify(hostile_app, path)
        assert np.abs(_probabilities(answer) - expected).max() < 0.05, (name, answer)
        assert seconds < ANSWER_SECONDS and growth < PEAK_GROWTH_MB, (name, seconds, growth)


@pytest.mark.parametrize("name", ["page.html", "drawing.svg", "no-extension"])
def test_files_of_types_the_app_does_not_analyse_are_not_kept(name, hostile_app, tmp_path):
    import httpx

    url, _, cache = hostile_app
    body = b"<svg xmlns='http://www.w3.org/2000/svg'/>" if name.endswith("svg") else b"<html><script></script>"
    r = httpx.post(url + "gradio_api/upload", files=[("files", (name, body, "application/octet-stream"))])
    assert r.status_code == 415 and "nothing was kept" in r.json()["detail"], r.text
    assert not [p for p in cache.rglob(name) if p.is_file()]


def test_another_image_named_and_sized_as_an_example_is_deleted_once_analysed(hostile_app, sample_dir, tmp_path):
    """The app keeps an example's copy for the next visitor; a different film given an example's name and padded
    to its size is not one (the app compares contents) and is deleted once analysed like any upload."""
    url = hostile_app[0]
    example = next(c for c in call(url, "load_example", [0], uuid.uuid4().hex))
    name, size = example["orig_name"] or Path(example["path"]).name, Path(example["path"]).stat().st_size
    other = next(p for p in sorted((sample_dir / "COVID").glob("*.png")) if p.name != name)
    fake = tmp_path / name
    data = other.read_bytes()
    fake.write_bytes(data + b"\0" * max(0, size - len(data)))
    stored = upload_file(url, fake)
    answer = call(url, "classify", [stored], uuid.uuid4().hex)[0]
    assert answer["error"] is None and answer["example"] is None, answer
    assert not Path(stored["path"]).exists()
