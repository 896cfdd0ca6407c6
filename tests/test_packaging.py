"""`cxr` as an installable package (pyproject.toml): the wheel built from this checkout carries every
module, the `evaluate` metric module and the model-card template, and works installed OUTSIDE the
checkout; an editable install finds the template too; the code in a rendered model card runs as written.

The wheel and the editable install are built from a copy of the checkout's files (tracked and
untracked-but-not-ignored, as ``git ls-files`` lists them): an in-tree build would write ``build/``
and ``cxr.egg-info/`` into a tree other people work in. Every installed-package check runs in a
fresh process whose working folder is outside the checkout and whose ``PYTHONPATH`` is only the
install folder; each asserts ``cxr.__file__`` lies in it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sysconfig
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import PYTHON, REPO, make_subset, run_script
from hub_server import TOKEN

SCRIPTS = {
    "cxr-train": "cxr.commands.train:main",
    "cxr-eval": "cxr.commands.eval:main",
    "cxr-app": "cxr.commands.app:main",
    "cxr-study": "cxr.commands.study:main",
    "cxr-hub": "cxr.commands.hub:main",
    "cxr-cv": "cxr.commands.cv:main",
    "cxr-predict": "cxr.commands.predict:main",
    "cxr-calibrate": "cxr.commands.calibrate:main",
}
BUNDLED = "cxr/training/recipes/default_out_of_fold.json"
TEMPLATE = "model_cards/cxr_model_card.md"
METRIC = "cxr/metrics/cxr_classification/cxr_classification.py"
PIP = [PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input"]
XRAY = "COVID/COVID-1004.png"


def _version() -> str:
    tree = ast.parse((REPO / "cxr" / "__init__.py").read_text())
    return next(
        n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in n.targets)
    )


def copy_checkout(dest: Path) -> Path:
    """The checkout's files (what ``git ls-files --cached --others --exclude-standard`` lists) copied to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is not part of it
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _pip(args, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run(PIP + args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def installed_env(target: Path, **extra) -> dict:
    """The environment of a process that sees the installed package only (``PYTHONPATH`` = the install folder)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=str(target), PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1", **extra)
    return env


def run_installed(args, target: Path, cwd: Path, timeout: int = 600, **extra) -> subprocess.CompletedProcess:
    assert REPO not in cwd.resolve().parents and cwd.resolve() != REPO
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=installed_env(target, **extra)
    )


def run_json(code: str, target: Path, cwd: Path, **extra):
    """Run ``code`` with the installed package and return the JSON it prints last."""
    proc = run_installed([PYTHON, "-c", code], target, cwd, **extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: Prepended to every installed-package check: the package must come from the install folder.
GUARD = """
import json, os, sys
from pathlib import Path
import cxr
TARGET = Path(os.environ["PYTHONPATH"]).resolve()
assert TARGET in Path(cxr.__file__).resolve().parents, cxr.__file__
assert not any(Path(p or ".").resolve() == Path({repo!r}) for p in sys.path), sys.path
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> SimpleNamespace:
    """A wheel built from (a copy of) the checkout and installed with ``pip install --no-deps --target``."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = copy_checkout(tmp / "src")
    _pip(["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (whl,) = (tmp / "dist").glob("cxr-*.whl")
    target = tmp / "target"
    _pip(["install", "--no-deps", "--no-index", "--target", str(target), str(whl)], cwd=tmp)
    outside = tmp / "outside"
    outside.mkdir()
    return SimpleNamespace(src=src, whl=whl, target=target, outside=outside)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_dir, wheel) -> SimpleNamespace:
    """Finished one-epoch runs on 10 real images per class: ``logreg`` trained by the INSTALLED ``cxr-train``
    (outside the checkout), AlexNet by the checkout's ``train_accelerate.py``."""
    tmp = tmp_path_factory.mktemp("packaging-runs")
    data = make_subset(tmp / "data", sample_dir, 10)
    common = ["--data", str(data), "--epochs", "1", "--num-workers", "0"]
    logreg = tmp / "logreg"
    proc = run_installed(
        [
            str(wheel.target / "bin" / "cxr-train"),
            "--model",
            "logreg",
            "--output-dir",
            str(logreg),
            "--image-size",
            "32",
            *common,
        ],
        wheel.target,
        wheel.outside,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    alexnet = tmp / "alexnet"  # AlexNet's pooling needs 64 px
    proc = run_script(
        [
            PYTHON,
            "train_accelerate.py",
            "--model",
            "alexnet",
            "--no-pretrained",
            "--output-dir",
            str(alexnet),
            "--image-size",
            "64",
            *common,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(logreg=logreg, alexnet=alexnet)


def _pins(path):
    """``{normalised name: version}`` of a requirements file's ``==`` lines (``-r`` lines left out)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


def _bounds(deps):
    found = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([^,;\s]+)", dep)
        if match:  # cxr[...] self-references name extras, not packages
            found[re.sub(r"[-_.]+", "-", match.group(1).lower())] = match.group(2)
    return found


DEV_TOOLS = {"pytest", "playwright", "setuptools", "ruff", "import-linter", "grimp", "pytest-xdist", "execnet"}


def test_runtime_and_development_requirements_are_apart_and_pyproject_bounds_are_their_pins():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime, dev = _pins(REPO / "requirements.txt"), _pins(REPO / "requirements-dev.txt")
    assert not DEV_TOOLS & set(runtime)  # what a user installs to train or serve holds no test or lint tool
    assert DEV_TOOLS <= set(dev) and not set(dev) & set(runtime)
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text().splitlines()
    deps = _bounds(project["dependencies"])
    assert {n: runtime.get(n) for n in deps} == deps  # every bound is requirements.txt's pin
    assert not DEV_TOOLS & set(deps)
    # every third-party package cxr/ imports is a runtime dependency (scikit-learn: the guard's probe photos)
    assert {"scikit-learn", "gradio", "timm", "pydicom", "pyyaml"} <= set(deps)
    extras = project["optional-dependencies"]
    for name in ("test", "lint"):
        bounds = _bounds(extras[name])
        assert {n: dev.get(n) for n in bounds} == bounds
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"] == SCRIPTS
    assert "version" in project["dynamic"] and "version" not in project


def test_wheel_carries_every_module_the_template_and_the_metric_module(wheel):
    with zipfile.ZipFile(wheel.whl) as z:
        names = set(z.namelist())
        modules = {str(p.relative_to(wheel.src)) for p in (wheel.src / "cxr").rglob("*.py")}
        assert len(modules) > 20 and modules <= names, sorted(modules - names)
        assert z.read("cxr/model_cards/cxr_model_card.md") == (REPO / TEMPLATE).read_bytes()
        assert z.read(METRIC) == (REPO / METRIC).read_bytes()
        assert z.read(BUNDLED) == (REPO / BUNDLED).read_bytes()  # --choose-on auto's out-of-fold predictions
        dist_info = f"cxr-{_version()}.dist-info"
        metadata = z.read(f"{dist_info}/METADATA").decode()
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert f"\nVersion: {_version()}\n" in metadata and "Requires-Python: >=3.10" in metadata
    required = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert "Requires-Dist: timm>=1.0.31" in required
    assert not [line for line in required if re.search(r"pytest|playwright|tensorboard", line)]
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points
    # nothing outside the package: no tests, no top-level model_cards/ or scripts
    assert {n.split("/")[0] for n in names} == {"cxr", dist_info}
    assert sorted((wheel.target / "bin").iterdir()) == sorted(wheel.target / "bin" / s for s in SCRIPTS)


def test_editable_install_finds_the_template_in_the_checkout(tmp_path):
    """``pip install -e`` into a throwaway venv (no pip of its own; the requirements come from this
    interpreter's site-packages through a .pth file): cxr imports from the source folder, and the
    template is the source folder's model_cards/ file (the editable finder does not map the
    data-only ``cxr.model_cards``, so cxr.reporting.model_card falls back to the checkout path)."""
    src = copy_checkout(tmp_path / "src")
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    py = tmp_path / "venv" / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    here = sysconfig.get_paths()
    (purelib / "zz_requirements.pth").write_text(f"{here['purelib']}\n{here['platlib']}\n")
    _pip(
        ["--python", str(py), "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(src)],
        cwd=tmp_path,
    )
    assert not (src / "build").exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    code = """
import json, importlib.metadata, cxr, cxr.reporting.model_card
print(json.dumps([cxr.__file__, str(cxr.reporting.model_card.TEMPLATE_PATH), importlib.metadata.version("cxr"), cxr.__version__]))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(py), "-c", code], cwd=outside, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, template, dist_version, version = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(module) == src / "cxr" / "__init__.py"
    assert Path(template) == src / TEMPLATE and Path(template).is_file()
    assert dist_version == version == _version()
    assert {p.name for p in (tmp_path / "venv" / "bin").glob("cxr-*")} == set(SCRIPTS)


def test_checkout_without_install_uses_the_top_level_template():
    from cxr.reporting.model_card import TEMPLATE_PATH

    assert TEMPLATE_PATH == REPO / TEMPLATE


@pytest.mark.slow
def test_installed_package_predicts_and_timm_loads_its_folders(wheel, runs, sample_dir):
    image = str(sample_dir / XRAY)
    code = (
        GUARD.format(repo=str(REPO))
        + f"""
import timm, torch
from cxr import CXRClassifier
out = {{}}
for name, folder in {{"logreg": {str(runs.logreg / "model")!r}, "alexnet": {str(runs.alexnet / "model")!r}}}.items():
    clf = CXRClassifier.from_pretrained(folder)
    x = clf.inputs([{image!r}])
    by_timm = timm.create_model("local-dir:" + folder, pretrained=True).eval()
    with torch.no_grad():
        logits = by_timm(x)
        ours = clf.model(x)
    out[name] = {{"predict": clf.predict({image!r}), "cxr": clf.predict_proba([{image!r}]).tolist(),
                 "timm": clf.probabilities(logits).tolist(), "softmax": logits.softmax(-1).tolist(),
                 "max_logit_diff": float((logits - ours).abs().max()), "temperature": clf.temperature}}
print(json.dumps(out))
"""
    )
    got = run_json(code, wheel.target, wheel.outside)
    for name in ("logreg", "alexnet"):
        r = got[name]
        assert list(r["predict"]) == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"], name
        assert sum(r["predict"].values()) == pytest.approx(1, abs=1e-5)
        assert list(r["predict"].values()) == pytest.approx(r["cxr"][0], abs=1e-6)
        assert r["max_logit_diff"] < 1e-5, name
        assert r["timm"] == [pytest.approx(row, abs=1e-6) for row in r["cxr"]], name
        if r["temperature"] == 1:
            assert r["softmax"] == [pytest.approx(row, abs=1e-6) for row in r["cxr"]], name


@pytest.mark.slow
def test_installed_console_scripts_answer_help(wheel):
    procs = {
        s: subprocess.Popen(
            [str(wheel.target / "bin" / s), "--help"],
            cwd=wheel.outside,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=installed_env(wheel.target),
        )
        for s in SCRIPTS
    }
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{script}: {err[-2000:]}"
        text = " ".join(out.split())
        assert text.startswith(f"usage: {script} ") and "not for diagnosis" in text, script


@pytest.mark.slow
def test_installed_package_renders_the_model_card_from_its_template(wheel, runs):
    code = (
        GUARD.format(repo=str(REPO))
        + f"""
from cxr.reporting.model_card import TEMPLATE_PATH, render_model_card
card = render_model_card({str(runs.logreg)!r}, "cxr-test/logreg")
print(json.dumps({{"template": str(TEMPLATE_PATH), "text": card.text, "model": card.data.model_name}}))
"""
    )
    got = run_json(code, wheel.target, wheel.outside)
    assert Path(got["template"]) == wheel.target / "cxr" / "model_cards" / "cxr_model_card.md"
    metrics = json.loads((runs.logreg / "metrics.json").read_text())["test"]
    assert got["model"] == "cxr-test/logreg"
    assert "\n# cxr-test/logreg: " in "\n" + got["text"]
    assert f"{100 * metrics['accuracy']:.2f}%" in got["text"] and "not for diagnosis" in got["text"]
    assert "{{" not in got["text"]  # every template variable was filled


def python_blocks(markdown: str):
    """Every fenced ```python block, in order."""
    return re.findall(r"^```python[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)


@pytest.mark.slow
def test_model_card_code_runs_as_written(wheel, runs, hub, sample_dir, tmp_path):
    """Publish the logreg run with the installed ``cxr-hub`` to the local Hub stand-in, then run every
    Python block of its card in a fresh process, as a reader would: in an empty folder holding a real
    X-ray under the card's file name, with the installed package and no token."""
    from cxr.reporting.model_card import render_model_card

    repo_id = "cxr-test/packaged-logreg"
    hub_vars = dict(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
    proc = run_installed(
        [str(wheel.target / "bin" / "cxr-hub"), "push", str(runs.logreg), repo_id],
        wheel.target,
        wheel.outside,
        HF_TOKEN=TOKEN,
        HF_HOME=str(tmp_path / "hf-push"),
        **hub_vars,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    published = hub.repos[repo_id].snapshot("main")[1]["README.md"].decode()
    blocks = python_blocks(published)
    assert blocks, "the model card has no ```python block"
    # the installed template and the checkout's render the same code
    assert python_blocks(str(render_model_card(runs.logreg, repo_id))) == blocks

    reader = tmp_path / "reader"
    reader.mkdir()
    shutil.copy(sample_dir / XRAY, reader / "chest_xray.png")
    for i, block in enumerate(blocks):
        env = installed_env(wheel.target, HF_HOME=str(tmp_path / f"hf-home-{i}"), **hub_vars)
        env.pop("HF_TOKEN", None)
        proc = subprocess.run([PYTHON, "-c", block], cwd=reader, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, f"block {i + 1} of the card failed:\n{block}\n--- stderr:\n{proc.stderr[-4000:]}"
