"""Publishing to and loading from the Hub, against a LOCAL STAND-IN of the Hub's HTTP API.

`tests/hub_server.py` serves, on 127.0.0.1, the subset of the Hub API that huggingface_hub's
create_repo, upload_folder, hf_hub_download and snapshot_download use; HF_ENDPOINT points at it.
It is not huggingface.co: no test reaches the internet. The library code paths are the real ones.
"""

import json
import os
import subprocess
import time

import numpy as np
import pytest
import torch
from helpers import ACCELERATE, PYTHON, REPO, hub_env, run_script, tiny_run
from hub_server import LocalHub

from cxr.metrics.stats import softmax_with_temperature

# Every test here starts processes or trains models: in the full suite (--runslow), not the fast default run.
pytestmark = pytest.mark.slow

SAMPLES = ("COVID/COVID-1004.png", "Lung_Opacity/1002.png", "Viral Pneumonia/Viral Pneumonia-1020.png")
REPO_FILES = [
    "README.md",
    "config.json",
    "confusion_matrix.png",
    "metrics.json",
    "model.safetensors",
    "ood_reference.safetensors",
    "operating_point.png",
    "split.json",
    "training_curves.png",
]


def _clean_env(env):
    full = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    full.update(env, PYTHONUNBUFFERED="1")
    return full


