"""Hub datasets (``--data ORG/NAME``) against the LOCAL STAND-IN of the Hub (tests/hub_server.py).

A dataset's own train/validation/test splits are kept and only missing parts are made; the commit a
revision resolves to is recorded in run_config.json; a repository holding the Kaggle folder tree loads
like the local folder; ``--dataset-revision`` and ``--dataset-config`` pick what is loaded. The datasets
are built in tmp_path from a few real X-rays of the sample; nothing is fetched from huggingface.co.
"""

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

import datasets
import pytest
from helpers import CLASSES, PYTHON, REPO, hub_env, make_subset, run_script, sample_files, tiny_run

from cxr.data.data_source import load_data_source, load_radiographs
from cxr.data.splits import complete_split, stratified_split
from cxr.errors import CXRError

# Every test here starts processes or trains models: in the full suite (--runslow), not the fast default run.
pytestmark = pytest.mark.slow

SHA = re.compile(r"[0-9a-f]{40}")


def parquet(tmp_path: Path, files: Dict[str, Sequence[Path]], name: str) -> bytes:
    """A parquet shard as ``push_to_hub`` writes it: embedded PNG bytes, ``path`` the base name, a ClassLabel."""
    rows = [(f, CLASSES.index(c)) for c, fs in files.items() for f in fs]
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": f.read_bytes(), "path": f.name} for f, _ in rows], "label": [lab for _, lab in rows]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))}),
    )
    path = tmp_path / f"{name}.parquet"
    ds.to_parquet(str(path))
    return path.read_bytes()


def pick(sample_dir: Path, start: int, stop: int) -> Dict[str, List[Path]]:
    return {c: fs[start:stop] for c, fs in sample_files(sample_dir, stop).items()}


def names(files: Dict[str, Sequence[Path]]) -> List[str]:
    return sorted(f"{c}/{f.name}" for c, fs in files.items() for f in fs)


def train_cli(hub, tmp_path: Path, data: str, *extra: str) -> subprocess.CompletedProcess:
    """The real training command, tiny: logreg, one epoch at 32 px, no loader workers (``extra`` may override)."""
    return run_script(
        [
            PYTHON,
            "train_accelerate.py",
            *tiny_run("logreg", 32, 1),
            "--data",
            data,
            "--output-dir",
            str(tmp_path / "run"),
            *extra,
        ],
        env=hub_env(hub, tmp_path, ""),
    )


