"""Upload decoding: every bad input gets a message for the page; DICOM is windowed and inverted right."""

import numpy as np
import pytest
from hostile import write_dicom
from PIL import Image

from cxr.data.decode import ImageInputError, chest_xray_warnings, read_dicom, read_radiograph


def _save(tmp_path, name, image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def test_real_png_reads_without_warnings(sample_dir):
    image, warnings = read_radiograph(next((sample_dir / "COVID").glob("*.png")))
    assert image.size == (256, 256) and warnings == []


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "I;16"])
def test_other_png_modes_are_accepted(tmp_path, sample_dir, mode):
    grey = Image.open(next((sample_dir / "Normal").glob("*.png"))).convert("L")
    img = (
        Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257, mode="I;16") if mode == "I;16" else grey.convert(mode)
    )
    image, warnings = read_radiograph(_save(tmp_path, "x.png", img))
    assert image.size == (256, 256) and warnings == []


def test_cmyk_jpeg_is_accepted(tmp_path, sample_dir):
    grey = Image.open(next((sample_dir / "Normal").glob("*.png"))).convert("L")
    image, _ = read_radiograph(_save(tmp_path, "x.jpg", grey.convert("RGB").convert("CMYK"), quality=95))
    assert image.mode == "L"  # the grey working image
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(grey, dtype=int)).mean() < 3


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty-submit", "Upload a chest X-ray first"),
        ("non-image", "not an image we can read"),
        ("truncated", "truncated, damaged or not standard"),
        ("tiny", "too small"),
        ("bomb", "refused before decoding"),
        ("zero-bytes", "empty"),
        ("dicom-no-pixels", "no pixel data"),
    ],
)
def test_bad_uploads_are_refused_with_a_message(tmp_path, sample_dir, case, message):
    real = next((sample_dir / "COVID").glob("*.png")).read_bytes()
    if case == "empty-submit":
        path = None
    elif case == "non-image":
        path = tmp_path / "notes.png"
        path.write_text("these are not pixels")
    elif case == "truncated":
        path = tmp_path / "cut.png"
        path.write_bytes(real[: len(real) // 2])
    elif case == "tiny":
        path = _save(tmp_path, "one.png", Image.new("L", (1, 1)))
    elif case == "bomb":
        # a 20000 x 20000 PNG whose header is read, never its pixels (the file itself is small)
        path = _save(tmp_path, "bomb.png", Image.new("1", (20000, 20000)), optimize=True)
    elif case == "zero-bytes":
        path = tmp_path / "zero.png"
        path.write_bytes(b"")
    else:
        path = write_dicom(tmp_path / "empty.dcm", np.zeros((64, 64)), with_pixels=False)
    with pytest.raises(ImageInputError, match=message):
        read_radiograph(path)


def test_bomb_is_refused_without_allocating_it(tmp_path, monkeypatch):
    path = _save(tmp_path, "bomb.png", Image.new("1", (20000, 20000)), optimize=True)
    loads = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.size) or real_load(self))
    with pytest.raises(ImageInputError):
        read_radiograph(path)
    assert (20000, 20000) not in loads


def test_colour_photo_gets_a_visible_warning():
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("flower.jpg"))
    assert any("colour photograph" in w for w in chest_xray_warnings(photo))


