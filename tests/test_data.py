"""Radiographs as a `datasets` dataset: both Kaggle layouts, dataset ids, the pixel cache, and
identical preprocessing in training and evaluation."""

import datasets
import numpy as np
import pytest
import torch
from helpers import CLASSES, make_subset

from cxr.data.data_source import load_data_source, load_radiographs
from cxr.data.dataset import ModelInput, RadiographDataset
from cxr.data.pixel_cache import cache_pixels
from cxr.data.preprocessing import PreprocessConfig


def test_flat_sample_loads_with_the_four_class_labels(sample_dir):
    ds = load_radiographs(str(sample_dir))
    assert len(ds) == 600
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == list(CLASSES)
    assert isinstance(ds.features["image"], datasets.Image)
    assert np.bincount(ds["label"]).tolist() == [150, 150, 150, 150]
    assert ds[0]["file_name"].split("/")[0] in CLASSES
    # metadata.csv and SOURCE.md beside the class folders are not images of any class
    assert not any(n.endswith((".csv", ".md")) for n in ds["file_name"])
    assert ds[0]["image"].size[0] >= 256  # decodes to a real radiograph


def test_kaggle_images_layout_matches_flat_layout_and_ignores_masks(tmp_path, sample_dir):
    flat = make_subset(tmp_path / "flat", sample_dir, 6)
    kaggle = make_subset(tmp_path / "archive" / "COVID-19_Radiography_Dataset", sample_dir, 6, kaggle_layout=True)
    a = load_radiographs(str(flat))
    b = load_radiographs(str(kaggle))
    c = load_radiographs(str(tmp_path / "archive"))  # the unpacked archive's wrapper folder
    assert len(a) == 24
    assert a["file_name"] == b["file_name"] == c["file_name"]
    assert a["label"] == b["label"] == c["label"]


def test_parquet_dataset_with_other_class_order_is_remapped(tmp_path, sample_dir):
    """The dataset-id path (``datasets.load_dataset``) on a local parquet dataset, labels in another order."""
    files = (
        sorted((sample_dir / "Viral Pneumonia").glob("*.png"))[:3] + sorted((sample_dir / "COVID").glob("*.png"))[:3]
    )
    other_order = ["Viral Pneumonia", "Normal", "Lung_Opacity", "COVID"]
    src = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "label": [0, 0, 0, 3, 3, 3]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=other_order)}),
    )
    (tmp_path / "hub" / "data").mkdir(parents=True)
    src.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    ds = load_radiographs(str(tmp_path / "hub"))
    assert ds.features["label"].names == list(CLASSES)
    by_name = dict(zip(ds["file_name"], ds["label"]))
    assert by_name[f"Viral Pneumonia/{files[0].name}"] == CLASSES.index("Viral Pneumonia")
    assert by_name[f"COVID/{files[3].name}"] == CLASSES.index("COVID")


def test_unknown_dataset_id_fails_fast_offline():
    from cxr.errors import CXRError

    with pytest.raises(CXRError, match="neither a local image folder nor a loadable dataset"):
        load_radiographs("no-such-org/no-such-dataset")


def test_pixels_are_decoded_once_then_read_from_the_cache(tmp_path, sample_dir, monkeypatch):
    data = make_subset(tmp_path / "d", sample_dir, 4)
    ds = load_radiographs(str(data))
    first = cache_pixels(ds, 40, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("pixels-40-*.arrow"))

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr("cxr.data.preprocessing.PreprocessConfig.pixels", boom)
    second = cache_pixels(load_radiographs(str(data)), 40, cache_dir=tmp_path / "cache")
    assert np.array_equal(np.stack(first.dataset["pixels"]), np.stack(second.dataset["pixels"]))
    from cxr.errors import CXRError

    with pytest.raises(CXRError, match="decoded again"):  # another size is a new cache entry
        cache_pixels(load_radiographs(str(data)), 41, cache_dir=tmp_path / "cache", num_proc=1)


def test_training_and_evaluation_inputs_are_identical(sample_dir):
    """The cached, un-augmented loader input equals the evaluation transform of the file itself."""
    ds = load_radiographs(str(sample_dir))
    cached = cache_pixels(ds, 56)
    prep = PreprocessConfig.create(56, 3, "radiography")
    view = RadiographDataset(cached.dataset, prep)
    for i in range(0, 600, 37):  # every class, both file modes (RGB and L)
        item = view[i]
        path = sample_dir / cached.dataset[i]["file_name"]
        assert item["pixels"].dtype == torch.uint8 and item["pixels"].shape == (1, 56, 56)  # workers ship bytes
        assert torch.equal(view.model_input(i)[0], prep.transform(path))
        assert int(item["labels"]) == CLASSES.index(path.parent.name)


