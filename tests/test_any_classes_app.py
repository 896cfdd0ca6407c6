"""Models of any class set side by side: ``cxr.predict``'s CSV gives each row its own model's classes, and the app
(its board and page handlers, called directly: no server, no browser) shows each model's own classes, decision
rule and recalibration, offers every class to explain, and explains a class a model lacks by its predicted class.

The two-class (Normal, Tuberculosis) and three-class (no negative class) models are tiny pixel baselines saved here
with a seeded head; the four-class one is ``tests/fixtures/logreg-model``."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.app.board import ModelBoard, ShownModel, agreement_line
from cxr.app.examples import choose_examples
from cxr.app.handlers import PREDICTED, PageHandlers
from cxr.app.kept import KeptImages
from cxr.app.upload_guard import StoredUploads
from cxr.commands.predict import main as predict_main
from cxr.data.decode import read_radiograph
from cxr.data.preprocessing import PreprocessConfig
from cxr.labels import Classes
from cxr.models import create_model
from cxr.models.checkpoint import save_model_dir
from cxr.models.classifier import CXRClassifier

FIXTURE = Path(__file__).parent / "fixtures" / "logreg-model"
FOUR = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
TB = ("Normal", "Tuberculosis")
THREE = ("Lung_Opacity", "Normal", "Pneumonia")
SITE = {
    "site": "Hospital B's films",
    "films": 120,
    "critical_films": 40,
    "negative_films": 80,
    "negative_kept_rate": 0.7,
    "guarantee_sentence": "At most 5% of Tuberculosis films called Normal, with 90% confidence.",
    "temperature_refitted": False,
    "date": "2024-01-01",
    "note": "",
}


def _save(folder: Path, names, negative="auto", seed=0, extra=None) -> str:
    """A 24 px pixel-baseline model of class ``names`` with a seeded non-trivial head; ``extra`` goes into its
    config's ``cxr`` block (an operating point, a recalibration)."""
    model, _ = create_model("logreg", len(names), pretrained=False, image_size=24)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.get_classifier().parameters():
            p.normal_(0, 0.05)
    cfg = model.pretrained_cfg
    prep = PreprocessConfig.create(24, cfg["input_size"][0], "model", cfg["mean"], cfg["std"], label_names=names)
    out = save_model_dir(model, folder, prep, {"model": "logreg"}, screening=Classes.resolve(names, negative))
    if extra:
        config = json.loads((out / "config.json").read_text())
        config["cxr"].update(extra)
        (out / "config.json").write_text(json.dumps(config))
    return str(out)


@pytest.fixture(scope="module")
def tb_model(tmp_path_factory) -> str:
    """Normal vs Tuberculosis, deciding Normal only when P(Normal) ≥ 0.6, recalibrated at another hospital."""
    op = {"normal_threshold": 0.6, "max_missed_rate": 0.05}
    return _save(tmp_path_factory.mktemp("tb") / "model", TB, extra={"operating_point": op, "recalibration": SITE})


@pytest.fixture(scope="module")
def three_model(tmp_path_factory) -> str:
    """Three classes and no negative class: argmax."""
    return _save(tmp_path_factory.mktemp("three") / "model", THREE, negative="none", seed=1)


@pytest.fixture(scope="module")
def films(sample_dir):
    return [sorted((sample_dir / c).glob("*.png"))[0] for c in FOUR]


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# --- cxr.predict ------------------------------------------------------------------------------------------------


def test_four_class_models_keep_the_fixed_columns(films, tmp_path):
    out = tmp_path / "p.csv"
    assert predict_main([str(films[0]), "--model", str(FIXTURE), "--output", str(out)]) == 0
    assert out.read_text().splitlines()[0] == (
        "file,model,prediction,decision,p_COVID,p_Lung_Opacity,p_Normal,p_Viral Pneumonia,"
        "out_of_distribution,warnings,error"
    )


def test_a_two_class_model_alone_writes_its_own_columns(films, tb_model, tmp_path):
    out = tmp_path / "p.csv"
    assert predict_main([str(films[0]), "--model", tb_model, "--output", str(out)]) == 0
    header, row = _rows(out)
    assert header[4:6] == ["p_Normal", "p_Tuberculosis"] and len(header) == 9
    assert row[2] in TB and row[4] and row[5]


