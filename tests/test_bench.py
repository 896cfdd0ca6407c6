"""The benchmark scripts (``bench/``) and the experiments (``experiments/``) run end to end on a small subset of the
real sample and print their tables.

Timings are not asserted (they are measurements, not behaviour); what is: every arm ran, in as many
processes as asked, the ratios are computed from positive throughputs. The app's benchmark scripts are tested in
``test_bench_app.py``.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
from helpers import REPO, make_subset, markdown_tables, run_bench, run_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subset(tmp_path_factory, sample_dir) -> Path:
    return make_subset(tmp_path_factory.mktemp("bench-data"), sample_dir, per_class=8)


def _ratio(cell: str) -> float:
    assert cell.endswith("×"), cell
    return float(cell[:-1])


def test_train_throughput_compares_three_arms_and_scales_to_two_processes(subset):
    out = run_bench(
        "train_throughput.py",
        "--data",
        str(subset),
        "--models",
        "resnet18",
        "--image-size",
        "64",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--memory-formats",
        "contiguous",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--rounds",
        "1",
        "--processes",
        "1,2",
    )
    arms, scaling = markdown_tables(out)
    (row,) = arms
    assert row["model"] == "resnet18" and float(row["plain img/s"]) > 0 and float(row["ours img/s"]) > 0
    # the table rounds throughputs to 2 decimals and ratios to 2: compare to within that rounding
    assert _ratio(row["ours / plain"]) == pytest.approx(
        float(row["ours img/s"]) / float(row["plain img/s"]), rel=0.01, abs=0.01
    )
    assert _ratio(row["ours with glibc defaults / plain"]) > 0
    # the 2-process row exists only if two processes reported through Accelerate's gather
    assert [r["processes"] for r in scaling] == ["1", "2"]
    assert scaling[0]["scaling efficiency"] == "100%" and float(scaling[1]["img/s (all processes)"]) > 0


def test_eval_throughput_times_cxr_eval_against_the_bare_forward(subset):
    out = run_bench(
        "eval_throughput.py",
        "--data",
        str(subset),
        "--models",
        "resnet18",
        "--image-size",
        "64",
        "--batch-size",
        "16",
        "--rounds",
        "1",
    )
    (rows,) = markdown_tables(out)
    (row,) = rows
    assert row["images"] == "32"
    assert _ratio(row["cxr.eval / bare"]) > 0 and _ratio(row["with glibc defaults / bare"]) > 0


def test_cv_recipes_cross_validates_each_recipe_and_tabulates_them(subset, tmp_path):
    import json

    out = run_experiment(
        "cv_recipes.py",
        "--data",
        str(subset),
        "--output-dir",
        str(tmp_path / "cvr"),
        "--recipes",
        "paper,default",
        "--model",
        "logreg",
        "--image-size",
        "24",
        "--folds",
        "2",
        "--parallel",
        "2",
        "--threads",
        "1",
        "--num-workers",
        "0",
    )
    rows, misses = markdown_tables(out)
    assert [r["recipe"] for r in rows] == ["paper", "default"]
    called_normal = []  # per recipe: its COVID and Viral Pneumonia images predicted Normal out of fold
    for name in ("paper", "default"):
        oof = (tmp_path / "cvr" / name / "oof_predictions.csv").read_text().splitlines()[1:]
        called_normal.append(
            {
                r.split(",")[0]
                for r in oof
                if r.split(",")[1] in ("COVID", "Viral Pneumonia") and r.split(",")[3] == "Normal"
            }
        )
    listed = {m["image"]: m["called Normal by"] for m in misses}
    assert set(listed) == called_normal[0] | called_normal[1]  # half of two recipes: either
    assert all(v == f"{(k in called_normal[0]) + (k in called_normal[1])} of 2" for k, v in listed.items())
    for row in rows:
        result = json.loads((tmp_path / "cvr" / row["recipe"] / "cv.json").read_text())
        assert result["images"] == 32 and result["folds"] == 2
        assert row["accuracy"].startswith(f"{100 * result['out_of_fold']['accuracy']['value']:.1f}% [")
    assert json.loads((tmp_path / "cvr" / "paper" / "cv.json").read_text())["recipe"]["optimizer"] == "adam"
    assert json.loads((tmp_path / "cvr" / "default" / "cv.json").read_text())["recipe"]["optimizer"] == "adamw"
    assert (tmp_path / "cvr" / "recipes.md").read_text().strip() in out
    bad = subprocess.run(
        [sys.executable, "experiments/cv_recipes.py", "--output-dir", str(tmp_path / "x"), "--recipes", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown recipe(s) ['nope']" in bad.stderr


def test_held_out_sources_compares_temperatures_and_thresholds_on_every_folds_test_part(
    sample_dir, tmp_path, external_dev_dir
):
    from cxr.commands.cv import main as cv_main

    cv = tmp_path / "cv"
    args = ["--data", str(sample_dir), "--folds", "3", "--output-dir", str(cv), "--model", "logreg"]
    assert cv_main([*args, "--image-size", "24", "--epochs", "2", "--num-workers", "0"]) == 0
    temps, ops = markdown_tables(
        run_experiment("held_out_sources.py", "--cv-dir", str(cv), "--max-missed-rate", "0.05")
    )
    assert len(temps) == 4 and all(len(r["temperature per fold"].split(", ")) == 3 for r in temps[:3])
    assert all(0 <= float(r["ECE [95% CI]"].split()[0]) <= 1 for r in temps)
    assert len(ops) == 4 and {r["target"] for r in ops} == {"5%"}
    for r in ops:  # the counts are over all 600 films: 300 COVID + Viral Pneumonia, 150 Normal
        assert r["COVID + VP called Normal"].split()[0].endswith("/300") and r["Normal kept Normal"].split()[
            0
        ].endswith("/150")
        assert r["COVID + VP called Normal"][-1] in "✓✗"

    # the same folds as training runs: their test ECE by temperature source, beside what chance allows
    rows, sizes = markdown_tables(
        run_experiment(
            "calibration_runs.py",
            "--run",
            str(cv / "fold-0"),
            "--run",
            str(cv / "fold-1"),
            "--chance-at",
            "60",
            "--chance-at",
            "600",
        )
    )
    small, large = (float(r["by chance: median"].split("–")[1]) for r in sizes)

    # test-time flip averaging on the same fold models: out of fold and on outside films
    outside = tmp_path / "outside"
    outside.mkdir()
    for f in sorted((external_dev_dir / "Normal").glob("*.png"))[:6]:
        (outside / f.name).symlink_to(f)
    (arms,) = markdown_tables(run_experiment("tta_flip.py", "--cv-dir", str(cv), "--external", str(outside)))
    assert [r["test-time"] for r in arms] == ["none", "flip average"]

    # the guarantee over random splits of the bundled predictions, and a site recalibrated with each fold model
    (tmp_path / "outside-normal").mkdir()
    (tmp_path / "outside-normal" / "Normal").symlink_to(outside)
    out = run_experiment(
        "guarantee.py", "--cv-dir", str(cv), "--data", str(sample_dir), "--external", str(tmp_path / "outside-normal"),
        "--splits", "20",
    )  # fmt: skip
    splits, sites = markdown_tables(out)
    assert [r["target"] for r in splits] == ["1%", "2%", "5%", "10%"] * 2
    assert all(r["splits where the target could be guaranteed"].endswith("/20") for r in splits)
    assert [r["point"] for r in sites] == ["original", "recalibrated"] * 3
    assert all(r["guarantee where set"].startswith("expected ≤") for r in sites[1::2])
    assert "External dev set with fold 0's model: 6 films of Normal" in out and "re-established: False" in out
    assert all(r["COVID + VP called Normal"].endswith("/300") for r in arms)
    oof = json.loads((cv / "cv.json").read_text())["out_of_fold"]["accuracy"]["value"]
    assert arms[0]["out-of-fold accuracy [95% CI]"].startswith(f"{100 * oof:.1f}%")  # as the CV scored them
    assert [r["films"] for r in sizes] == ["60", "600"] and large < small
    assert [r["run"] for r in rows] == ["fold-0"] * 3 + ["fold-1"] * 3 + ["all 2 pooled"] * 3
    _check_saved_temperature_row(cv / "fold-0", rows[1])
    for r in rows:
        median, p95 = (float(v) for v in r["by chance (median / 95%)"].split(" (")[0].split(" / "))
        assert 0 < median < p95 and r["by chance (median / 95%)"].endswith(("(under)", "(**over**)"))


def test_shift_warning_scores_validation_test_and_outside_films(sample_dir, external_dev_dir, tmp_path):
    from cxr.commands.train import main as train_main

    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    for f in sorted((external_dev_dir / "Normal").glob("*.png"))[:8]:
        (outside / f.name).symlink_to(f)
    args = ["--model", "resnet18", "--data", str(sample_dir), "--output-dir", str(run), "--image-size", "32"]
    assert train_main([*args, "--epochs", "1", "--num-workers", "0", "--no-pretrained"]) == 0
    out = run_experiment("shift_warning.py", "--run", str(run), "--external", str(outside), "--per-stage")
    cuts, tests, stages = markdown_tables(out)
    assert [r["threshold"] for r in cuts][-1] == "the guard's threshold (validation 98th)"
    assert all(r["above it: outside (outside)"].split()[0].endswith("/8") for r in cuts)
    assert all(r["above it: test (the sample's own sources)"].split()[0].endswith("/60") for r in cuts)
    assert [r["films"] for r in tests] == ["test (the sample's own sources)", "outside (outside)"]
    assert len(stages) == 5  # resnet18's feature stages


def _check_saved_temperature_row(run: Path, row: Dict[str, str]) -> None:
    """The row of the run's saved temperature reproduces the ECE of its predictions.csv."""
    import json

    import numpy as np

    from cxr.metrics.stats import expected_calibration_error
    from cxr.run_folder import read_predictions

    t = json.loads((run / "metrics.json").read_text())["calibration"]["temperature"]
    pred = read_predictions(run / "predictions.csv")
    assert row["temperature from"] == "saved by the run" and row["T"] == f"{t:.2f}"
    assert row["films"] == str(len(pred.y))
    assert float(row["ECE"]) == pytest.approx(expected_calibration_error(pred.y, np.asarray(pred.probs)), abs=2e-3)