def load_in_fresh_process(hub, tmp_path: Path, data: str, revision=None, config=None, offline=False) -> dict:
    """``load_data_source`` in a new process (huggingface_hub reads HF_ENDPOINT when imported)."""
    code = f"""
import json, os, pathlib
from cxr.data.data_source import load_data_source
s = load_data_source({data!r}, {revision!r}, {config!r})
cache = pathlib.Path(os.environ["HF_HOME"]) / "hub"
pngs = sorted(str(p.relative_to(cache)) for p in cache.rglob("*.png"))
print(json.dumps({{"file_name": list(s.dataset["file_name"]), "label": list(s.dataset["label"]), "info": s.info,
                  "given": s.given_splits, "snapshot": pngs}}))
"""
    proc = subprocess.run(
        [PYTHON, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **hub_env(hub, tmp_path, "", offline)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_outputs(tmp_path: Path):
    out = tmp_path / "run"
    return json.loads((out / "split.json").read_text()), json.loads((out / "run_config.json").read_text())


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


# -- the split rules, without the Hub -------------------------------------------------------------
def test_complete_split_keeps_given_parts_and_makes_only_the_missing_ones():
    train = [f"{c}/t{i}.png" for c in CLASSES for i in range(9)]
    test = [f"{c}/x{i}.png" for c in CLASSES for i in range(2)]
    labels = {n: CLASSES.index(n.split("/")[0]) for n in train + test}
    files = sorted(labels)
    lab = [labels[n] for n in files]

    split, how = complete_split(files, lab, {"train": train, "test": test}, seed=1)
    assert split["test"] == sorted(test)
    assert sorted(split["train"] + split["validation"]) == sorted(train)
    assert [labels[n] for n in split["validation"]] == [0, 1, 2, 3]  # 1/9 of each class's 9
    assert how["test"] == "the dataset's own 'test' split"
    assert how["validation"].startswith("carved from 'train': 1/9 of it, stratified")

    split, how = complete_split(files, lab, {"TRAIN": train, "valid": test}, seed=1)  # aliases, any case
    assert split["validation"] == sorted(test) and len(split["test"]) == 4
    assert how["validation"] == "the dataset's own 'valid' split"

    only_train, how = complete_split(files, lab, {"train": files}, seed=3)
    assert only_train == stratified_split(files, lab, seed=3) and how["test"].startswith("carved from 'train': 10%")
    assert complete_split(files, lab, {}, seed=3)[0] == only_train  # class folders: the usual 80/10/10

    kept, _ = complete_split(files, lab, {"train": train[:30], "dev": train[30:], "eval": test})
    assert kept == {"train": sorted(train[:30]), "validation": sorted(train[30:]), "test": sorted(test)}
    # an image the data lists but that was skipped as unreadable is left out
    readable = [n for n in files if n != "COVID/x0.png"]
    assert (
        "COVID/x0.png"
        not in complete_split(readable, [labels[n] for n in readable], {"train": train, "test": test})[0]["test"]
    )
    for given, message in (
        ({"train": train, "holdout": test}, "'holdout' are not train, validation or test"),
        ({"val": train, "test": test}, "no train split"),
        ({"train": train, "val": test, "valid": test}, "two validation splits"),
    ):
        with pytest.raises(CXRError, match=message):
            complete_split(files, lab, given)


def test_local_parquet_dataset_with_configurations(tmp_path, sample_dir):
    """``--dataset-config`` picks a README ``configs:`` entry; an unknown one is a clear error."""
    root = tmp_path / "pq"
    (root / "all").mkdir(parents=True)
    (root / "two").mkdir()
    (root / "all" / "train-00000-of-00001.parquet").write_bytes(parquet(tmp_path, pick(sample_dir, 0, 3), "a"))
    (root / "two" / "train-00000-of-00001.parquet").write_bytes(parquet(tmp_path, pick(sample_dir, 0, 2), "b"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: all\n  default: true\n  data_files:\n  - split: train\n    path: all/*.parquet\n"
        "- config_name: two\n  data_files:\n  - split: train\n    path: two/*.parquet\n---\n"
    )
    assert len(load_radiographs(str(root))) == 12
    two = load_data_source(str(root), config="two")
    assert len(two.dataset) == 8 and two.info == {
        "kind": "folder",
        "path": str(root),
        "layout": "datasets",
        "config": "two",
    }
    assert sorted(two.given_splits) == ["train"]
    with pytest.raises(CXRError, match=r"--dataset-config 'three': .* has no such configuration; it has: all, two"):
        load_data_source(str(root), config="three")


# -- the Hub ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_own_train_validation_test_splits_are_kept_and_the_commit_recorded(hub, tmp_path, sample_dir):
    parts = {"train": pick(sample_dir, 0, 6), "validation": pick(sample_dir, 6, 8), "test": pick(sample_dir, 8, 10)}
    sha = hub.put_files(
        "cxr-test/xray-3splits",
        {f"data/{part}-00000-of-00001.parquet": parquet(tmp_path, files, part) for part, files in parts.items()},
        repo_type="dataset",
    )
    proc = train_cli(hub, tmp_path, "cxr-test/xray-3splits")
    assert proc.returncode == 0, proc.stderr[-3000:]
    split, run = run_outputs(tmp_path)
    assert {part: split[part] for part in parts} == {part: names(files) for part, files in parts.items()}
    assert split["seed"] == 1 and split["fractions"] == [0.6, 0.2, 0.2]
    source = run["data_source"]
    assert SHA.fullmatch(source["revision"]) and source["revision"] == sha
    assert source == {
        "kind": "hub",
        "id": "cxr-test/xray-3splits",
        "revision": sha,
        "requested_revision": "main",
        "from_cache": False,
        "layout": "datasets",
        "config": None,
        "images": 40,
        "splits": {p: f"the dataset's own {p!r} split" for p in parts},
    }
    assert run["images"] == {"train": 24, "validation": 8, "test": 8}
    assert f"data: Hub dataset cxr-test/xray-3splits @ {sha}" in proc.stdout
    assert "test: 8 images, the dataset's own 'test' split" in proc.stdout
    predictions = (tmp_path / "run" / "predictions.csv").read_text()
    assert all(n in predictions for n in names(parts["test"]))
    # cxr.eval on the same dataset: every image of every split is a test image
    proc = run_script(
        [
            PYTHON,
            "-m",
            "cxr.eval",
            "--model",
            str(tmp_path / "run" / "model"),
            "--data",
            "cxr-test/xray-3splits",
            "--dataset-revision",
            sha,
            "--output-dir",
            str(tmp_path / "eval"),
        ],
        env=hub_env(hub, tmp_path, ""),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]["num_images"] == 40
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"cxr-test/xray-3splits @ {sha} (40 images, every one a test image)" in report
    # the model card names the dataset, its commit and its own test split
    from huggingface_hub import ModelCardData

    from cxr.reporting.model_card import render_model_card

    card = render_model_card(tmp_path / "run", "cxr-test/xray-model")
    assert card.data.datasets == ["cxr-test/xray-3splits"]
    assert {(r.dataset_type, r.dataset_split, r.dataset_revision) for r in card.data.eval_results} == {
        ("cxr-test/xray-3splits", "test", sha)
    }
    assert {r.dataset_name for r in card.data.eval_results} == {"cxr-test/xray-3splits, 8 test images"}
    ModelCardData(**card.data.to_dict())
    assert f"at commit `{sha}`" in card.text and "test: the dataset's own 'test' split" in card.text


@pytest.mark.slow
def test_train_and_test_only_keeps_test_and_carves_validation_from_train(hub, tmp_path, sample_dir):
    train, test = pick(sample_dir, 0, 8), pick(sample_dir, 8, 10)
    hub.put_files(
        "cxr-test/xray-2splits",
        {
            "data/train-00000-of-00001.parquet": parquet(tmp_path, train, "train"),
            "data/test-00000-of-00001.parquet": parquet(tmp_path, test, "test"),
        },
        repo_type="dataset",
    )
    proc = train_cli(hub, tmp_path, "cxr-test/xray-2splits")
    assert proc.returncode == 0, proc.stderr[-3000:]
    split, run = run_outputs(tmp_path)
    assert split["test"] == names(test)
    assert sorted(split["train"] + split["validation"]) == names(train)
    assert sorted(n.split("/")[0] for n in split["validation"]) == list(CLASSES)  # one per class: 1/9 of 8
    splits = run["data_source"]["splits"]
    assert splits["test"] == "the dataset's own 'test' split"
    assert splits["validation"] == "carved from 'train': 1/9 of it, stratified by class (seed 1)"
    assert splits["train"] == "the dataset's own 'train' split, less the validation part carved from it"
    assert "validation: 4 images, carved from 'train'" in proc.stdout


def test_kaggle_tree_in_a_dataset_repository_loads_like_the_local_folder(hub, tmp_path, sample_dir):
    """``<wrapper>/<Class>/images`` with ``masks/`` beside (and the archive's spreadsheets): same images and
    labels as the local folder, masks and spreadsheets never downloaded; then again offline, from the cache."""
    local = make_subset(tmp_path / "archive" / "COVID-19_Radiography_Dataset", sample_dir, 5, kaggle_layout=True)
    files = {str(p.relative_to(tmp_path / "archive")): p.read_bytes() for p in local.rglob("*.png")}
    files.update(
        {
            "COVID-19_Radiography_Dataset/COVID.metadata.xlsx": b"not an image",
            "COVID-19_Radiography_Dataset/README.md.txt": b"Kaggle's notes",
            ".gitattributes": b"",
        }
    )
    assert sum("/masks/" in p for p in files) == 8
    sha = hub.put_files("cxr-test/kaggle-tree", files, repo_type="dataset")
    expected = load_radiographs(str(tmp_path / "archive"))
    got = load_in_fresh_process(hub, tmp_path, "cxr-test/kaggle-tree")
    assert got["file_name"] == list(expected["file_name"]) and got["label"] == list(expected["label"])
    assert got["info"] == {
        "kind": "hub",
        "id": "cxr-test/kaggle-tree",
        "revision": sha,
        "requested_revision": "main",
        "from_cache": False,
        "layout": "class folders",
        "config": None,
    }
    assert got["given"] == {}
    assert not any("masks" in p for p in got["snapshot"]) and len(got["snapshot"]) == 20
    fetched = [p for m, p in hub.requests if m == "GET" and "/datasets/cxr-test/kaggle-tree/resolve/" in p]
    assert len(fetched) == 20 and not any("/masks/" in p or p.endswith(".xlsx") for p in fetched)
    offline = load_in_fresh_process(hub, tmp_path, "cxr-test/kaggle-tree", offline=True)
    assert offline["file_name"] == list(expected["file_name"]) and offline["info"]["revision"] == sha
    assert offline["info"]["from_cache"] is True


@pytest.mark.slow
def test_dataset_revision_trains_on_an_older_commit(hub, tmp_path, sample_dir):
    old, new = pick(sample_dir, 0, 5), pick(sample_dir, 5, 10)
    old_sha = hub.put_files(
        "cxr-test/xray-history", {"data/train-00000-of-00001.parquet": parquet(tmp_path, old, "o")}, repo_type="dataset"
    )
    new_sha = hub.put_files(
        "cxr-test/xray-history", {"data/train-00000-of-00001.parquet": parquet(tmp_path, new, "n")}, repo_type="dataset"
    )
    assert old_sha != new_sha
    proc = train_cli(hub, tmp_path, "cxr-test/xray-history", "--dataset-revision", old_sha)
    assert proc.returncode == 0, proc.stderr[-3000:]
    split, run = run_outputs(tmp_path)
    assert sorted(split["train"] + split["validation"] + split["test"]) == names(old)
    source = run["data_source"]
    assert source["revision"] == old_sha and source["requested_revision"] == old_sha
    assert run["config"]["dataset_revision"] == old_sha and run["config"]["dataset_config"] is None
    assert source["splits"]["test"] == "carved from 'train': 10% of it, stratified by class (seed 1)"
    assert split["fractions"] == [0.6, 0.2, 0.2]  # 5 per class: 3/1/1
    latest = load_in_fresh_process(hub, tmp_path, "cxr-test/xray-history")
    assert latest["info"]["revision"] == new_sha and sorted(latest["file_name"]) == names(new)


@pytest.mark.slow
def test_resume_reads_the_commit_the_run_started_from(hub, tmp_path, sample_dir):
    first = hub.put_files(
        "cxr-test/xray-moving",
        {"data/train-00000-of-00001.parquet": parquet(tmp_path, pick(sample_dir, 0, 5), "a")},
        repo_type="dataset",
    )
    proc = train_cli(hub, tmp_path, "cxr-test/xray-moving")
    assert proc.returncode == 0, proc.stderr[-3000:]
    split_before, _ = run_outputs(tmp_path)
    hub.put_files(
        "cxr-test/xray-moving",
        {  # main moves on: other images under the same file name
            "data/train-00000-of-00001.parquet": parquet(tmp_path, pick(sample_dir, 5, 10), "b")
        },
        repo_type="dataset",
    )
    proc = train_cli(hub, tmp_path, "cxr-test/xray-moving", "--epochs", "2", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming logreg" in proc.stdout
    split, run = run_outputs(tmp_path)
    assert split == split_before and run["data_source"]["revision"] == first
    assert run["data_source"]["splits"]["test"] == "carved from 'train': 10% of it, stratified by class (seed 1)"


def test_missing_repository_and_revision_are_one_line_errors(hub, tmp_path, sample_dir):
    hub.put_files(
        "cxr-test/xray-small",
        {"data/train-00000-of-00001.parquet": parquet(tmp_path, pick(sample_dir, 0, 3), "s")},
        repo_type="dataset",
    )
    missing = one_error_line(train_cli(hub, tmp_path, "cxr-test/no-such-dataset"))
    assert "no dataset repository 'cxr-test/no-such-dataset' on the Hub" in missing
    revision = one_error_line(train_cli(hub, tmp_path, "cxr-test/xray-small", "--dataset-revision", "v9"))
    assert revision == (
        "error: --dataset-revision 'v9': no such branch, tag or commit in the Hub dataset 'cxr-test/xray-small'"
    )
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_dataset_flags_with_a_local_image_folder_fail_up_front(tmp_path, subset, capsys):
    from cxr.commands.train import main as train_main

    base = [
        *tiny_run("logreg", 32, 1),
        "--data",
        str(subset),
        "--output-dir",
        str(tmp_path / "run"),
    ]
    for extra, message in (
        (["--dataset-revision", "main"], "--dataset-revision is for Hub datasets (--data ORG/NAME)"),
        (["--dataset-config", "default"], "--dataset-config is for datasets with configurations"),
        (["--dataset-revision", " "], "--dataset-revision must not be empty"),
    ):
        assert train_main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_cxr_eval_scores_an_outside_hub_dataset_with_other_names_and_sources(hub, tmp_path, sample_dir):
    """External validation from the Hub: a parquet dataset of two of our classes under its own label names, with a
    ``source`` column, scored by ``python -m cxr.eval --label-map``; every figure per source; a name left unmapped
    is refused in one line."""
    files = sorted((sample_dir / "Normal").glob("*.png"))[:4] + sorted((sample_dir / "COVID").glob("*.png"))[:3]
    sites = ["north", "south", "north", "south", "north", "north", "south"]
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
            "label": [0, 0, 0, 0, 1, 1, 1],
            "source": sites,
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=["No finding", "COVID-19"]),
                "source": datasets.Value("string"),
            }
        ),
    )
    ds.to_parquet(str(tmp_path / "outside.parquet"))
    hub.put_files(
        "cxr-test/outside",
        {"data/test-00000-of-00001.parquet": (tmp_path / "outside.parquet").read_bytes()},
        repo_type="dataset",
    )
    model = str(REPO / "tests" / "fixtures" / "logreg-model")
    args = [
        PYTHON,
        "-m",
        "cxr.eval",
        "--model",
        model,
        "--data",
        "cxr-test/outside",
        "--output-dir",
        str(tmp_path / "ev"),
    ]
    proc = run_script(
        [*args, "--label-map", "No finding=Normal", "--label-map", "COVID-19=COVID"], env=hub_env(hub, tmp_path, "")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    block = metrics["classes_present"]
    assert block["argmax"]["classes"] == ["COVID", "Normal"] and block["argmax"]["images"] == 7
    north, south = (block["by_source"]["argmax"][s] for s in ("north", "south"))
    assert north["images"] == 4 and south["images"] == 3
    assert north["per_class"]["COVID"]["images"] == 2 and south["per_class"]["Normal"]["images"] == 2
    assert metrics["evaluated"]["data"] == "cxr-test/outside" and SHA.fullmatch(metrics["evaluated"]["revision"])
    refused = run_script([*args, "--label-map", "No finding=Normal"], env=hub_env(hub, tmp_path / "again", ""))
    assert "unknown class name(s): 'COVID-19'" in one_error_line(refused)