def test_rows_of_models_of_different_classes_each_give_their_own_models_classes(films, tb_model, tmp_path):
    out = tmp_path / "p.csv"
    args = [*map(str, films), "--model", str(FIXTURE), "--model", tb_model, "--output", str(out)]
    assert predict_main(args) == 0
    header, *rows = _rows(out)
    probs = [c[2:] for c in header if c.startswith("p_")]
    assert probs == [*FOUR, "Tuberculosis"]  # the union, in first-seen order
    assert header[:4] == ["file", "model", "prediction", "decision"]
    assert header[4 + len(probs) :] == ["out_of_distribution", "warnings", "error"]
    assert len(rows) == 2 * len(films)
    classifiers = {
        str(FIXTURE): CXRClassifier.from_pretrained(FIXTURE),
        tb_model: CXRClassifier.from_pretrained(tb_model),
    }
    for row in rows:
        entry = dict(zip(header, row))
        clf = classifiers[entry["model"]]
        own = clf.label_names
        assert entry["error"] == ""
        # the row's own classes filled in, every other class blank
        assert [c for c in probs if entry[f"p_{c}"] != ""] == [c for c in probs if c in own], entry
        p = np.array([float(entry[f"p_{c}"]) for c in own])
        expected = clf.predict_proba([read_radiograph(entry["file"])[0]])[0]
        assert np.abs(p - expected).max() < 2e-6
        assert entry["prediction"] == own[int(p.argmax())]
        assert entry["decision"] in own
        if clf.source == tb_model:  # its own rule: Normal only when P(Normal) ≥ 0.6
            assert entry["decision"] == ("Normal" if p[0] >= 0.6 else "Tuberculosis"), entry


# --- the app ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def board(tb_model, three_model):
    refs = [str(FIXTURE), tb_model, three_model]
    return ModelBoard([ShownModel(ref, CXRClassifier.from_pretrained(ref)) for ref in refs])


def _handlers(board):
    return PageHandlers(board, KeptImages(64 << 20, 60), StoredUploads())


def _page(board, film, explain):
    """The page's last streamed outputs: (status, per-model probabilities, heat maps, agreement, decisions)."""
    *_, last = _handlers(board).stream(str(film), "GradCAM", explain)
    n = len(board.models)
    status, _shown, *rest = last[:-1]
    return status, rest[:n], rest[n : 2 * n], rest[2 * n], rest[2 * n + 1 :]


def test_the_board_offers_every_class_of_its_models_once_in_a_stable_order(board):
    assert board.class_names == [*FOUR, "Tuberculosis", "Pneumonia"]
    assert not board.same_classes
    four = ModelBoard([board.models[0]])
    assert four.class_names == list(FOUR) and four.same_classes


def test_each_column_shows_its_own_classes_and_decision(board, films):
    status, probabilities, heatmaps, agreement, decisions = _page(board, films[2], PREDICTED)
    assert "⚠" not in status
    assert [sorted(p) for p in probabilities] == [sorted(FOUR), sorted(TB), sorted(THREE)]
    assert all(h is not None for h in heatmaps)
    four, tb, three = decisions
    assert four.startswith("**Decision: ") and "Grad-CAM" not in four
    tb_probs = probabilities[1]
    called = "Normal" if tb_probs["Normal"] >= 0.6 else "Tuberculosis"
    assert tb.startswith(f"**Decision: {called}** (Normal only when P(Normal) ≥ 0.600)"), tb
    assert three.startswith(f"**Decision: {max(probabilities[2], key=probabilities[2].get)}** (argmax"), three
    assert "different classes" in agreement


def test_explaining_a_class_one_model_lacks_explains_its_predicted_class_and_says_so(board, films):
    film = films[0]
    status, probabilities, heatmaps, _, decisions = _page(board, film, "Tuberculosis")
    assert "failed" not in status and all(h is not None for h in heatmaps), status
    four_predicted = max(probabilities[0], key=probabilities[0].get)
    assert f"no class Tuberculosis; its heat map explains its predicted class, {four_predicted}" in decisions[0]
    assert "no class" not in decisions[1]  # the two-class model has it
    assert "no class Tuberculosis" in decisions[2]
    # the four-class model's map is its predicted class's; the two-class model's is Tuberculosis's
    _, _, predicted_maps, _, _ = _page(board, film, PREDICTED)
    assert np.array_equal(heatmaps[0], predicted_maps[0])
    analysis = list(board.analyse(str(film), "GradCAM", "Tuberculosis"))[-1]
    assert analysis.explained == {
        board.models[0].ref: four_predicted,
        board.models[1].ref: "Tuberculosis",
        board.models[2].ref: max(probabilities[2], key=probabilities[2].get),
    }
    tb_predicted = max(probabilities[1], key=probabilities[1].get)
    if tb_predicted != "Tuberculosis":
        assert not np.array_equal(heatmaps[1], predicted_maps[1])


def test_the_api_answers_give_each_model_its_classes_and_what_its_heat_map_explains(board, films):
    handlers = _handlers(board)
    answer, gallery = handlers.predict(str(films[1]), "GradCAM", "COVID")
    assert answer["error"] is None and len(gallery) == 3
    four, tb, three = (answer["models"][m.ref] for m in board.models)
    assert set(four["probabilities"]) == set(FOUR) and four["explained"] == "COVID"
    assert set(tb["probabilities"]) == set(TB) and tb["explained"] == tb["predicted"]
    assert tb["decision_rule"] == "Normal only when P(Normal) ≥ 0.600" and tb["decision"] in TB
    assert three["decision_rule"].startswith("argmax") and three["decision"] == three["predicted"]
    classified = handlers.classify(str(films[1]))
    assert {ref: set(e["probabilities"]) for ref, e in classified["models"].items()} == {
        board.models[0].ref: set(FOUR),
        board.models[1].ref: set(TB),
        board.models[2].ref: set(THREE),
    }


