"""Stratified 80/10/10 split: proportions, determinism across processes, split files."""

import json
import subprocess
import sys
from collections import Counter

import pytest
from helpers import REPO

from cxr.data.data_source import load_radiographs
from cxr.data.splits import SPLITS, indices_for_split, load_split, save_split, stratified_split
from cxr.errors import CXRError


@pytest.fixture(scope="module")
def sample_index(sample_dir):
    ds = load_radiographs(str(sample_dir))
    return ds["file_name"], ds["label"]


def test_split_is_stratified_80_10_10(sample_index):
    names, labels = sample_index
    split = stratified_split(names, labels, seed=1)
    assert [len(split[s]) for s in SPLITS] == [480, 60, 60]
    label_of = dict(zip(names, labels))
    for part, per_class in (("train", 120), ("validation", 15), ("test", 15)):
        assert Counter(label_of[n] for n in split[part]) == {0: per_class, 1: per_class, 2: per_class, 3: per_class}
    all_names = [n for s in SPLITS for n in split[s]]
    assert sorted(all_names) == sorted(names)  # a partition: every image once


def test_split_depends_on_seed_only_and_is_identical_in_another_process(sample_index, sample_dir):
    names, labels = sample_index
    a = stratified_split(names, labels, seed=1)
    assert a == stratified_split(list(reversed(names)), list(reversed(labels)), seed=1)  # input order irrelevant
    assert a["test"] != stratified_split(names, labels, seed=2)["test"]
    code = (
        "import json,sys; from cxr.data.data_source import load_radiographs; from cxr.data.splits import stratified_split;"
        f"ds=load_radiographs({str(sample_dir)!r}); print(json.dumps(stratified_split(ds['file_name'], ds['label'], 1)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == a


def test_split_file_round_trip_and_reuse(tmp_path, sample_index):
    names, labels = sample_index
    split = stratified_split(names, labels, seed=3)
    save_split(tmp_path / "split.json", split, seed=3)
    loaded = load_split(tmp_path / "split.json")
    assert loaded == split
    rows = indices_for_split(names, loaded)
    assert [names[i] for i in rows["test"]] == split["test"]


def test_split_file_errors(tmp_path, sample_index):
    names, _ = sample_index
    with pytest.raises(CXRError, match="not found"):
        load_split(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CXRError, match="not valid JSON"):
        load_split(tmp_path / "bad.json")
    (tmp_path / "dup.json").write_text(json.dumps({"train": ["a"], "validation": ["a"], "test": []}))
    with pytest.raises(CXRError, match="both"):
        load_split(tmp_path / "dup.json")
    foreign = {"train": ["COVID/none.png"], "validation": [], "test": []}
    with pytest.raises(CXRError, match="not in the data"):
        indices_for_split(names, foreign)