def run_in_fresh_process(code: str, env):
    proc = subprocess.run(
        [PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=_clean_env(env)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pushed_run(hub, tmp_path_factory, sample_dir):
    """Train EfficientNet-Lite0 for one epoch with --push-to-hub, against the local stand-in."""
    tmp = tmp_path_factory.mktemp("hub-run")
    out = tmp / "run"
    proc = run_script(
        [
            ACCELERATE,
            "launch",
            "--num_processes",
            "1",
            "train_accelerate.py",
            "--model",
            "tf_efficientnet_lite0",
            "--data",
            str(sample_dir),
            "--output-dir",
            str(out),
            "--epochs",
            "1",
            "--image-size",
            "64",
            "--num-workers",
            "0",
            "--push-to-hub",
            "--hub-model-id",
            "cxr-test/lite0",
        ],
        env=hub_env(hub, tmp),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pushed to" in proc.stdout
    return out


def test_push_publishes_model_card_and_report_and_nothing_pickled(hub, pushed_run):
    sha, files = hub.repos["cxr-test/lite0"].snapshot("main")
    assert sorted(files) == REPO_FILES
    # no film of the dataset: the run's errors figure (the sample's films with heat maps) stays local
    assert (pushed_run / "errors.png").is_file() and "errors.png" not in files
    assert json.loads(files["metrics.json"]) == json.loads((pushed_run / "metrics.json").read_text())
    assert files["model.safetensors"] == (pushed_run / "model" / "model.safetensors").read_bytes()
    # the token and repository were checked before training: whoami and create come before the commit
    calls = [p for _, p in hub.requests]
    assert (
        calls.index("/api/whoami-v2")
        < calls.index("/api/repos/create")
        < calls.index("/api/models/cxr-test/lite0/commit/main")
    )


def test_fresh_process_loads_the_same_model_three_ways(hub, pushed_run, tmp_path, sample_dir):
    from cxr import CXRClassifier

    local = CXRClassifier.from_pretrained(pushed_run / "model")
    paths = [str(sample_dir / s) for s in SAMPLES]
    calibrated = local.predict_proba(paths)
    with torch.no_grad():  # what timm and transformers return: the softmax without cxr's saved temperature
        expected = local.model(local.inputs(paths)).softmax(-1).numpy()
    assert local.temperature != 1.0 and np.allclose(
        calibrated, softmax_with_temperature(np.log(expected), local.temperature), atol=1e-5
    )
    code = f"""
import json, torch, timm
from cxr import CXRClassifier
from transformers import AutoModelForImageClassification, pipeline
paths = {paths!r}
clf = CXRClassifier.from_pretrained("cxr-test/lite0")
x = clf.inputs(paths)
t = timm.create_model("hf-hub:cxr-test/lite0", pretrained=True).eval()
hf = AutoModelForImageClassification.from_pretrained("cxr-test/lite0").eval()
pipe = pipeline("image-classification", model="cxr-test/lite0", top_k=4)
with torch.no_grad():
    out = {{"cxr": clf.predict_proba(paths).tolist(), "timm": t(x).softmax(-1).tolist(),
           "transformers": hf(pixel_values=x).logits.softmax(-1).tolist(),
           "pipeline": [{{r["label"]: r["score"] for r in pipe(p)}} for p in paths],
           "labels": clf.label_names, "guard": clf.ood is not None}}
print(json.dumps(out))
"""
    got = run_in_fresh_process(code, hub_env(hub, tmp_path))
    assert np.allclose(got["cxr"], calibrated, atol=1e-5)
    assert got["guard"] and local.ood is not None  # the out-of-distribution guard comes down with the weights
    for way in ("timm", "transformers"):
        assert np.allclose(got[way], expected, atol=1e-5), way
    for row, probs in zip(got["pipeline"], expected):  # the pipeline reads the files itself, to cxr's input
        assert [row[label] for label in got["labels"]] == pytest.approx(probs.tolist(), abs=1e-3)


def test_model_card_numbers_equal_metrics_and_metadata_parses(hub, pushed_run, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData, metadata_load

    _, files = hub.repos["cxr-test/lite0"].snapshot("main")
    (tmp_path / "README.md").write_bytes(files["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    metrics = json.loads((pushed_run / "metrics.json").read_text())["test"]
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert {"medical-imaging", "chest-x-ray", "covid-19"} <= set(card.data.tags)
    results = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert results[("accuracy", None)] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert results[("roc_auc", "macro-ovr")] == pytest.approx(metrics["auroc"], abs=1e-6)
    for name, pc in metrics["per_class"].items():
        assert results[("recall", name)] == pytest.approx(pc["recall"], abs=1e-6)
    assert all(r.task_type == "image-classification" for r in card.data.eval_results)
    # what it was really scored on: the sample's random split, not "the database's test split"
    n_test = metrics["num_images"]
    assert {r.dataset_name for r in card.data.eval_results} == {
        f"cxr-sample (local folder of COVID-19 Radiography Database images, 600 used): {n_test} test images"
    }
    assert {r.dataset_split for r in card.data.eval_results} == {f"test (cxr random split, seed 1: {n_test} images)"}
    assert {r.dataset_type for r in card.data.eval_results} == {"imagefolder"}
    # metadata a registry accepts: huggingface_hub's own parsers and validators
    meta = metadata_load(tmp_path / "README.md")
    assert meta["base_model"] == "timm/tf_efficientnet_lite0.in1k"
    assert meta["license"] == "other" and meta["license_name"] == "covid-19-radiography-database-terms"
    assert meta["license_link"].startswith("https://www.kaggle.com/datasets/tawsifurrahman/")
    ModelCardData(**meta)  # round-trips through the card-data class (model-index parsed and checked)
    assert "Scored on: cxr-sample" in card.text and "base model: [`timm/tf_efficientnet_lite0.in1k`]" in card.text
    text = card.text
    assert f"{100 * metrics['accuracy']:.2f}%" in text
    assert f"| Normal | {100 * metrics['per_class']['Normal']['precision']:.2f}% |" in text
    assert "not for diagnosis" in text and "DeGrave" in text and "not patient-level" in text
    assert "| Viral Pneumonia | 1,345 | paediatric Kermany (all) |" in text  # the source confounding table
    assert 'CXRClassifier.from_pretrained("cxr-test/lite0")' in text and '"hf-hub:cxr-test/lite0"' in text
    assert "mean `[0.5, 0.5, 0.5]`" in text
    ood = json.loads((pushed_run / "metrics.json").read_text())["ood"]
    flat = " ".join(text.split())
    decision = json.loads((pushed_run / "metrics.json").read_text())["decision"]
    assert f"**Decision (operating point):** {decision['rule']}" in flat
    rates = decision["rates"]
    assert f"COVID + Viral Pneumonia called Normal {rates['critical_called_normal']}/{rates['critical']}" in flat
    assert f"test split flagged {ood['test_flagged']}/{ood['test_images']}" in flat
    assert f"noise images) flagged {ood['probes_flagged']}/{ood['probes']}" in flat


def test_a_model_card_renders_without_torch_from_the_run_record(pushed_run):
    """The reporting layer's contract: the card's base model comes from the run record, so no torch or timm."""
    run_config = json.loads((pushed_run / "run_config.json").read_text())
    assert run_config["pretrained"].endswith("(timm/tf_efficientnet_lite0.in1k)")
    code = f"""
import sys
from cxr.reporting.model_card import render_model_card
card = render_model_card({str(pushed_run)!r}, "cxr-test/lite0")
assert card.data.base_model == "timm/tf_efficientnet_lite0.in1k", card.data.base_model
print(sorted(m for m in ("torch", "timm") if m in sys.modules))
"""
    proc = run_script([PYTHON, "-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_card_of_a_study_model_shows_the_study_row(tmp_path, sample_dir):
    from cxr.commands.train import main as train_main
    from cxr.reporting.model_card import render_model_card

    out = tmp_path / "logreg"
    assert (
        train_main(
            [
                *tiny_run("logreg", 24, 1),
                "--data",
                str(sample_dir),
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    text = render_model_card(out, "org/logreg").text
    assert "| Logistic regression (study) | 2,116 test images | 60.84% | 62.24% | 214 | 25 | 197 |" in text


def test_cxr_hub_push_publishes_a_finished_run(hub, pushed_run, tmp_path):
    proc = run_script(
        [PYTHON, "-m", "cxr.hub", "push", str(pushed_run), "cxr-test/lite0-copy", "--private"],
        env=hub_env(hub, tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    repo = hub.repos["cxr-test/lite0-copy"]
    assert repo.private and sorted(repo.snapshot("main")[1]) == REPO_FILES
    # a private repository needs the token to be read
    code = 'import json; from cxr import CXRClassifier; print(json.dumps(CXRClassifier.from_pretrained("cxr-test/lite0-copy").label_names))'
    assert run_in_fresh_process(code, hub_env(hub, tmp_path / "a")) == [
        "COVID",
        "Lung_Opacity",
        "Normal",
        "Viral Pneumonia",
    ]
    proc = subprocess.run(
        [PYTHON, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_clean_env(hub_env(hub, tmp_path / "b", token=None)),
    )
    assert proc.returncode != 0 and "no model repository 'cxr-test/lite0-copy'" in proc.stderr


def test_missing_token_fails_before_training(hub, tmp_path, sample_dir):
    proc = run_script(
        [
            PYTHON,
            "train_accelerate.py",
            "--model",
            "logreg",
            "--data",
            str(sample_dir),
            "--output-dir",
            str(tmp_path / "out"),
            "--push-to-hub",
            "--hub-model-id",
            "cxr-test/x",
        ],
        env={**hub_env(hub, tmp_path, token=None), "HF_TOKEN": ""},
    )
    assert proc.returncode == 2 and "needs a token" in proc.stderr and "HF_TOKEN" in proc.stderr
    assert "epoch 1" not in proc.stdout and not (tmp_path / "out").exists()


def test_rejected_token_and_foreign_namespace_fail_before_training(hub, tmp_path, sample_dir):
    base = [
        PYTHON,
        "train_accelerate.py",
        "--model",
        "logreg",
        "--data",
        str(sample_dir),
        "--output-dir",
        str(tmp_path / "out"),
        "--push-to-hub",
        "--hub-model-id",
    ]
    proc = run_script(base + ["cxr-test/x"], env=hub_env(hub, tmp_path, token="hf_wrong"))
    assert proc.returncode == 2 and "token was rejected" in proc.stderr
    proc = run_script(base + ["someone-else/x"], env=hub_env(hub, tmp_path))
    assert proc.returncode == 2 and "cannot create or write someone-else/x" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad_id", ["no-namespace", "a/b/c", "org/bad name!", ""])
def test_malformed_repository_id(tmp_path, sample_dir, capsys, bad_id):
    from cxr.commands.train import main as train_main

    code = train_main(
        [
            "--model",
            "logreg",
            "--data",
            str(sample_dir),
            "--output-dir",
            str(tmp_path / "out"),
            "--push-to-hub",
            "--hub-model-id",
            bad_id,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and ("malformed --hub-model-id" in err or "needs --hub-model-id" in err)
    assert not (tmp_path / "out").exists()


def test_hub_unreachable_at_push_keeps_the_run_and_prints_the_retry(tmp_path, sample_dir):
    server = LocalHub().start()
    try:
        out = tmp_path / "run"
        proc = subprocess.Popen(
            [
                PYTHON,
                "train_accelerate.py",
                *tiny_run("logreg", 24, 3),
                "--data",
                str(sample_dir),
                "--output-dir",
                str(out),
                "--push-to-hub",
                "--hub-model-id",
                "cxr-test/late",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(hub_env(server, tmp_path)),
        )
        deadline = time.monotonic() + 60
        while ("POST", "/api/repos/create") not in server.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        server.unreachable = True  # the Hub goes away while the model trains
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        server.stop()
    assert proc.returncode == 2, stderr[-2000:]
    assert "epoch 3: train loss" in stdout
    assert f"python -m cxr.hub push {out} cxr-test/late" in stderr and "complete on disk" in stderr
    for name in ("metrics.json", "report.md", "model/model.safetensors", "split.json"):
        assert (out / name).is_file()


def test_non_cxr_repositories_get_clear_errors(hub, tmp_path):
    from safetensors.torch import save

    plain_cfg = {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {"input_size": [3, 224, 224]}}
    weights = save({"w": torch.zeros(1)})
    hub.put_files("cxr-test/plain-timm", {"config.json": json.dumps(plain_cfg).encode(), "model.safetensors": weights})
    hub.put_files(
        "cxr-test/pickled",
        {"config.json": json.dumps({"cxr": {"preprocessing": {}}}).encode(), "pytorch_model.bin": b"\x80\x02pickle"},
    )
    code = """
import json
from cxr import CXRClassifier
from cxr.errors import CXRError
out = {}
for ref in ("cxr-test/plain-timm", "cxr-test/pickled", "cxr-test/absent"):
    try:
        CXRClassifier.from_pretrained(ref)
        out[ref] = "loaded"
    except CXRError as e:
        out[ref] = str(e)
print(json.dumps(out))
"""
    got = run_in_fresh_process(code, hub_env(hub, tmp_path))
    assert "not a cxr checkpoint" in got["cxr-test/plain-timm"] and "cxr.preprocessing" in got["cxr-test/plain-timm"]
    assert "has no model.safetensors" in got["cxr-test/pickled"] and "safetensors" in got["cxr-test/pickled"]
    assert "no model repository 'cxr-test/absent'" in got["cxr-test/absent"]


def test_push_with_eval_dirs_fills_the_external_validation_section(hub, pushed_run, tmp_path, external_dev_dir):
    """``--eval-dir``: a real cxr.eval of the pushed model on outside Normal films fills the card's section with
    its figures; nothing of the evaluated films is uploaded; a folder that is not a cxr.eval output is refused
    before the Hub is asked anything."""
    from cxr.commands.eval import main as eval_main

    data = tmp_path / "outside" / "Normal"
    data.mkdir(parents=True)
    for f in sorted((external_dev_dir / "Normal").glob("*.png"))[:10]:
        (data / f.name).symlink_to(f)
    ev = tmp_path / "ev"
    assert eval_main(["--model", str(pushed_run / "model"), "--data", str(data.parent), "--output-dir", str(ev)]) == 0
    block = json.loads((ev / "metrics.json").read_text())["classes_present"]
    proc = run_script(
        [PYTHON, "-m", "cxr.hub", "push", str(pushed_run), "cxr-test/lite0-ext", "--eval-dir", str(ev)],
        env=hub_env(hub, tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = hub.repos["cxr-test/lite0-ext"].snapshot("main")[1]
    assert sorted(files) == REPO_FILES  # the eval folder's predictions, plots and error films stay local
    card = files["README.md"].decode()
    normal = block["argmax"]["per_class"]["Normal"]
    assert "## External validation" in card and f"**{data.parent}** (10 films: Normal)" in card
    recall = normal["recall"]
    assert f"Normal (10): recall {100 * recall['value']:.2f}% [{100 * recall['low']:.2f}%" in card
    assert "Films from other hospitals may score much lower" in card

    before = len(hub.requests)
    proc = run_script(
        [PYTHON, "-m", "cxr.hub", "push", str(pushed_run), "cxr-test/lite0-ext", "--eval-dir", str(tmp_path)],
        env=hub_env(hub, tmp_path),
    )
    assert proc.returncode == 2 and "--eval-dir" in proc.stderr and "no metrics.json there" in proc.stderr
    assert len(hub.requests) == before