def test_dicom_monochrome1_is_inverted_and_windowed(tmp_path):
    ramp = np.tile(np.linspace(0, 4000, 64), (64, 1))
    mono2 = np.asarray(read_dicom(write_dicom(tmp_path / "m2.dcm", ramp)))
    mono1 = np.asarray(read_dicom(write_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1")))
    assert mono2[0, 0] == 0 and mono2[0, -1] == 255  # 16-bit stretched to 8 bit
    assert np.array_equal(mono1, 255 - mono2)
    windowed = np.asarray(read_dicom(write_dicom(tmp_path / "w.dcm", ramp, window=(1000, 500))))
    # values below 750 are black, above 1250 white: most of the ramp saturates
    assert (windowed == 0).mean() > 0.15 and (windowed == 255).mean() > 0.6
    image, warnings = read_radiograph(tmp_path / "w.dcm")
    assert image.mode == "L" and warnings == []


def test_dicom_rescale_slope_is_applied(tmp_path):
    ramp = np.tile(np.linspace(0, 1000, 64), (64, 1))
    plain = np.asarray(read_dicom(write_dicom(tmp_path / "a.dcm", ramp)))
    rescaled = np.asarray(read_dicom(write_dicom(tmp_path / "b.dcm", ramp, rescale=(2.0, -1024), window=(0, 800))))
    assert not np.array_equal(plain, rescaled)


def _dicom_of(tmp_path, png, name="x.dcm"):
    """A real X-ray as a 16-bit DICOM whose pixels are the PNG's times 16 (same picture after stretching)."""
    grey = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    return write_dicom(tmp_path / name, grey * 16)


def test_one_decoder_serves_classifier_training_data_and_app_alike(tmp_path, sample_dir):
    """A DICOM reaches CXRClassifier, the cached training pixels and the app through the same decoder."""
    import timm
    import torch

    from cxr.data.data_source import load_radiographs
    from cxr.data.pixel_cache import cache_pixels
    from cxr.data.preprocessing import PreprocessConfig, load_grayscale
    from cxr.models.classifier import CXRClassifier

    png = sorted((sample_dir / "COVID").glob("*.png"))[0]
    dcm = _dicom_of(tmp_path, png)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4)
    clf = CXRClassifier(
        model,
        PreprocessConfig.create(64, 3, "imagenet"),
        {"architecture": "resnet18", "cxr": {"model": "resnet18"}},
        "resnet18",
    )
    from_dicom, from_png = clf.predict(str(dcm)), clf.predict(str(png))
    assert from_dicom.keys() == from_png.keys()
    assert max(abs(from_dicom[k] - from_png[k]) for k in from_png) < 0.05  # the same picture, its range stretched
    assert np.array_equal(np.asarray(load_grayscale(dcm)), np.asarray(read_radiograph(dcm)[0]))
    # a training folder holding a DICOM: decoded into the pixel cache like the PNGs
    data = tmp_path / "data"
    for name in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        (data / name).mkdir(parents=True)
        for p in sorted((sample_dir / name).glob("*.png"))[:2]:
            (data / name / p.name).write_bytes(p.read_bytes())
    _dicom_of(data / "COVID", png, "scan.dcm")
    cached = cache_pixels(load_radiographs(str(data)), 48, cache_dir=str(tmp_path / "cache"))
    row = cached.dataset["file_name"].index("COVID/scan.dcm")
    twin = cached.dataset["file_name"].index(f"COVID/{png.name}")
    got = np.asarray(cached.dataset[row]["pixels"], dtype=np.uint8)
    assert cached.bad == []
    assert np.array_equal(got, PreprocessConfig.create(48, 1, "radiography").pixels(dcm))  # the one decoder
    assert np.corrcoef(got.ravel(), np.asarray(cached.dataset[twin]["pixels"]).ravel())[0, 1] > 0.99


@pytest.mark.parametrize("fmt, suffix", [("GIF", ".png"), ("BMP", ".bmp"), ("TIFF", ".png"), ("ICO", ".png")])
def test_only_png_jpeg_and_dicom_are_decoded(tmp_path, sample_dir, fmt, suffix):
    from cxr.data.preprocessing import load_grayscale

    grey = Image.open(next((sample_dir / "Normal").glob("*.png"))).convert("L").resize((64, 64))
    path = tmp_path / f"x{suffix}"
    grey.save(path, format=fmt)
    for decode in (
        lambda: read_radiograph(path),
        lambda: load_grayscale(path),
        lambda: load_grayscale(path.read_bytes()),
    ):
        with pytest.raises(ImageInputError, match="Upload a PNG, JPEG or DICOM"):
            decode()


def test_multiframe_dicom_decodes_only_its_first_frame(tmp_path, monkeypatch):
    import pydicom.pixels

    ramp = np.tile(np.linspace(0, 4000, 64), (64, 1))
    path = write_dicom(tmp_path / "m.dcm", ramp)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([ramp, ramp[::-1], np.zeros_like(ramp)]).astype(np.uint16).tobytes()
    ds.save_as(path)
    calls = []
    real = pydicom.pixels.pixel_array
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda src, **kw: calls.append(kw) or real(src, **kw))
    frame = np.asarray(read_dicom(path))
    assert calls == [{"index": 0}]
    assert frame[0, 0] == 0 and frame[0, -1] == 255  # the first frame, the ramp


def test_a_compressed_dicom_that_cannot_be_decoded_says_so_without_plugin_names(tmp_path):
    from pydicom import dcmread
    from pydicom.uid import JPEGLSLossless

    path = write_dicom(tmp_path / "ls.dcm", np.zeros((64, 64)))
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 60])  # a frame no installed decoder reads
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(ImageInputError) as e:
        read_radiograph(path)
    message = str(e.value)
    assert "JPEG-LS" in message and "Export it as PNG or as uncompressed DICOM" in message
    assert "plugin" not in message.lower() and "pylibjpeg" not in message.lower()


