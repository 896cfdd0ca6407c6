"""External validation with ``python -m cxr.eval``: a folder holding some of the classes, under other names, from
several sources — built from real films of the sample and of the external dev set, scored by a real model
(the pixel baseline kept in tests/fixtures), every figure checked against the predictions file it wrote and
scikit-learn."""

import csv
import json
import shutil
from pathlib import Path

import datasets
import pytest
from sklearn.metrics import accuracy_score, recall_score

from cxr.commands.eval import main as eval_main
from cxr.data.data_source import load_data_source
from cxr.data.labelling import Labelling
from cxr.labels import CLASS_NAMES

FIXTURE = Path(__file__).parent / "fixtures" / "logreg-model"


def _link(folder: Path, files) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)


def _rows(out: Path):
    return list(csv.DictReader(open(out / "predictions.csv")))


def _eval(capsys, data: Path, out: Path, *extra: str):
    code = eval_main(["--model", str(FIXTURE), "--data", str(data), "--output-dir", str(out), *extra])
    return code, capsys.readouterr().err


def _check_against_rows(block, rows, column):
    """Every figure of a ``present_metrics`` block reproduced from the CSV rows (and scikit-learn)."""
    y = [r["label"] for r in rows]
    pred = [r[column] for r in rows]
    assert block["images"] == len(rows)
    assert block["classes"] == [c for c in CLASS_NAMES if c in y]
    assert block["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert block["accuracy"]["low"] <= block["accuracy"]["value"] <= block["accuracy"]["high"]
    for c in block["classes"]:
        got = block["per_class"][c]
        assert got["images"] == y.count(c)
        assert got["recall"]["value"] == pytest.approx(recall_score(y, pred, labels=[c], average="macro"))
        assert got["called"] == {k: sum(1 for a, b in zip(y, pred) if a == c and b == k) for k in CLASS_NAMES}
    assert set(block["per_class"]) == set(block["classes"])  # no figure for a class the set does not hold


def test_a_two_class_set_under_other_names_from_two_sources(sample_dir, tmp_path, capsys):
    data = tmp_path / "outside"
    normal = sorted((sample_dir / "Normal").glob("*.png"))
    covid = sorted((sample_dir / "COVID").glob("*.png"))
    _link(data / "hospital-a" / "No finding", normal[:6])
    _link(data / "hospital-a" / "COVID", covid[:4])
    _link(data / "hospital-b" / "No finding" / "images", normal[6:11])
    code, err = _eval(capsys, data, tmp_path / "ev", "--label-map", "No finding=Normal")
    assert code == 0, err
    out = tmp_path / "ev"
    rows = _rows(out)
    assert len(rows) == 15 and {r["label"] for r in rows} == {"Normal", "COVID"}
    block = json.loads((out / "metrics.json").read_text())["classes_present"]
    _check_against_rows(block["argmax"], rows, "prediction")
    _check_against_rows(block["decision"], rows, "decision")
    assert set(block["by_source"]["argmax"]) == {"hospital-a", "hospital-b"}
    for source, part in block["by_source"]["argmax"].items():
        _check_against_rows(part, [r for r in rows if r["file_name"].split("/")[1] == source], "prediction")
    assert block["by_source"]["argmax"]["hospital-b"]["classes"] == ["Normal"]
    report = (out / "report.md").read_text()
    assert "## Over the classes present" in report and "| hospital-b | Normal | 5 |" in report


def test_the_external_dev_set_with_its_metadata_sources(external_dev_dir, tmp_path, capsys):
    data = tmp_path / "dev"
    _link(data / "Normal", sorted((external_dev_dir / "Normal").glob("*.png"))[:12])
    shutil.copy(external_dev_dir / "metadata.csv", data / "metadata.csv")
    code, err = _eval(capsys, data, tmp_path / "ev")
    assert code == 0, err
    rows = _rows(tmp_path / "ev")
    block = json.loads((tmp_path / "ev" / "metrics.json").read_text())["classes_present"]
    _check_against_rows(block["argmax"], rows, "prediction")
    with open(external_dev_dir / "metadata.csv") as f:
        source = next(csv.DictReader(f))["source_repo"]
    assert list(block["by_source"]["argmax"]) == [source]
    assert block["argmax"]["to_normal"] == {}  # only Normal films: nothing to call Normal wrongly


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "unknown class folder(s): 'Pneumonia' (map it with --label-map NAME=CLASS)"),
        (("--label-map", "Pneumonia"), "write NAME=CLASS"),
        (("--label-map", "Pneumonia=Bacterial"), "'Bacterial' is not a class"),
        (("--label-map", "Pneumonia=COVID", "--label-map", "Pneumonia=Normal"), "maps 'Pneumonia' twice"),
    ],
)
def test_names_it_cannot_map_are_refused_in_one_line(sample_dir, tmp_path, capsys, extra, message):
    _link(tmp_path / "data" / "Pneumonia", sorted((sample_dir / "Viral Pneumonia").glob("*.png"))[:2])
    code, err = _eval(capsys, tmp_path / "data", tmp_path / "ev", *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_a_mapped_name_is_scored_as_our_class(sample_dir, tmp_path, capsys):
    _link(tmp_path / "data" / "Pneumonia", sorted((sample_dir / "Viral Pneumonia").glob("*.png"))[:3])
    code, err = _eval(capsys, tmp_path / "data", tmp_path / "ev", "--label-map", "Pneumonia=Viral Pneumonia")
    assert code == 0, err
    rows = _rows(tmp_path / "ev")
    assert {r["label"] for r in rows} == {"Viral Pneumonia"} and all(r["file_name"].startswith("Viral") for r in rows)


def test_a_datasets_layout_with_a_subset_of_classes_and_a_source_column(sample_dir, tmp_path):
    """The loader behind Hub and parquet datasets: the data's own label names mapped, sources from its column."""
    files = sorted((sample_dir / "Normal").glob("*.png"))[:3] + sorted((sample_dir / "COVID").glob("*.png"))[:2]
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
            "label": [0, 0, 0, 1, 1],
            "source": ["site-1", "site-2", "site-1", "site-2", "site-2"],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=["No finding", "COVID-19", "Cardiomegaly"]),
                "source": datasets.Value("string"),
            }
        ),
    )
    root = tmp_path / "parquet"
    root.mkdir()
    ds.to_parquet(str(root / "train-00000-of-00001.parquet"))
    labelling = Labelling.parse(["No finding=Normal", "COVID-19=COVID"], classes=CLASS_NAMES, partial=True)
    got = load_data_source(str(root), labelling=labelling)
    labels = [CLASS_NAMES[k] for k in got.dataset["label"]]
    assert labels == ["Normal"] * 3 + ["COVID"] * 2  # 'Cardiomegaly' is declared but unused: not refused
    assert [got.sources[n] for n in got.dataset["file_name"]] == ["site-1", "site-2", "site-1", "site-2", "site-2"]
    with pytest.raises(Exception, match="unknown class name.*'COVID-19'"):
        load_data_source(str(root), labelling=Labelling.parse(["No finding=Normal"], classes=CLASS_NAMES, partial=True))