def test_the_page_offers_every_class_and_shows_a_recalibrated_models_site(board):
    import gradio as gr

    from cxr.app.page import build_demo

    demo = build_demo(board, StoredUploads())
    (explain,) = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Explain"]
    assert [value for _, value in explain.choices] == [PREDICTED, *FOUR, "Tuberculosis", "Pneumonia"]
    texts = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and isinstance(b.value, str)]
    (tb_header,) = [t for t in texts if "Classes: Normal, Tuberculosis" in t]
    assert (
        "Operating point set for Hospital B's films (120 films): At most 5% of Tuberculosis films called Normal, "
        "with 90% confidence." in tb_header
    )
    assert "Decision: Normal only when P(Normal) ≥ 0.600" in tb_header
    assert sum("Operating point set for" in t for t in texts) == 1  # only the recalibrated model
    labels = sorted(b.num_top_classes for b in demo.blocks.values() if isinstance(b, gr.Label))
    assert labels == [2, 3, 4]
    # models of the database's four classes: the page as it was (the four to explain, no list of classes)
    four = build_demo(ModelBoard([board.models[0]]), StoredUploads())
    (explain,) = [b for b in four.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Explain"]
    assert [value for _, value in explain.choices] == [PREDICTED, *FOUR]
    assert not any(isinstance(b, gr.Markdown) and "Classes:" in str(b.value) for b in four.blocks.values())


def test_the_agreement_line_compares_models_of_different_classes_by_name_only():
    four = {"COVID": 0.1, "Lung_Opacity": 0.1, "Normal": 0.7, "Viral Pneumonia": 0.1}
    four_covid = {"COVID": 0.7, "Lung_Opacity": 0.1, "Normal": 0.1, "Viral Pneumonia": 0.1}
    normal, tb = {"Normal": 0.8, "Tuberculosis": 0.2}, {"Normal": 0.1, "Tuberculosis": 0.9}
    # one class set: the sentences as they were
    assert agreement_line({"a": four, "b": dict(four)}) == "All 2 models agree: **Normal**."
    assert agreement_line({"a": four, "b": four_covid}) == "The models disagree: 1 say **Normal**, 1 say **COVID**."
    # different class sets: by name, and said so
    assert agreement_line({"a": four, "b": normal}) == (
        "All 2 models agree: **Normal** (the models have different classes: only class names are compared)."
    )
    assert agreement_line({"a": four_covid, "b": tb}) == (
        "The models disagree: 1 say **COVID**, 1 say **Tuberculosis** (the models have different classes: only "
        "class names are compared; COVID and Tuberculosis are not a class of every model)."
    )
    assert agreement_line({"a": four, "b": tb, "c": normal}).startswith("The models disagree: 2 say **Normal**")


# --- example films ----------------------------------------------------------------------------------------------


def test_examples_come_from_whatever_class_folders_the_folder_has(tmp_path, sample_dir):
    folder = tmp_path / "tb-films"
    for name, source in (("Normal", "Normal"), ("Tuberculosis", "COVID")):
        (folder / name).mkdir(parents=True)
        for film in sorted((sample_dir / source).glob("*.png"))[:2]:
            shutil.copy(film, folder / name / film.name)
    choice = choose_examples(folder, {})
    assert [e.true_class for e in choice.examples] == ["Normal", "Tuberculosis"] and choice.problems == []
    assert all(e.file_name.startswith(e.true_class + "/") for e in choice.examples)
    only = choose_examples(folder, {}, classes=["Tuberculosis", "COVID"])
    assert [e.true_class for e in only.examples] == ["Tuberculosis"]


def test_a_spaces_examples_are_one_film_of_every_class_its_models_have(tmp_path, sample_dir, tb_model):
    from cxr.commands.hub import _space_examples
    from cxr.data.splits import save_split
    from cxr.errors import CXRError

    model = tmp_path / "tb" / "model"
    shutil.copytree(tb_model, model)
    save_split(model / "split.json", {"train": [], "validation": [], "test": []}, seed=1)  # it saw none of them
    folder = tmp_path / "films"
    for name, source in (("COVID", "COVID"), ("Normal", "Normal"), ("Tuberculosis", "Viral Pneumonia")):
        (folder / name).mkdir(parents=True)
        for film in sorted((sample_dir / source).glob("*.png"))[:2]:
            shutil.copy(film, folder / name / film.name)
    chosen = _space_examples(str(folder), [str(model)])
    # the model's two classes, one film each; the folder's COVID films are not a class of it
    assert [name.split("/")[0] for name, _ in chosen] == ["Normal", "Tuberculosis"]
    shutil.rmtree(folder / "Tuberculosis")
    with pytest.raises(CXRError, match="no Tuberculosis film"):
        _space_examples(str(folder), [str(model)])