@pytest.fixture
def small_working_size(monkeypatch):
    """The decoders' working size set to 64 px, so that "larger than the working size" is cheap to test (both
    readers, PNG/JPEG and DICOM, read it from :mod:`cxr.data.image_limits`)."""
    from cxr.data import image_limits

    monkeypatch.setattr(image_limits, "WORKING_SIDE", 64)
    monkeypatch.setattr(image_limits, "HEAVY_PIXELS", 64 * 64)
    return 64


def _xray(sample_dir, size):
    grey = Image.open(sorted((sample_dir / "Normal").glob("*.png"))[0]).convert("L")
    return grey.resize(size, Image.Resampling.BILINEAR)


@pytest.mark.parametrize("kind", ["png16", "jpeg", "dicom", "array"])
def test_large_images_become_the_working_image_as_they_decode(tmp_path, sample_dir, small_working_size, kind):
    """Every path reduces an image larger than the working size to it (longest side 64 here), keeping the
    picture: the same film as a plain downscale of the original."""
    from cxr.data.decode import load_grayscale

    grey = _xray(sample_dir, (256, 192))  # 4:3, four times the working size
    if kind == "png16":
        source = _save(tmp_path, "x.png", Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257))
    elif kind == "jpeg":
        source = _save(tmp_path, "x.jpg", grey, quality=95)
    elif kind == "dicom":
        source = write_dicom(tmp_path / "x.dcm", np.asarray(grey, dtype=np.float64) * 16)
    else:
        source = np.asarray(grey)
    got = load_grayscale(source)
    assert got.mode == "L" and max(got.size) == 64 and got.size[0] > got.size[1]
    expected = np.asarray(grey.resize(got.size, Image.Resampling.BOX), dtype=float)
    assert np.corrcoef(np.asarray(got, dtype=float).ravel(), expected.ravel())[0, 1] > 0.98
    if kind != "array":
        image, _ = read_radiograph(source)
        assert np.array_equal(np.asarray(image), np.asarray(got))  # the app's image is the training pipeline's


def test_a_dicom_with_too_many_frames_is_refused_before_decoding(tmp_path, monkeypatch):
    import pydicom.pixels
    from pydicom import dcmread

    from cxr.data import decode

    path = write_dicom(tmp_path / "m.dcm", np.zeros((64, 64)))
    ds = dcmread(path)
    ds.NumberOfFrames = decode.MAX_DICOM_PIXELS // (64 * 64) + 1  # claimed, far more than the file holds
    ds.save_as(path)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(ImageInputError, match="frames of 64×64 pixels; a chest radiograph is one image"):
        read_radiograph(path)


def test_at_most_the_heavy_decode_slots_run_at_once(tmp_path, sample_dir, small_working_size, monkeypatch):
    """Heavy images (above HEAVY_PIXELS) decode at most HEAVY_DECODE_SLOTS at a time; each hands its memory
    back when done."""
    import threading
    import time

    from cxr.data import decode, image_limits

    path = _save(tmp_path, "x.png", _xray(sample_dir, (128, 128)))
    running, most, released, lock = [0], [0], [], threading.Lock()
    real = decode.reduce_to_working_size

    def slow_reduce(image):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return real(image)

    monkeypatch.setattr(decode, "reduce_to_working_size", slow_reduce)
    monkeypatch.setattr(image_limits, "release_freed_memory", lambda: released.append(1))
    threads = [threading.Thread(target=decode.open_radiograph, args=(path,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == decode.HEAVY_DECODE_SLOTS and len(released) == 6


def test_a_very_elongated_dicom_is_reduced_without_losing_a_side(tmp_path, small_working_size):
    strip = np.tile(np.linspace(0, 4000, 3000), (32, 1))  # 32 x 3000: 47 times the working side long
    image, warnings = read_radiograph(write_dicom(tmp_path / "strip.dcm", strip))
    assert image.mode == "L" and min(image.size) >= 1 and image.size[0] > image.size[1]
    assert any("far from the roughly square shape" in w for w in warnings)


@pytest.mark.parametrize("damage", ["zero window width", "short modality LUT"])
def test_a_dicom_whose_lookup_tables_do_not_fit_is_one_sentence(tmp_path, damage):
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    pixels = np.arange(64 * 64).reshape(64, 64) % 4096
    path = write_dicom(tmp_path / "d.dcm", pixels, window=(2048, 0) if damage == "zero window width" else None)
    if damage == "short modality LUT":  # the descriptor claims 4096 entries, the data holds 3
        ds = dcmread(path)
        lut = Dataset()
        lut.LUTDescriptor, lut.ModalityLUTType = [4096, 0, 16], "OD"
        lut.LUTData = np.array([1, 2, 3], dtype=np.uint16).tobytes()
        ds.ModalityLUTSequence = [lut]
        ds.save_as(path)
    with pytest.raises(ImageInputError, match="lookup tables or pixel values are damaged"):
        read_radiograph(path)