def test_training_needs_two_classes_evaluation_any_of_the_models(sample_dir, tmp_path):
    _link(tmp_path / "data" / "Normal", sorted((sample_dir / "Normal").glob("*.png"))[:2])
    with pytest.raises(Exception, match="at least two classes"):
        load_data_source(str(tmp_path / "data"))
    partial = Labelling(classes=CLASS_NAMES, partial=True)
    got = load_data_source(str(tmp_path / "data"), labelling=partial).dataset
    assert got.features["label"].names == list(CLASS_NAMES) and set(got["label"]) == {CLASS_NAMES.index("Normal")}


def test_a_datasets_classlabel_gives_the_training_classes_and_the_map_merges_them(sample_dir, tmp_path):
    """Training's classes from a parquet dataset's ClassLabel: its own names, sorted; --label-map merges two."""
    files = [*sorted((sample_dir / "Normal").glob("*.png"))[:2], *sorted((sample_dir / "COVID").glob("*.png"))[:2]]
    files += sorted((sample_dir / "Viral Pneumonia").glob("*.png"))[:2]
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": f.read_bytes(), "path": f.name} for f in files], "label": [2, 2, 0, 0, 1, 1]},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["Viral", "Bacterial", "No finding"])}
        ),
    )
    root = tmp_path / "parquet"
    root.mkdir()
    ds.to_parquet(str(root / "train-00000-of-00001.parquet"))
    own = load_data_source(str(root)).dataset
    assert own.features["label"].names == ["Bacterial", "No finding", "Viral"]
    assert [own.features["label"].int2str(k) for k in own["label"]] == [
        "No finding", "No finding", "Viral", "Viral", "Bacterial", "Bacterial"
    ]  # fmt: skip
    merged = load_data_source(str(root), labelling=Labelling.parse(["Viral=Pneumonia", "Bacterial=Pneumonia"])).dataset
    assert merged.features["label"].names == ["No finding", "Pneumonia"]
    assert sorted(merged["file_name"])[0].startswith("No finding/") and merged["label"].count(1) == 4
