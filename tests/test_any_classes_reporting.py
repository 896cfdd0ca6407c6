"""The reports, card, CV report and figures of a model of any classes name its own classes, never the database's.

Two class sets, on small synthetic predictions (no training): ``Normal`` / ``Tuberculosis`` (negative Normal,
critical Tuberculosis) and ``A`` / ``B`` / ``C`` with no negative class (argmax, no called-negative figures). The
database's class names must not appear in anything rendered for them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cxr.labels import DATABASE, Classes
from cxr.metrics import compute_metrics
from cxr.metrics.operating_point import choose_operating_point, decide, decision_metrics
from cxr.metrics.present import present_metrics, present_metrics_by_source

TB = Classes.resolve(["Normal", "Tuberculosis"])
ABC = Classes.resolve(["A", "B", "C"], "none")
#: Database class names (and the study's abbreviations) none of these reports may print.
DATABASE_WORDS = ("COVID", "Viral Pneumonia", "Lung_Opacity", "Viral Pn", "Lung Op", "Pneumonia", "Opacity")


def _no_database_words(text: str, classes: Classes) -> None:
    for word in DATABASE_WORDS:
        assert word not in text, f"{word!r} in a report of {classes.names}"
    if "Normal" not in classes.names:
        assert "Normal" not in text
        assert "None" not in text  # a missing negative class never printed as "None"


def _predictions(classes: Classes, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(classes)
    p = rng.dirichlet(np.ones(len(classes)), size=n)
    p[np.arange(n), y] += 0.6 * rng.random(n)  # informative but imperfect
    return y, p / p.sum(axis=1, keepdims=True)


def _metrics(classes: Classes) -> dict:
    """A ``metrics.json`` as a run of ``classes`` writes it (test, decision, classes present, validation)."""
    y, p = _predictions(classes)
    vy, vp = _predictions(classes, seed=1)
    op = choose_operating_point(vy, vp, classes, 0.1, "60 synthetic validation films")
    threshold = None if op is None else op.normal_threshold
    pred = {"argmax": p.argmax(axis=1), "decision": decide(p, threshold, classes)}
    sources = ["site-1" if i % 2 else "site-2" for i in range(len(y))]
    present = {rule: present_metrics(y, d, classes, n_resamples=20) for rule, d in pred.items()}
    present["by_source"] = {
        rule: present_metrics_by_source(y, d, sources, classes, n_resamples=20) for rule, d in pred.items()
    }
    return {
        "classes": classes.to_dict(),
        "test": compute_metrics(y, p, classes),
        "validation": compute_metrics(vy, vp, classes),
        "train": {"accuracy": 0.9},
        "decision": decision_metrics(y, p, op, classes),
        "classes_present": present,
        "kept_epoch": 3,
        "keep": "best",
        "_op": op,
        "_y": y,
        "_p": p,
    }


@pytest.fixture(scope="module")
def runs():
    return {classes.names: _metrics(classes) for classes in (TB, ABC)}


def _record(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def _report(tmp_path: Path, metrics: dict, **kwargs) -> str:
    from cxr.reporting.run_report import write_report

    path = tmp_path / "report.md"
    write_report(path, "logreg", _record(metrics), {"data": "synthetic"}, **kwargs)
    return path.read_text()


def test_the_report_of_a_two_class_model_names_its_classes_and_question(runs, tmp_path):
    metrics = runs[TB.names]
    text = _report(tmp_path, metrics)
    _no_database_words(text, TB)
    assert metrics["_op"] is not None
    assert f"Decision rule: **{metrics['_op'].rule}**" in text and "P(Normal)" in text
    assert "| on the test films | Tuberculosis called Normal | Normal films kept Normal | accuracy |" in text
    assert "the fewest Tuberculosis films called Normal" in text
    assert metrics["decision"]["guarantee_sentence"] in text and "Tuberculosis films" in text
    assert "| Tuberculosis | " in text and "| Normal | " in text
    assert "| model | measured on | train acc | test acc | Tuberculosis→Normal |" in text
    # logreg is a study model, but the study's four-class figures do not compare with a two-class model
    assert "(study)" not in text and "study precision" not in text and "Table 1 (the study's layout)" not in text
    assert "called (argmax): Normal / Tuberculosis | called Normal by the decision |" in text
    assert "| site-1 | Tuberculosis |" in text
    assert "Tuberculosis predicted as Normal:" in text  # the validation section


def test_the_report_of_classes_without_a_negative_says_argmax_and_has_no_called_columns(runs, tmp_path):
    metrics = runs[ABC.names]
    assert metrics["_op"] is None
    text = _report(tmp_path, metrics)
    _no_database_words(text, ABC)
    assert "no negative class" in text and "argmax" in text
    assert "| A | " in text and "| B | " in text and "| C | " in text
    assert "called (argmax): A / B / C |" in text
    assert "called by the decision" not in text and "called A" not in text and "→" not in text
    assert "| model | measured on | train acc | test acc |\n" in text
    validation = text.split("## Validation")[1]
    assert "Accuracy " in validation and "predicted as" not in validation  # no called-negative count


def test_classes_passed_override_the_record(runs, tmp_path):
    """The ``classes`` argument names the classes; a record without ``classes`` is the database's."""
    record = _record(runs[TB.names])
    from cxr.reporting.run_report import table1_lines

    assert "Tuberculosis→Normal" in table1_lines("m", record)[0]
    assert table1_lines("m", {k: v for k, v in record.items() if k != "classes"}, TB)[0] == table1_lines("m", record)[0]


