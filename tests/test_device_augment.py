"""The batched augmentation on the training device (``--augment-on device``) against the loader's per-image path,
on real films: the same pixel arithmetic for the same draw, the same distributions of draws, one draw per film,
and a tiny run that still learns."""

import json

import numpy as np
import pytest
import torch
from helpers import PYTHON, run_script, tiny_run
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cxr.data.data_source import load_radiographs
from cxr.data.device_augment import DeviceAugmentation, Draws
from cxr.data.pixel_cache import cache_pixels
from cxr.data.preprocessing import TrainAugmentation


@pytest.fixture(scope="module")
def films(sample_dir):
    """Eight real films, two per class, as the cache holds them (64 px)."""
    ds = cache_pixels(load_radiographs(str(sample_dir)), 64).dataset
    rows = [0, 1, 150, 151, 300, 301, 450, 451]
    return torch.stack([torch.as_tensor(np.asarray(ds[i]["pixels"], dtype=np.uint8)) for i in rows]).unsqueeze(1)


def _torchvision(film: torch.Tensor, d: Draws, i: int) -> torch.Tensor:
    """torchvision's functional ops with film ``i``'s draw: what the loader's per-image path computes."""
    x = F.horizontal_flip(film) if d.flip[i] else film
    x = F.affine(
        x,
        angle=float(d.angle[i]),
        translate=[int(d.tx[i]), int(d.ty[i])],
        scale=float(d.scale[i]),
        shear=[0.0, 0.0],
        interpolation=v2.InterpolationMode.BILINEAR,
        fill=0,
    )
    steps = [(F.adjust_contrast, float(d.contrast[i])), (F.adjust_brightness, float(d.brightness[i]))]
    for fn, factor in steps if d.contrast_first[i] else steps[::-1]:
        x = fn(x, factor)
    return x


def test_each_films_draw_gives_torchvisions_pixels(films):
    aug = DeviceAugmentation.named("radiograph")
    d = aug.draw(len(films), 64, 64, torch.Generator().manual_seed(5))
    assert len(set(d.angle.tolist())) == len(films)  # one draw per film, not one per batch
    out = aug.apply(films, d)
    assert out.dtype == torch.uint8 and out.shape == films.shape
    for i in range(len(films)):  # the same arithmetic: at most a pixel in a thousand off by a rounding (1-2 levels)
        diff = (out[i].int() - _torchvision(films[i], d, i).int()).abs()
        assert diff.max() <= 2 and (diff > 0).float().mean() <= 1e-3, f"film {i} differs from torchvision's"
    assert not torch.equal(out, films)


def _rotations(film: torch.Tensor):
    """Every flip and rotation of ``film`` on a 0.5-degree grid: (templates as rows, flipped, |angle|)."""
    grid = [(flipped, float(a)) for flipped in (False, True) for a in np.arange(-10, 10.01, 0.5)]
    rows = [
        F.rotate(F.horizontal_flip(film) if f else film, a, interpolation=v2.InterpolationMode.BILINEAR, fill=0)
        for f, a in grid
    ]
    return torch.stack(rows).flatten(1).float(), [f for f, _ in grid], [abs(a) for _, a in grid]


def _nearest_rotations(outs: torch.Tensor, templates) -> list:
    """(flipped, |angle|) of the template nearest each of ``outs`` (mean absolute difference)."""
    rows, flips, angles = templates
    nearest = torch.cdist(outs.flatten(1).float(), rows, p=1).argmin(1).tolist()
    return [(flips[j], angles[j]) for j in nearest]