def test_predict_throughput_times_both_commands_as_a_user_runs_them(subset):
    out = run_bench("predict_throughput.py", "--data", str(subset), "--image-size", "64", "--rounds", "1")
    (rows,) = markdown_tables(out)
    assert [r["command"] for r in rows] == ["cxr.eval, fresh pixel cache", "cxr.eval, warm pixel cache", "cxr.predict"]
    assert all(float(r["seconds"]) > 0 for r in rows) and rows[0]["× cxr.eval, fresh cache"] == "1.00"
    assert rows[2]["× cxr.eval, fresh cache"].endswith("(≤ 1.1)")


def test_default_runs_trains_each_seed_once_and_tabulates_test_and_outside_films(subset, external_dev_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    for f in sorted((external_dev_dir / "Normal").glob("*.png"))[:6]:
        (outside / f.name).symlink_to(f)
    root = tmp_path / "runs"
    args = ["--seed", "2", "--root", str(root), "--data", str(subset), "--external", str(outside)]
    tiny = ["--extra", "--image-size", "32", "--epochs", "1", "--num-workers", "0"]
    (rows,) = markdown_tables(run_experiment("default_runs.py", *args, *tiny))
    metrics = json.loads((root / "seed-2" / "metrics.json").read_text())
    assert json.loads((root / "seed-2" / "run_config.json").read_text())["config"]["seed"] == 2
    (row,) = rows
    d = metrics["decision"]["rates"]
    assert row["seed"] == "2" and row["run time"].endswith(" s")
    assert row["test: COVID + VP called Normal"] == (
        f"{d['critical_called_normal']}/{d['critical']} (argmax {metrics['test']['critical_to_normal']})"
    )
    assert row["test: Normal kept"] == f"{d['normal_kept']}/{d['normal']}"
    assert row["outside Normal called Normal, argmax (6 films)"].split()[0].endswith("/6")
    stamp = (root / "seed-2" / "model" / "model.safetensors").stat().st_mtime_ns
    # a finished run is read back, not retrained
    (again,) = markdown_tables(run_experiment("default_runs.py", *args, *tiny))
    assert again == rows and (root / "seed-2" / "model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_borders_measures_uniform_frames_of_real_films(subset, tmp_path):
    from PIL import Image

    framed = tmp_path / "framed"
    framed.mkdir()
    film = Image.open(next((subset / "Normal").iterdir())).convert("L")
    canvas = Image.new("L", (film.width, film.height + 40), 0)  # a black frame of 20 rows above and below
    canvas.paste(film, (0, 20))
    canvas.save(framed / "framed.png")
    (rows,) = markdown_tables(run_experiment("borders.py", "--folder", str(subset / "Normal"), "--folder", str(framed)))
    assert [r["films"] for r in rows] == ["8", "1"]
    assert (
        rows[1]["framed films"] == "1/1"
        and float(rows[1]["mean height in frames"].rstrip("%")) >= 100 * 40 / canvas.height - 0.5
    )


def test_scale_makes_distinct_synthetic_films_and_tabulates_every_stage(sample_dir, tmp_path):
    import hashlib

    sys.path.insert(0, str(REPO / "bench"))
    from scale import MARKER, make_synthetic

    db = make_synthetic(sample_dir, tmp_path / "scale", 700)
    films = sorted(db.glob("*/*.png"))
    assert len(films) == 700 and "Never use it for accuracy" in (db / MARKER).read_text()
    assert len({hashlib.sha256(f.read_bytes()).hexdigest() for f in films}) == 700  # no two files identical
    out = run_bench(
        "scale.py", "--root", str(tmp_path / "scale"), "--sizes", "600", "--data-only-sizes", "700",
        "--image-size", "32", "--repeat-below", "1", "--max-runs", "2",
    )  # fmt: skip
    (rows,) = markdown_tables(out)
    stages = [(r["films"], r["stage"]) for r in rows]
    assert all(r["runs"] in ("1", "2") for r in rows) and {r["runs"] for r in rows if r["stage"] == "split"} == {"2"}
    assert stages == [
        *[("600", s) for s in ("listing", "cache", "split", "train", "eval", "predict", "cv-setup")],
        *[("700", s) for s in ("listing", "cache", "split")],
    ]  # fmt: skip
    assert all(float(r["ms per film"]) > 0 and float(r["peak anonymous MB"]) > 0 for r in rows)
    assert all(r["memory vs 600"].endswith("×") for r in rows if r["stage"] in ("listing", "cache", "split"))
    assert "synthetic" in out
    bad = subprocess.run(
        [sys.executable, "bench/scale.py", "--root", str(tmp_path / "x"), "--sizes", "100"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "below the sample's 600 films" in bad.stderr and not (tmp_path / "x").exists()