def test_tables_follow_the_classes():
    from cxr.reporting.tables import TABLE1_HEADER, per_class_lines, table1_header, table1_row, to_negative_columns

    assert table1_header(DATABASE) == TABLE1_HEADER
    assert table1_header(TB) == [
        "| model | measured on | train acc | test acc | Tuberculosis→Normal |",
        "|---|---|---|---|---|",
    ]
    assert table1_header(ABC) == ["| model | measured on | train acc | test acc |", "|---|---|---|---|"]
    assert to_negative_columns(ABC) == ()
    assert table1_row("x", "9 test images", None, 0.5, {}, ABC) == "| x | 9 test images | – | 50.00% |"
    split = {"per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 3} for c in TB.names}}
    lines = per_class_lines("logreg", split, TB)
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| Normal", "| Tuberculosis"]
    assert "study" not in "\n".join(lines)
    _no_database_words("\n".join(lines), TB)


def test_run_facts_name_the_question():
    from cxr.reporting.run_facts import classes_line, kept_description

    assert "Tuberculosis images predicted as Normal" in kept_description({"kept_epoch": 2}, TB)
    assert kept_description({"kept_epoch": 2}, ABC) == "epoch 2, the best on validation (accuracy)"
    assert "COVID + Viral Pneumonia" in kept_description({"kept_epoch": 2})  # an older record: the database's
    assert classes_line(ABC).startswith("A, B, C (output order); no negative class")


def _cv_record(classes: Classes) -> dict:
    from cxr.reporting.cv_report import negative_key, recall_key

    def stat(v):
        return {"value": v, "low": v * 0.8, "high": v * 1.2 if v > 1 else min(v * 1.2, 1.0)}

    headline = {"accuracy": 0.9, "macro_auroc": 0.95, "ece": 0.03}
    headline.update({recall_key(c): 0.8 for c in classes.critical or classes.names})
    headline.update({negative_key(c): 2 for c in classes.names if classes.negative and c != classes.negative})
    oof = {k: stat(v) for k, v in headline.items()}
    oof["ece"]["if_calibrated"] = {"median": 0.02, "p95": 0.04}
    per_fold = [
        {
            "fold": k,
            "images": 20,
            **headline,
            "kept_epoch": 3,
            "temperature": 1.2,
            "normal_threshold": 0.9 if classes.negative else None,
            "errors_figure": f"fold-{k}/errors.png",
        }
        for k in range(2)
    ]
    recipe = {
        "model": "logreg",
        "data": "synthetic",
        "image_size": 64,
        "optimizer": "adam",
        "lr": 0.001,
        "lr_scheduler": "constant",
        "batch_size": 8,
        "epochs": 2,
        "seed": 1,
    }
    return {
        "classes": classes.to_dict(),
        "folds": 2,
        "images": 40,
        "seed": 1,
        "bootstrap_resamples": 20,
        "recipe": recipe,
        "out_of_fold": oof,
        "per_fold": per_fold,
    }


def test_the_cv_report_follows_the_cv_classes():
    from cxr.reporting.cv_report import render_cv_report

    text = render_cv_report(_cv_record(TB))
    _no_database_words(text, TB)
    assert "| Tuberculosis → Normal | 2 | 2 – 2 |" in text and "| Tuberculosis recall | 80.0% |" in text
    assert "| Tuberculosis → Normal |" in text.split("Per fold:")[1] and "| Normal threshold |" in text
    assert "Tuberculosis called Normal first" in text

    text = render_cv_report(_cv_record(ABC))
    _no_database_words(text, ABC)
    assert "→" not in text and "threshold" not in text
    assert "| A recall | B recall | C recall |" in text and "most confident first" in text


def test_the_cv_report_of_an_older_record_is_the_database_one():
    from cxr.reporting.cv_report import render_cv_report

    record = _cv_record(DATABASE)
    del record["classes"]
    text = render_cv_report(record)
    assert "| COVID → Normal |" in text and "| Viral Pn. → Normal |" in text and "| Lung_Opacity → Normal |" in text
    assert "COVID and Viral Pneumonia called Normal first" in text


def _svg_text(draw, path: Path) -> str:
    """The text a figure drew: saved as SVG with its text kept as text."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        draw(path)
    return path.read_text()


@pytest.mark.parametrize("classes", [TB, ABC], ids=["two-classes", "no-negative"])
def test_the_confusion_matrix_is_labelled_with_the_classes(runs, tmp_path, classes):
    from cxr.reporting.plots import plot_confusion_matrix

    cm = runs[classes.names]["test"]["confusion_matrix"]
    svg = _svg_text(lambda p: plot_confusion_matrix(p, cm, classes, title="synthetic"), tmp_path / "cm.svg")
    for name in classes.names:
        assert f">{name}<" in svg
    _no_database_words(svg, classes)
    with pytest.raises(ValueError, match="3 classes"):
        plot_confusion_matrix(tmp_path / "bad.png", [[1, 0], [0, 1]], ABC)


def test_the_operating_point_plot_names_the_negative_and_critical_classes(runs, tmp_path):
    from cxr.reporting.plots import plot_operating_point

    m = runs[TB.names]
    svg = _svg_text(lambda p: plot_operating_point(p, m["_y"], m["_p"], m["_op"], "test"), tmp_path / "op.svg")
    assert "Tuberculosis called Normal" in svg and "P(Normal)" in svg and "Normal films flagged" in svg
    _no_database_words(svg, TB)


@pytest.mark.parametrize("classes", [TB, ABC], ids=["two-classes", "no-negative"])
def test_the_error_gallery_title_follows_the_classes(tmp_path, classes):
    from cxr.reporting.plots import plot_error_gallery

    image = np.zeros((8, 8, 3), dtype=np.uint8)
    entries = [(image, f"f{i}\ntrue {classes.names[-1]} → {classes.names[0]}", i == 0) for i in range(2)]
    svg = _svg_text(lambda p: plot_error_gallery(p, entries, 5, classes, title="synthetic"), tmp_path / "e.svg")
    assert ("Tuberculosis called Normal first" if classes is TB else "most confident first") in svg
    _no_database_words(svg, classes)


def test_errors_order_critical_called_negative_first():
    from cxr.training.evaluation import order_errors

    labels = np.array([0, 1, 1, 0, 1])
    decisions = np.array([1, 0, 1, 1, 0])
    probs = np.array([[0.1, 0.9], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.9, 0.1]])
    # Tuberculosis films called Normal (positions 4, then 1: the more confident first), then the others
    assert order_errors(labels, decisions, probs, TB) == [4, 1, 0, 3]
    # no negative class: only by confidence
    assert order_errors(labels, decisions, probs, Classes.resolve(["X", "Y"], "none")) == [0, 4, 3, 1]


def _run_folder(root: Path, classes: Classes, metrics: dict, recalibration: dict = None) -> Path:
    """A finished run's records, as a model card reads them."""
    root.mkdir()
    (root / "model").mkdir()
    (root / "metrics.json").write_text(json.dumps(_record(metrics)))
    split = {"seed": 1, "train": ["a"] * 40, "validation": ["b"] * 60, "test": ["c"] * 60}
    (root / "split.json").write_text(json.dumps(split))
    recipe = {"model": "logreg", "data": "/data/tb-films", "optimizer": "adam", "lr": 0.001}
    recipe.update(lr_scheduler="constant", batch_size=8, epochs=2, seed=1)
    run = {
        "config": recipe,
        "parameters": 1000,
        "trainable_parameters": 1000,
        "train_layers": "all",
        "pretrained": "none (trained from scratch)",
        "versions": {"python": "3"},
        "data_source": {"kind": "folder", "path": "/data/tb-films", "images": 160},
    }
    (root / "run_config.json").write_text(json.dumps(run))
    cxr = {
        "preprocessing": {"image_size": 64, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "norm": "model"},
        "run_id": "abc",
        "temperature": 1.5,
        "screening": classes.to_config(),
        "operating_point": None if metrics["_op"] is None else metrics["_op"].to_config(),
    }
    if recalibration:
        cxr["recalibration"] = recalibration
    config = {"architecture": "logreg", "label_names": list(classes.names), "cxr": cxr}
    (root / "model" / "config.json").write_text(json.dumps(config))
    return root


def _eval_folder(root: Path, metrics: dict) -> Path:
    root.mkdir()
    record = {k: _record(metrics)[k] for k in ("classes", "test", "decision", "classes_present")}
    (root / "metrics.json").write_text(json.dumps({**record, "evaluated": {"data": "site-x films", "run_id": "abc"}}))
    return root


def test_the_model_card_of_a_two_class_model(runs, tmp_path):
    from cxr.reporting.model_card import render_model_card

    metrics = runs[TB.names]
    run = _run_folder(tmp_path / "run", TB, metrics)
    card = render_model_card(run, "org/tb", eval_dirs=[_eval_folder(tmp_path / "ev", metrics)])
    text = str(card)
    flat = " ".join(text.split())
    _no_database_words(text.replace("COVID-19", ""), TB)  # the citations and the DeGrave paper name COVID-19
    assert "sorts chest X-rays into `Normal` and `Tuberculosis`" in flat
    assert "negative class `Normal`, critical class(es) `Tuberculosis`" in flat
    assert f"**Decision (operating point):** {metrics['_op'].rule}" in flat
    assert metrics["decision"]["guarantee_sentence"] in flat
    assert "Tuberculosis called Normal" in flat and "Normal films kept Normal" in flat
    assert "{'Normal': ..., 'Tuberculosis': ...}" in text
    assert "| Tuberculosis | " in text and "(study)" not in text and "The study's layout" not in text
    bias = flat.split("## Bias, risks and limitations")[1].split("## Training data")[0]
    assert "RSNA" not in bias and "Kermany" not in bias and "DeGrave" in bias  # not the database's source table
    assert "called Normal" in flat.split("## External validation")[1]
    assert {r.metric_config for r in card.data.eval_results if r.metric_type == "recall"} == {"Normal", "Tuberculosis"}
    assert "covid-19" not in card.data.tags
    assert "Recalibrated for a site" not in text


def test_the_model_card_without_a_negative_class(runs, tmp_path):
    from cxr.reporting.model_card import render_model_card

    metrics = runs[ABC.names]
    card = render_model_card(
        _run_folder(tmp_path / "run", ABC, metrics), "org/abc", eval_dirs=[_eval_folder(tmp_path / "ev", metrics)]
    )
    text = str(card)
    flat = " ".join(text.split())
    _no_database_words(text.replace("COVID-19", ""), ABC)
    assert "No negative class" in flat and "argmax" in flat
    assert "called" not in re.sub(
        r"\(not called|calls", "", flat.split("## External validation")[1].split("For scale")[0]
    )


def test_the_model_card_of_a_recalibrated_model(runs, tmp_path):
    from cxr.reporting.model_card import render_model_card

    metrics = runs[TB.names]
    recalibration = {
        "site": "films of hospital B (2024)",
        "films": 212,
        "critical_films": 61,
        "negative_films": 151,
        "negative_kept_rate": 0.4238,
        "guarantee_sentence": "Guaranteed: expected share of Tuberculosis films called Normal ≤ 1.6% (site).",
        "temperature_refitted": False,
        "date": "2025-01-02",
        "note": "",
    }
    text = str(render_model_card(_run_folder(tmp_path / "run", TB, metrics, recalibration), "org/tb"))
    flat = " ".join(text.split())
    section = flat.split("## Recalibrated for a site")[1].split("## Intended use")[0]
    assert "films of hospital B (2024): 212 films, 61 of them Tuberculosis and 151 Normal (2025-01-02)" in section
    assert recalibration["guarantee_sentence"] in section
    assert "42.38% of them" in section and "Normal films kept Normal there" in section
    assert "The weights are the original model's" in section and "temperature is the original one" in section
    assert metrics["_op"].rule in section
    _no_database_words(text.replace("COVID-19", ""), TB)