def test_flips_and_angles_have_the_per_image_paths_distribution(films):
    """The study's augmentation of one real film, 300 times on each path: the flips and the rotations recovered
    from the pixels have the same distribution (flip share within binomial noise, angle quartiles within a
    degree, both close to uniform on 0..10 degrees)."""
    film = films[2]
    templates = _rotations(film)
    torch.manual_seed(0)
    per_image = TrainAugmentation.named("study")
    loader_path = _nearest_rotations(torch.stack([per_image(film[0].numpy()) for _ in range(300)]), templates)
    device = DeviceAugmentation.named("study")(
        film.expand(300, -1, -1, -1).contiguous(), torch.Generator().manual_seed(1)
    )
    device_path = _nearest_rotations(device, templates)
    for path in (loader_path, device_path):
        flips = sum(f for f, _ in path) / len(path)
        assert abs(flips - 0.5) < 0.1  # 3.5 standard deviations of a fair coin over 300 films
        assert np.quantile([a for _, a in path], [0.25, 0.5, 0.75]) == pytest.approx([2.5, 5, 7.5], abs=1.0)
    ql = np.quantile([a for _, a in loader_path], [0.1, 0.5, 0.9])
    qd = np.quantile([a for _, a in device_path], [0.1, 0.5, 0.9])
    assert np.abs(ql - qd).max() <= 1.0


def test_the_radiograph_draws_follow_torchvisions_distributions():
    """Each drawn quantity's quantiles against torchvision's own parameter sampling over 4,000 draws."""
    n = 4000
    d = DeviceAugmentation.named("radiograph").draw(n, 64, 64, torch.Generator().manual_seed(2))
    torch.manual_seed(2)
    affine = v2.RandomAffine(10.0, translate=(0.05, 0.05), scale=(0.9, 1.1))
    jitter = v2.ColorJitter(brightness=0.2, contrast=0.2)
    img = torch.zeros(1, 64, 64, dtype=torch.uint8)
    a = [affine.make_params([img]) for _ in range(n)]
    j = [jitter.make_params([img]) for _ in range(n)]
    ref = {
        "angle": [p["angle"] for p in a],
        "tx": [p["translate"][0] for p in a],
        "ty": [p["translate"][1] for p in a],
        "scale": [p["scale"] for p in a],
        "brightness": [p["brightness_factor"] for p in j],
        "contrast": [p["contrast_factor"] for p in j],
    }
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    bounds = {"angle": 10, "tx": 3.2, "ty": 3.2, "scale": (0.9, 1.1), "brightness": (0.8, 1.2), "contrast": (0.8, 1.2)}
    for name, values in ref.items():
        ours = getattr(d, name).numpy()
        spread = np.ptp(values)
        assert np.quantile(ours, qs) == pytest.approx(np.quantile(values, qs), abs=0.04 * spread), name
        low, high = bounds[name] if isinstance(bounds[name], tuple) else (-bounds[name], bounds[name])
        assert ours.min() >= low and ours.max() <= high, name
    assert set(np.unique(d.tx.numpy())) == set(np.unique(ref["tx"]))  # whole pixels, as torchvision rounds them
    contrast_first = np.mean([list(p["fn_idx"]).index(1) < list(p["fn_idx"]).index(0) for p in j])
    assert d.contrast_first.float().mean().item() == pytest.approx(contrast_first, abs=0.04)
    assert d.flip.float().mean().item() == pytest.approx(0.5, abs=0.04)


def test_the_same_generator_state_repeats_the_draws_and_an_unknown_name_is_refused(films):
    aug = DeviceAugmentation.named("radiograph")
    first = aug(films, torch.Generator().manual_seed(9))
    assert torch.equal(first, aug(films, torch.Generator().manual_seed(9)))
    assert not torch.equal(first, aug(films, torch.Generator().manual_seed(10)))
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'; choose from study, radiograph, flip"):
        DeviceAugmentation.named("mixup")
    with pytest.raises(ValueError, match="B x 1 x H x W uint8"):
        aug(films.float(), torch.Generator())


@pytest.mark.slow
def test_a_tiny_run_augmenting_on_the_device_learns(tmp_path, sample_dir):
    out = tmp_path / "run"
    args = [PYTHON, "train_accelerate.py", "--data", str(sample_dir), "--output-dir", str(out)]
    args += [*tiny_run("logreg", 32, 6), "--augment", "radiograph", "--augment-on", "device"]
    proc = run_script(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "run_config.json").read_text())["config"]
    assert config["augment_on"] == "device" and config["augment"] == "radiograph"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] > 0.5  # four classes: chance is 0.25
    bad = run_script([*args[:-1], "sideways", "--overwrite-output-dir"])
    assert bad.returncode == 2 and "--augment-on" in bad.stderr
