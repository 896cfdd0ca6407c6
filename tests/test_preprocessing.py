"""Preprocessing: grey conversion for every file mode, normalisation, augmentation, config round trip."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cxr.data.preprocessing import PreprocessConfig, TrainAugmentation, load_grayscale, to_grayscale
from cxr.labels import CLASS_NAMES, NORMALIZATIONS


def test_rgb_radiograph_with_equal_channels_is_its_grey_channel(sample_dir):
    path = sorted((sample_dir / "COVID").glob("*.png"))[0]
    rgb = Image.open(path)
    assert rgb.mode == "RGB"
    arr = np.asarray(rgb)
    assert np.array_equal(np.asarray(load_grayscale(path)), arr[:, :, 0])


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "LA", "1"])
def test_every_mode_becomes_one_luminance_channel(mode):
    base = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1)), mode="L")
    img = base.convert(mode)
    grey = to_grayscale(img)
    assert grey.mode == "L" and grey.size == base.size
    if mode in ("RGBA", "LA", "P"):
        assert np.abs(np.asarray(grey, dtype=int) - np.asarray(base, dtype=int)).max() <= 8


def test_16_bit_png_is_stretched_to_8_bit():
    arr = np.linspace(1000, 4000, 32 * 32).reshape(32, 32).astype(np.uint16)  # a 12-bit detector range
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    buf.seek(0)
    grey = np.asarray(load_grayscale(buf))
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    assert np.all(np.diff(grey.ravel().astype(int)) >= 0)  # order preserved


def test_norm_choices_resolve_to_the_study_values():
    r = PreprocessConfig.create(224, 3, "radiography")
    assert r.mean == NORMALIZATIONS["radiography"][0] and r.std == NORMALIZATIONS["radiography"][1]
    i = PreprocessConfig.create(224, 3, "imagenet")
    assert i.mean == (0.485, 0.456, 0.406)
    m = PreprocessConfig.create(224, 3, "model", model_mean=(0.5, 0.5, 0.5), model_std=(0.5, 0.5, 0.5))
    assert m.mean == (0.5, 0.5, 0.5)
    one = PreprocessConfig.create(32, 1, "radiography")
    assert one.mean == pytest.approx((np.mean(NORMALIZATIONS["radiography"][0]),))
    with pytest.raises(ValueError):
        PreprocessConfig.create(224, 3, "clahe")


def test_transform_replicates_grey_and_normalises_each_channel(sample_dir):
    cfg = PreprocessConfig.create(48, 3, "radiography")
    path = sorted((sample_dir / "Lung_Opacity").glob("*.png"))[0]  # a mode-L file
    x = cfg.transform(path)
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    raw = torch.from_numpy(np.array(Image.open(path).resize((48, 48), Image.Resampling.BILINEAR))).float() / 255
    for c in range(3):
        expected = (raw - cfg.mean[c]) / cfg.std[c]
        assert torch.allclose(x[c], expected, atol=1e-6)


def test_config_round_trips_through_json_dict():
    cfg = PreprocessConfig.create(64, 3, "imagenet")
    again = PreprocessConfig.from_dict({**cfg.to_dict(), "future_key": 1})
    assert again == cfg and again.label_names == CLASS_NAMES
    timm_cfg = cfg.timm_data_config()
    assert timm_cfg["input_size"] == (3, 64, 64) and timm_cfg["mean"] == cfg.mean


def test_augmentation_flips_and_rotates_within_ten_degrees():
    pixels = np.zeros((64, 64), dtype=np.uint8)
    pixels[:, :8] = 255  # a bright band on the left
    torch.manual_seed(0)
    aug = TrainAugmentation()
    outs = [aug(pixels) for _ in range(40)]
    assert all(o.shape == (1, 64, 64) and o.dtype == torch.uint8 for o in outs)
    right_heavy = [o[0, :, 32:].float().sum() > o[0, :, :32].float().sum() for o in outs]
    assert 5 < sum(right_heavy) < 35  # about half are flipped
    # a rotation of at most 10 degrees keeps the band's centre row mostly bright on its side
    for o in outs:
        row = o[0, 32].float()
        assert max(row[:12].mean(), row[-12:].mean()) > 100
