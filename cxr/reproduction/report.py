"""``study.md``, ``study.json`` and the study's figures, written from :func:`cxr.reproduction.analysis.analyse_study`.

Figures: ``reliability.png`` (reliability diagrams before/after temperature scaling, one panel per
run) and ``gradcam_grid.png`` (the paper's Table 6 as one figure: test images of each class, the
original beside every run's Grad-CAM, computed with the app's code).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from cxr.app.board import ModelBoard
from cxr.data.decode import read_radiograph
from cxr.data.folders import scan_image_folder
from cxr.labels import CLASS_NAMES, CRITICAL_CLASSES, DISCLAIMER
from cxr.models.cam import CamSession, overlay_heatmap
from cxr.models.classifier import CXRClassifier
from cxr.reporting.study_reference import STUDY_PER_CLASS, STUDY_SOURCE, STUDY_TABLE1
from cxr.reporting.tables import TABLE1_HEADER, interval, pct, per_class_lines, study_table1_row, table1_row
from cxr.run_folder import PREDICTION_PARTS, RunFolder, read_json

__all__ = ["write_study_report", "plot_reliability", "plot_gradcam_grid"]

_logger = logging.getLogger(__name__)


def _table1(result: Dict[str, Any]) -> List[str]:
    n = next(iter(result["runs"].values()))["test"]["num_images"]
    ours = [
        table1_row(
            f"{name} (ours)", f"{n} test images", r["train_accuracy"], r["test"]["accuracy"], r["test"]["to_normal"]
        )
        for name, r in result["runs"].items()
    ]
    return [*TABLE1_HEADER, *ours, *(study_table1_row(row, "paper") for row in STUDY_TABLE1.values())]


def _per_class_tables(result: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    for i, (name, r) in enumerate(result["runs"].items(), start=2):
        arch = next(a["model"] for a in result["arms"] if a["name"] == name)
        # the paper's columns only beside the run that reproduces its setting (not -clahe / -scratch variants)
        lines += [f"**Table {i}: {name}**", "", *per_class_lines(arch if name == arch else name, r["test"]), ""]
        if name == arch and arch in STUDY_PER_CLASS:
            lines += [
                "The paper printed its precision and recall swapped (it divided by the true counts); its "
                "columns here are corrected.",
                "",
            ]
    return lines


def plot_reliability(path: Path, result: Dict[str, Any]) -> None:
    """Reliability diagrams, before and after temperature scaling, one panel per run."""
    import matplotlib  # matplotlib loads only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib loads only when a figure is drawn

    runs = result["runs"]
    cols = min(4, len(runs))
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.3 * rows), dpi=110, squeeze=False)
    for ax, (name, r) in zip(axes.flat, runs.items()):
        cal = r["calibration"]
        for key, colour, label in (
            ("reliability_before", "tab:red", "before"),
            ("reliability_after", "tab:blue", "after T"),
        ):
            b = cal[key]
            centres = (np.array(b["edges"][:-1]) + np.array(b["edges"][1:])) / 2
            used = np.array(b["count"]) > 0
            ax.plot(
                centres[used],
                np.array(b["accuracy"])[used],
                "o-",
                color=colour,
                ms=3,
                label=f"{label} (ECE {cal['ece_test_before' if key.endswith('before') else 'ece_test_after']:.3f})",
            )
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set_title(f"{name} (T = {cal['temperature']:.2f})", fontsize=9)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    fig.suptitle(
        "Reliability on the test set, before and after temperature scaling (fitted on validation)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_gradcam_grid(path: Path, run_dirs: Dict[str, Path], images: List[Path], method: str = "GradCAM") -> None:
    """The paper's Table 6 as one figure: each image, then each run's Grad-CAM for its predicted class."""
    import matplotlib  # matplotlib loads only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib loads only when a figure is drawn

    classifiers = {name: CXRClassifier.from_pretrained(RunFolder(d).model_dir) for name, d in run_dirs.items()}
    fig, axes = plt.subplots(
        len(images),
        1 + len(classifiers),
        figsize=(2.1 * (1 + len(classifiers)), 2.3 * len(images)),
        dpi=100,
        squeeze=False,
    )
    for row, img_path in enumerate(images):
        image, _ = read_radiograph(img_path)
        shown = ModelBoard.shown_image(image)
        axes[row, 0].imshow(shown, cmap="gray")
        axes[row, 0].set_title(f"{img_path.parent.name}\n{img_path.name}", fontsize=7)
        for col, (name, clf) in enumerate(classifiers.items(), start=1):
            with CamSession(clf, method) as session:  # one forward for the prediction and its map
                probs = dict(zip(clf.label_names, map(float, session.probabilities(image))))
                cam = session.heatmap()
            pred = max(probs, key=probs.get)
            axes[row, col].imshow(overlay_heatmap(shown, cam))
            axes[row, col].set_title(
                f"{name}\n→ {pred} ({probs[pred]:.2f})",
                fontsize=7,
                color="black" if pred == img_path.parent.name else "red",
            )
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{method} for each run's predicted class (red: wrong) — {DISCLAIMER}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cam_images(result: Dict[str, Any], data: str, out: Path, per_class: int) -> List[Path]:

    split = read_json(RunFolder(out).split)
    paths = {name: path for path, name, _ in scan_image_folder(data)}
    chosen = [n for c in CLASS_NAMES for n in [n for n in split["test"] if n.startswith(c + "/")][:per_class]]
    return [paths[n] for n in chosen if n in paths]


#: The files a study folder holds besides its runs.
STUDY_JSON, STUDY_MD, RELIABILITY_PNG, GRADCAM_PNG = "study.json", "study.md", "reliability.png", "gradcam_grid.png"


def write_study_report(out: Path, result: Dict[str, Any], cam_images_per_class: int = 2, data: str = "") -> None:
    """Write ``study.json``, ``study.md``, ``reliability.png`` and (for folder data) ``gradcam_grid.png``."""
    out = Path(out)
    (out / STUDY_JSON).write_text(json.dumps(result, indent=1) + "\n")
    plot_reliability(out / RELIABILITY_PNG, result)
    images = _cam_images(result, data, out, cam_images_per_class) if data and Path(data).is_dir() else []
    if images:
        plot_gradcam_grid(out / GRADCAM_PNG, {a["name"]: out / a["name"] for a in result["arms"]}, images)
    sections = [
        _overview(result),
        _table1_section(result),
        _uncertainty(result),
        _calibration(result),
        _scratch_comparison(result),
        _clahe_comparison(result),
        _gradcam_section() if images else [],
        _source_audit(result.get("source_audit")),
        _notes(),
    ]
    (out / STUDY_MD).write_text("\n".join(line for section in sections for line in section))


def _overview(result: Dict[str, Any]) -> List[str]:
    example = RunFolder("<run>")
    files = ", ".join(f"`{example.predictions(p).relative_to(example.root.parent)}`" for p in PREDICTION_PARTS)
    n = result["split"]
    return [
        "# The study, reproduced: one split, every model",
        "",
        f"**{DISCLAIMER}** Every number below is recomputed from the runs' saved predictions ({files}) by "
        "`cxr.reproduction.analysis`.",
        "",
        f"- Command preset: `{result['preset']}` — {result['preset_note']}",
        f"- Data: {result['data']}; split (seed 1, stratified): {n['train']} / {n['validation']} / {n['test']} "
        f"(train / validation / test), `{RunFolder('.').split.name}`.",
        "- Runs: "
        + "; ".join(f"`{a['name']}`" + (f" ({a['note']})" if a["note"] else "") for a in result["arms"])
        + ".",
        f"- Paper rows: {STUDY_SOURCE}. Different test sets: compare directions, not decimals.",
        "",
    ]


def _table1_section(result: Dict[str, Any]) -> List[str]:
    return [
        "## Table 1",
        "",
        "Counts are test images of each class predicted as Normal; the primary aim is the fewest COVID and "
        "Viral Pneumonia images called Normal.",
        "",
        *_table1(result),
        "",
        "## Tables 2–%d: per class (test)" % (1 + len(result["runs"])),
        "",
        "Precision = correct / predicted as the class; recall = correct / truly the class.",
        "",
        *_per_class_tables(result),
    ]


def _uncertainty(result: Dict[str, Any]) -> List[str]:
    lines = [
        "## Uncertainty",
        "",
        f"95% intervals: stratified bootstrap ({result.get('bootstrap_resamples', 1000):,} resamples within each "
        f"true class). McNemar's test compares the best run on validation (`{result['best']}`) with each other run "
        "on the same test images (exact binomial test under 25 discordant images, else chi-squared with continuity "
        "correction).",
        "",
        "| run | test accuracy [95% CI] | COVID recall [95% CI] | McNemar vs best: b / c | p |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        mc = result["mcnemar"].get(name)
        mc_cells = f"{mc['b']} / {mc['c']} | {mc['p_value']:.3g}" if mc else "(best) | –"
        lines.append(
            f"| {name} | {interval(r['ci95']['accuracy'])} | {interval(r['ci95']['covid_recall'])} | {mc_cells} |"
        )
    return lines + ["", "b: images the best run gets right and this run wrong; c: the reverse.", ""]


def _calibration(result: Dict[str, Any]) -> List[str]:
    lines = [
        "## Calibration",
        "",
        "Expected calibration error (15 equal-width confidence bins) on the test set, and validation NLL, before "
        "and after temperature scaling fitted on the validation set.",
        "",
        "| run | T | ECE before | ECE after | val NLL before | val NLL after |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["runs"].items():
        c = r["calibration"]
        lines.append(
            f"| {name} | {c['temperature']:.3f} | {c['ece_test_before']:.4f} | {c['ece_test_after']:.4f} | "
            f"{c['nll_validation_before']:.4f} | {c['nll_validation_after']:.4f} |"
        )
    return lines + ["", f"![Reliability diagrams]({RELIABILITY_PNG})", ""]


def _scratch_comparison(result: Dict[str, Any]) -> List[str]:
    runs = result["runs"]
    pairs = [(a["name"], a["name"] + "-scratch") for a in result["arms"] if a["name"] + "-scratch" in runs]
    if not pairs:
        return []
    rows = [f"| {p} | {pct(runs[p]['test']['accuracy'])} | {pct(runs[s]['test']['accuracy'])} |" for p, s in pairs]
    return [
        "## ImageNet weights versus training from scratch",
        "",
        "| model | pretrained test acc | scratch test acc |",
        "|---|---|---|",
        *rows,
        "",
    ]


def _clahe_comparison(result: Dict[str, Any]) -> List[str]:
    runs = result["runs"]
    clahe = [(a["name"][: -len("-clahe")], a["name"]) for a in result["arms"] if a["clahe"]]
    if not clahe:
        return []
    lines = [
        "## CLAHE",
        "",
        "The paper dropped CLAHE after AlexNet fell to 73.37%. Same runs, with CLAHE (OpenCV, clip 2.0, "
        "8×8 tiles) applied before resizing:",
        "",
        "| model | test acc | with CLAHE | difference |",
        "|---|---|---|---|",
    ]
    for base, arm in clahe:
        a, b = runs[base]["test"]["accuracy"], runs[arm]["test"]["accuracy"]
        lines.append(f"| {base} | {pct(a)} | {pct(b)} | {100 * (b - a):+.2f} points |")
    return lines + [""]


def _gradcam_section() -> List[str]:
    return [
        "## Grad-CAM (the paper's Table 6)",
        "",
        "Test images of each class; the original beside each run's GradCAM for its predicted class, computed "
        "with each checkpoint's own preprocessing (the app's code).",
        "",
        f"![Grad-CAM grid]({GRADCAM_PNG})",
        "",
    ]


def _source_audit(audit: Optional[Dict[str, Any]]) -> List[str]:
    if not audit:
        return []
    lines = ["## Source audit", "", "Sources per class (from the data's `metadata.csv`):", "", "| class | sources |"]
    lines.append("|---|---|")
    lines += [
        f"| {c} | " + ", ".join(f"{s} ({n})" for s, n in srcs.items()) + " |" for c, srcs in audit["per_class"].items()
    ]
    lines += ["", *(f"> **Warning:** {w}" for w in audit["warnings"])]
    sources = sorted({s for acc in audit["test_accuracy_by_source"].values() for s in acc})
    lines += [
        "",
        "Test accuracy per source:",
        "",
        "| run | " + " | ".join(sources) + " |",
        "|---|" + "---|" * len(sources),
    ]
    for name, acc in audit["test_accuracy_by_source"].items():
        cells = (f"{pct(acc[s]['accuracy'])} (n={acc[s]['n']})" if s in acc else "–" for s in sources)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _notes() -> List[str]:
    return [
        "## Notes",
        "",
        f"- The best run is chosen on validation (accuracy, then fewer {' + '.join(CRITICAL_CLASSES)} called Normal), "
        "never on test.",
        "- Splits are random and image-level, not patient-level; each class of this database comes largely from its "
        "own source (DeGrave et al., Nature Machine Intelligence 2021), so accuracy can reflect the source.",
        "",
    ]
