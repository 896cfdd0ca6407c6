"""A Space that deploys in one command and starts where users meet it, end to end against the LOCAL
Hub stand-in (tests/hub_server.py): publish two models, deploy a Space listing them, download the
Space repository into an empty folder with snapshot_download, start its app.py there with the Hub
endpoint pointed at the stand-in, and get predictions from every listed model through gradio_client."""

import json
import os
import subprocess
import uuid

import pytest
import yaml
from helpers import PYTHON, call, example_table, free_port, hub_env, make_subset, run_script, wait_until_serving
from hub_server import TOKEN

# Every test here starts processes or trains models: in the full suite (--runslow), not the fast default run.
pytestmark = pytest.mark.slow

MODELS = {
    "cxr-test/space-lite0": ["--model", "tf_efficientnet_lite0", "--image-size", "64"],
    "cxr-test/space-logreg": ["--model", "logreg", "--image-size", "24"],
}


@pytest.fixture(scope="module")
def published_data(tmp_path_factory, sample_dir):
    """The real X-rays the published models are trained on: 30 per class (3 of each in the test split, so that a
    film the guard of a model this small flags leaves others to offer as examples)."""
    return make_subset(tmp_path_factory.mktemp("space-data") / "data", sample_dir, 30)


@pytest.fixture(scope="module")
def published(hub, published_data, tmp_path_factory):
    """Two small models trained on real X-rays and published with `python -m cxr.hub push`."""
    tmp, data = tmp_path_factory.mktemp("space-models"), published_data
    for repo_id, args in MODELS.items():
        run = tmp / repo_id.split("/")[1]
        proc = run_script(
            [
                PYTHON,
                "train_accelerate.py",
                *args,
                "--data",
                str(data),
                "--output-dir",
                str(run),
                "--epochs",
                "1",
                "--num-workers",
                "0",
            ]
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        proc = run_script([PYTHON, "-m", "cxr.hub", "push", str(run), repo_id], env=hub_env(hub, tmp))
        assert proc.returncode == 0, proc.stderr[-3000:]
    return list(MODELS)


def deploy(hub, tmp_path, space_id, models, *extra, token=TOKEN):
    # no implicit token: every request must carry the token the command checked
    return run_script(
        [PYTHON, "-m", "cxr.hub", "space", space_id, "--models", ",".join(models), *extra],
        env={**hub_env(hub, tmp_path, token=token), "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"},
    )


def _front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.slow
def test_space_deploys_downloads_starts_and_serves_every_model(hub, published, published_data, tmp_path, sample_dir):
    import gradio
    from gradio_client import Client, handle_file

    proc = deploy(hub, tmp_path, "cxr-test/demo", published, "--examples", str(published_data))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "/spaces/cxr-test/demo/commit/" in proc.stdout
    _, files = hub.repos["spaces/cxr-test/demo"].snapshot("main")
    top = {p for p in files if "/" not in p}
    assert top == {"app.py", "README.md", "requirements.txt", "app_models.txt"}
    assert {p.split("/")[0] for p in files} == top | {"cxr", "examples"}
    # one film per class, each in the test split both models published
    tests = [set(json.loads(hub.repos[m].snapshot("main")[1]["split.json"])["test"]) for m in published]
    films = sorted(p.split("/", 1)[1] for p in files if p.startswith("examples/"))
    assert [f.split("/")[0] for f in films] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert all(f in test for f in films for test in tests), films
    assert all(files["examples/" + f] == (published_data / f).read_bytes() for f in films)
    assert (
        "cxr/model_cards/cxr_model_card.md" in files and "cxr/metrics/cxr_classification/cxr_classification.py" in files
    )
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in files)
    meta = _front_matter(files["README.md"])
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    assert meta["python_version"].count(".") == 1
    assert meta["models"] == published
    assert meta["preload_from_hub"] == [f"{m} config.json,model.safetensors" for m in published]
    requirements = files["requirements.txt"].decode().splitlines()
    pins = dict(line.split("==") for line in requirements if line and not line.startswith("#"))
    assert {"torch", "timm", "transformers", "grad-cam", "opencv-python-headless"} <= set(pins)
    assert "gradio" not in pins and "pytest" not in pins and all("+" not in v for v in pins.values())
    assert files["app_models.txt"].decode().split("\n")[1:3] == published

    # the Space repository, downloaded into an empty folder, is all the app needs
    space = tmp_path / "space"
    code = (
        "from huggingface_hub import snapshot_download; "
        f"snapshot_download('cxr-test/demo', repo_type='space', local_dir={str(space)!r})"
    )
    env = hub_env(hub, tmp_path / "user")
    got = run_script([PYTHON, "-c", code], env=env)
    assert got.returncode == 0, got.stderr[-3000:]
    which = subprocess.run(
        [PYTHON, "-c", "import cxr; print(cxr.__file__)"],
        cwd=space,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert which.stdout.strip() == str(space / "cxr" / "__init__.py")  # the Space's copy, not this checkout

    port = free_port()
    log = tmp_path / "space.log"
    app_env = {k: v for k, v in {**os.environ, **env}.items() if k not in ("CXR_APP_MODELS", "PYTHONPATH")}
    with open(log, "w") as f:
        app = subprocess.Popen(
            [PYTHON, "app.py"],
            cwd=space,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**app_env, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"},
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, app, log, timeout=180)
        client = Client(url, verbose=False, download_files=tmp_path / "answers")
        for cls in ("COVID", "Normal"):
            image = handle_file(str(next((sample_dir / cls).glob("*.png"))))
            info = client.predict(image, api_name="/classify")
            assert info["error"] is None and list(info["models"]) == published
            for model_id in published:
                entry = info["models"][model_id]
                assert entry["available"], entry
                assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
            full, gallery = client.predict(image, "GradCAM", "predicted class", api_name="/predict")
            assert [g["caption"] for g in gallery] == published
        # the Space offers its examples/ films, held out by both models
        captions = [sample[0] for sample in example_table(url)["props"]["samples"]]
        assert captions == [f"{f.split('/')[0]} · held out from training" for f in films]
        (film,) = call(url, "load_example", [0], uuid.uuid4().hex)
        info = call(url, "classify", [film], uuid.uuid4().hex)[0]
        assert info["example"]["file_name"] == films[0] and info["example"]["tested_by"] == published
    finally:
        app.terminate()
        app.wait(timeout=30)


def test_bad_deployments_fail_before_anything_is_uploaded(hub, published, tmp_path):
    before = set(hub.repos)
    cases = [
        ("demo-without-owner", published, TOKEN, "malformed Space id"),
        ("cxr-test/a/b", published, TOKEN, "malformed Space id"),
        ("cxr-test/demo-bad", published, None, "needs a token"),
        ("cxr-test/demo-bad", published, "hf_wrong", "token was rejected"),
        (
            "cxr-test/demo-bad",
            [*published, "cxr-test/never-published"],
            TOKEN,
            "cxr-test/never-published: no such model on the Hub",
        ),
        ("cxr-test/demo-bad", ["not-an-id"], TOKEN, "not-an-id: malformed model id"),
    ]
    for space_id, models, token, message in cases:
        proc = deploy(hub, tmp_path, space_id, models, token=token)
        assert proc.returncode == 2, (space_id, proc.stderr[-2000:])
        assert message in proc.stderr and proc.stderr.startswith("error: "), proc.stderr[-2000:]  # nothing before it
        assert "Traceback" not in proc.stderr
    assert set(hub.repos) == before  # nothing created, nothing uploaded


def test_a_foreign_repository_is_refused_as_a_model(hub, published, tmp_path):
    hub.put_files("cxr-test/not-cxr", {"config.json": b'{"architecture": "resnet50"}', "model.safetensors": b"x"})
    proc = deploy(hub, tmp_path, "cxr-test/demo-foreign", [published[0], "cxr-test/not-cxr"])
    assert proc.returncode == 2 and "cxr-test/not-cxr: not a cxr checkpoint" in proc.stderr
    assert "spaces/cxr-test/demo-foreign" not in hub.repos


def test_redeploy_updates_a_cxr_space_and_never_touches_a_foreign_one(hub, published, tmp_path):
    assert deploy(hub, tmp_path, "cxr-test/redeploy", published).returncode == 0
    # an older deployment's module and the owner's own file beside the app
    hub.put_files("cxr-test/redeploy", {"cxr/retired_module.py": b"x = 1\n", "NOTES.md": b"mine\n"}, repo_type="space")
    proc = deploy(hub, tmp_path, "cxr-test/redeploy", published[:1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, files = hub.repos["spaces/cxr-test/redeploy"].snapshot("main")
    assert "cxr/retired_module.py" not in files  # the package is replaced whole
    assert files["NOTES.md"] == b"mine\n"  # what cxr did not write stays
    assert _front_matter(files["README.md"])["models"] == published[:1]
    assert files["app_models.txt"].decode().split("\n")[1:] == [published[0], ""]

    # a Space cxr did not deploy is refused unless --force
    hub.put_files(
        "cxr-test/someone-elses",
        {"app.py": b"print('hello')\n", "README.md": b"---\nsdk: gradio\n---\n"},
        repo_type="space",
    )
    proc = deploy(hub, tmp_path, "cxr-test/someone-elses", published)
    assert proc.returncode == 2 and "was not deployed by cxr" in proc.stderr and "--force" in proc.stderr
    _, files = hub.repos["spaces/cxr-test/someone-elses"].snapshot("main")
    assert files["app.py"] == b"print('hello')\n"
    assert deploy(hub, tmp_path, "cxr-test/someone-elses", published, "--force").returncode == 0
    _, files = hub.repos["spaces/cxr-test/someone-elses"].snapshot("main")
    assert b"app_main" in files["app.py"]