def test_augmented_training_input_differs_but_keeps_shape(sample_dir):
    from cxr.data.preprocessing import TrainAugmentation

    ds = load_radiographs(str(sample_dir))
    cached = cache_pixels(ds, 56)
    prep = PreprocessConfig.create(56, 3, "radiography")
    plain = RadiographDataset(cached.dataset, prep, indices=range(20))
    aug = RadiographDataset(cached.dataset, prep, indices=range(20), augment=TrainAugmentation())
    torch.manual_seed(0)
    diffs = [not torch.equal(plain[i]["pixels"], aug[i]["pixels"]) for i in range(20)]
    assert all(aug[i]["pixels"].shape == (1, 56, 56) and aug[i]["pixels"].dtype == torch.uint8 for i in range(3))
    assert sum(diffs) >= 18


def test_clahe_is_part_of_the_cached_and_the_evaluation_preprocessing(sample_dir):
    ds = load_radiographs(str(sample_dir))
    plain = cache_pixels(ds, 48)
    clahe = cache_pixels(ds, 48, clahe=True)
    prep = PreprocessConfig.create(48, 3, "radiography", clahe=True)
    view = RadiographDataset(clahe.dataset, prep)
    for i in (0, 200, 599):
        path = sample_dir / clahe.dataset[i]["file_name"]
        assert torch.equal(view.model_input(i)[0], prep.transform(path))
        assert not np.array_equal(np.asarray(plain.dataset[i]["pixels"]), np.asarray(clahe.dataset[i]["pixels"]))


def test_batched_reads_give_the_same_items_as_single_reads(sample_dir):
    """``__getitems__`` (one Arrow read per batch, what DataLoaders call) equals ``__getitem__``: on a
    split in shuffled order, through a row selection (as skipping unreadable images makes), augmented
    under the same seed, and through a DataLoader."""
    from cxr.data.preprocessing import TrainAugmentation

    cached = cache_pixels(load_radiographs(str(sample_dir)), 56)
    prep = PreprocessConfig.create(56, 3, "radiography")
    selected = cached.dataset.select(range(599, 0, -7))  # an indices mapping over the cache file
    positions = [5, 0, 41, 17, 17, 84]
    for ds, augment in ((cached.dataset, None), (selected, None), (selected, TrainAugmentation())):
        view = RadiographDataset(ds, prep, indices=list(range(len(ds)))[::-1], augment=augment)
        torch.manual_seed(3)
        single = [view[i] for i in positions]
        torch.manual_seed(3)
        batched = view.__getitems__(positions)
        for a, b in zip(single, batched):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    view = RadiographDataset(cached.dataset, prep)
    batch = next(iter(torch.utils.data.DataLoader(view, batch_size=8)))
    inputs = ModelInput(prep)(batch["pixels"])  # the batch's model input, made on its device
    for j in range(8):
        path = sample_dir / cached.dataset[j]["file_name"]
        assert torch.equal(inputs[j], prep.transform(path))
        assert int(batch["labels"][j]) == CLASSES.index(path.parent.name) and int(batch["index"][j]) == j


def test_cache_dir_env_var_is_read_when_used_not_at_import(subset, tmp_path, monkeypatch):
    from cxr.data.data_source import load_radiographs
    from cxr.data.pixel_cache import cache_pixels, default_cache_dir

    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "later"))
    assert default_cache_dir() == tmp_path / "later"
    cache_pixels(load_radiographs(str(subset)), 24)
    assert any((tmp_path / "later").rglob("*.arrow"))


def test_the_same_films_scored_against_two_class_sets_keep_each_sets_labels(tmp_path, sample_dir):
    """The cache keeps the label column: one folder read for a two-class model, then for a four-class one, must not
    hand the second the first one's label numbers (Normal is 1 of COVID, Normal; 2 of the database's four)."""
    from cxr.data.labelling import Labelling
    from cxr.labels import CLASS_NAMES

    folder = tmp_path / "site" / "Normal"
    folder.mkdir(parents=True)
    for f in sorted((sample_dir / "Normal").glob("*.png"))[:3]:
        (folder / f.name).symlink_to(f)
    labels = {}
    for classes in (("COVID", "Normal"), CLASS_NAMES):
        ds = load_data_source(str(tmp_path / "site"), labelling=Labelling(classes=classes, partial=True)).dataset
        cached = cache_pixels(ds, 32, cache_dir=tmp_path / "cache").dataset
        labels[classes] = [cached.features["label"].int2str(int(k)) for k in cached["label"]]
    assert all(v == ["Normal"] * 3 for v in labels.values()), labels
