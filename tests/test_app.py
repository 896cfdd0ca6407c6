"""The Gradio app, launched on 127.0.0.1 with models trained on the sample in this session, driven
through gradio_client and a real headless Chromium."""

import contextlib
import json
import os
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import call, example_table, launch_app, rss_kib, stop, upload_file
from hostile import write_dicom
from PIL import Image

from cxr.app.page import UPLOAD_TYPES

# Every test here starts processes or trains models: in the full suite (--runslow), not the fast default run.
pytestmark = pytest.mark.slow

MISSING = "cxr-test/not-published"
PREDICTED = "predicted class"


@pytest.fixture(scope="module")
def app(app_models, sample_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("app-log") / "app.log"
    args = ["--models", ",".join([*app_models, MISSING]), "--examples", str(sample_dir), "--concurrency", "4"]
    url, proc = launch_app(args, log)
    yield url, proc, app_models
    stop(proc)


def films_of_every(models, part):
    """The films (``<Class>/<name>``) in ``part`` of every model's split."""
    return sorted(
        set.intersection(*(set(json.loads((Path(m).parent / "split.json").read_text())[part]) for m in models))
    )


@pytest.fixture(scope="module")
def held_out_normal(app_models, sample_dir):
    """A Normal film of the sample that every app model held out (its upload gets no note that it trained on it)
    and no model's guard flags, not the one the examples offer (the first such): an upload of an example's bytes is
    said to be that example."""
    from cxr.app.board import ModelBoard
    from cxr.app.examples import screen_with

    screen = screen_with(ModelBoard.load(app_models))
    tested = [sample_dir / n for n in films_of_every(app_models, "test") if n.startswith("Normal/")]
    return [film for film in tested if screen(film) is None][1]


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    from gradio_client import Client

    return Client(app[0], verbose=False, download_files=tmp_path_factory.mktemp("answers"))


def predict(client, path, method="GradCAM", explain="predicted class"):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)) if path else None, method, explain, api_name="/predict")


def assert_good_answer(result, models):
    info, gallery = result
    assert info["error"] is None, info
    assert "not for diagnosis" in info["disclaimer"]
    for ref in models:
        entry = info["models"][ref]
        probs = entry["probabilities"]
        assert list(probs) == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert entry["predicted"] == max(probs, key=probs.get)
        with Image.open(gallery[entry["heatmap_index"]]["image"]) as heat:
            assert list(heat.size) == info["shown_size"]
            assert np.asarray(heat.convert("RGB")).std() > 5  # a real picture, not a blank
        assert gallery[entry["heatmap_index"]]["caption"] == ref
    return info


def test_real_xray_gets_every_model_probabilities_and_heat_map(app, client, sample_dir):
    info = assert_good_answer(predict(client, next((sample_dir / "COVID").glob("*.png"))), app[2])
    missing = info["models"][MISSING]
    assert missing["available"] is False and "cannot fetch config.json" in missing["error"]
    assert info["agreement"]


def test_classify_endpoint_gives_cxr_probabilities_without_heat_maps(app, client, tmp_path, sample_dir):
    from gradio_client import handle_file

    from cxr import CXRClassifier

    paths = [next((sample_dir / c).glob("*.png")) for c in ("COVID", "Viral Pneumonia")]
    for path in paths:
        info = client.predict(handle_file(str(path)), api_name="/classify")
        assert info["error"] is None and "not for diagnosis" in info["disclaimer"]
        assert info["models"][MISSING]["available"] is False
        for ref in app[2]:
            entry = info["models"][ref]
            clf = CXRClassifier.from_pretrained(ref)
            expected = dict(zip(clf.label_names, clf.predict_proba([path])[0].tolist()))
            assert entry["probabilities"] == pytest.approx(expected, abs=1e-5)
            assert entry["temperature"] == clf.temperature and "heatmap_index" not in entry
            # the decision by the model's saved rule, and the rule in words
            assert entry["decision"] == clf.decision(entry["probabilities"])
            assert entry["decision_rule"] == clf.decision_rule
            # the same numbers the full /predict answer carries
        full, _ = predict(client, path)
        for ref in app[2]:
            assert full["models"][ref]["probabilities"] == pytest.approx(info["models"][ref]["probabilities"], abs=1e-6)
    for case in ("empty submit", "text named .png", "truncated PNG"):
        bad = _make_bad_input(case, tmp_path, sample_dir)
        info = client.predict(handle_file(str(bad)) if bad else None, api_name="/classify")
        assert BAD_INPUTS[case] in info["error"], (case, info)


def test_api_endpoints_name_their_outputs_and_say_what_they_do(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/analyse", "/predict", "/classify"} <= set(api)
    for name in ("/analyse", "/predict", "/classify"):
        endpoint = api[name]
        assert len(endpoint["description"]) > 40, name
        labels = [r["label"] for r in endpoint["returns"]] + [p["label"] for p in endpoint["parameters"]]
        assert all(label and not label.startswith("value_") for label in labels), (name, labels)
    assert [r["label"] for r in api["/classify"]["returns"]] == ["probabilities"]
    assert [r["label"] for r in api["/predict"]["returns"]] == ["result", "heat maps"]
    assert [p["parameter_name"] for p in api["/predict"]["parameters"]] == ["image", "cam_method", "explain"]


def test_app_without_models_serves_a_page_that_says_what_it_needs(tmp_path, sample_dir):
    """A fresh Space: no --models, no app_models.txt, no runs/ — the app serves and explains, never exits."""
    from gradio_client import Client, handle_file

    env = {k: v for k, v in {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}.items() if k != "CXR_APP_MODELS"}
    url, proc = launch_app([], tmp_path / "app.log", cwd=tmp_path, env=env)
    try:
        config = urllib.request.urlopen(url + "config", timeout=10).read().decode()
        assert "No models to show yet" in config and "app_models.txt" in config and "cxr.hub space" in config
        client = Client(url, verbose=False, download_files=tmp_path / "answers")
        info = client.predict(handle_file(str(next((sample_dir / "COVID").glob("*.png")))), api_name="/classify")
        assert "started without models" in info["error"]
        assert proc.poll() is None
    finally:
        stop(proc)


def test_each_cam_method_and_explained_class(app, client, sample_dir):
    path = next((sample_dir / "Viral Pneumonia").glob("*.png"))
    for method in ("GradCAM++", "HiResCAM", "EigenCAM"):
        assert_good_answer(predict(client, path, method=method, explain="Normal"), app[2])


def test_page_streams_probabilities_before_heat_maps(app, client, sample_dir):
    from gradio_client import handle_file

    job = client.submit(
        handle_file(str(next((sample_dir / "Normal").glob("*.png")))), "GradCAM", "predicted class", api_name="/analyse"
    )
    job.result(timeout=120)
    # every step carries every output: no gr.skip() markers ({"__type__": "update"}), which would give the
    # session copies of the components whose files the cache sweep never removes
    states = [list(update) for update in job.outputs()]
    assert not any(isinstance(o, dict) and o.get("__type__") == "update" for u in states for o in u)
    n = len(app[2]) + 1  # models, plus the unavailable one
    labels = lambda u: u[2 : 2 + n]  # noqa: E731
    heatmaps = lambda u: u[2 + n : 2 + 2 * n]  # noqa: E731
    first_probs = next(i for i, u in enumerate(states) if any(labels(u)))
    assert not any(heatmaps(states[first_probs])), "probabilities must come before any heat map"
    assert sum(h is not None for h in heatmaps(states[-1])) == len(app[2])
    assert "not for diagnosis" in states[-1][0]
    # each model's heat map is one file from its first step to the last: the page fetches it once (the stream
    # sends only outputs that changed, and an unchanged heat map keeps its path)
    for i in range(len(app[2])):
        paths = {str(u[2 + n + i]) for u in states if u[2 + n + i] is not None}
        assert len(paths) == 1, paths


def _dicom_variant(tmp_path, name, **changes):
    """A small CR DICOM with some of its elements changed (pydicom)."""
    from pydicom import dcmread

    path = write_dicom(tmp_path / name, np.zeros((64, 64)))
    ds = dcmread(path)
    for key, value in changes.items():
        setattr(ds.file_meta if key == "TransferSyntaxUID" else ds, key, value)
    ds.save_as(path, enforce_file_format=False)
    return path


def _make_bad_input(case, tmp_path, sample_dir):
    """The file of one hostile or broken upload (``None``: an empty submit)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    from cxr.data.decode import MAX_DICOM_PIXELS

    real = next((sample_dir / "COVID").glob("*.png"))
    grey = Image.open(real).convert("L").resize((64, 64))
    path = tmp_path / f"upload-{case.replace(' ', '-')}.png"
    if case == "empty submit":
        return None
    if case == "text named .png":
        path.write_text("not pixels")
    elif case == "truncated PNG":
        path.write_bytes(real.read_bytes()[:3000])
    elif case == "1x1 image":
        Image.new("L", (1, 1)).save(path)
    elif case == "decompression bomb":
        Image.new("1", (20000, 20000)).save(path, optimize=True)
    elif case in ("GIF named .png", "ICO named .png", "PCX named .png", "TIFF named .png", "BMP"):
        fmt = case.split()[0]
        path = path.with_suffix(".bmp") if fmt == "BMP" else path
        grey.save(path, format=fmt)
    elif case == "PostScript named .png":  # Pillow would hand it to Ghostscript
        path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\n")
    elif case == "DICOM without pixels":
        path = write_dicom(tmp_path / "nopixels.dcm", np.zeros((64, 64)), with_pixels=False)
    elif case == "JPEG-LS DICOM":  # a compression no installed decoder reads
        path = _dicom_variant(
            tmp_path,
            "ls.dcm",
            TransferSyntaxUID=JPEGLSLossless,
            PixelData=encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 60]),
        )
    elif case == "DICOM claiming too many frames":
        path = _dicom_variant(tmp_path, "frames.dcm", NumberOfFrames=MAX_DICOM_PIXELS // (64 * 64) + 1)
    return path


#: Each hostile or broken upload and the message the visitor gets (the server keeps serving after each).
BAD_INPUTS = {
    "empty submit": "Upload a chest X-ray first",
    "text named .png": "not an image we can read",
    "truncated PNG": "truncated, damaged or not standard",
    "1x1 image": "too small",
    "decompression bomb": "refused before decoding",
    "GIF named .png": "Upload a PNG, JPEG or DICOM",
    "ICO named .png": "Upload a PNG, JPEG or DICOM",
    "PCX named .png": "Upload a PNG, JPEG or DICOM",
    "TIFF named .png": "Upload a PNG, JPEG or DICOM",
    "BMP": "refused by the upload route (415)",
    "PostScript named .png": "Upload a PNG, JPEG or DICOM",
    "DICOM without pixels": "no pixel data",
    "JPEG-LS DICOM": "JPEG-LS",
    "DICOM claiming too many frames": "a chest radiograph is one image",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_get_a_message_and_the_server_keeps_serving(case, app, client, tmp_path, sample_dir):

    path = _make_bad_input(case, tmp_path, sample_dir)
    if path is not None and path.suffix not in UPLOAD_TYPES:  # the upload route refuses it, and keeps nothing
        with pytest.raises(Exception, match="415"):
            predict(client, path)
        assert_good_answer(predict(client, next((sample_dir / "Lung_Opacity").glob("*.png"))), app[2])
        return
    info, gallery = predict(client, path)
    assert BAD_INPUTS[case] in info["error"], (case, info)
    assert "Traceback" not in info["error"] and "plugin" not in info["error"].lower()
    assert "not for diagnosis" in info["disclaimer"] and gallery == []
    assert_good_answer(predict(client, next((sample_dir / "Lung_Opacity").glob("*.png"))), app[2])


def test_a_path_like_file_name_is_only_a_name(app, client, tmp_path, sample_dir):
    """An upload named like a path is stored and analysed as a plain name (no file outside the cache)."""
    weird = tmp_path / "..%2f..%2fetc%2fpasswd.png"
    weird.write_bytes(next((sample_dir / "Normal").glob("*.png")).read_bytes())
    assert_good_answer(predict(client, weird), app[2])
    assert not Path("/etc/passwd.png").exists()


def test_an_upload_over_the_limit_is_refused_before_it_is_stored(app, client, tmp_path, sample_dir):
    import httpx
    from gradio.utils import get_upload_folder

    from cxr.data.decode import MAX_FILE_BYTES

    big = tmp_path / "oversized-upload.png"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with open(big, "rb") as fh:
        r = httpx.post(app[0] + "gradio_api/upload", files={"files": (big.name, fh, "image/png")}, timeout=300)
    assert r.status_code == 413, r.text[:300]
    assert not list(Path(get_upload_folder()).rglob(big.name))  # nothing of it kept on the server
    assert_good_answer(predict(client, next((sample_dir / "Normal").glob("*.png"))), app[2])


def test_other_image_kinds_are_analysed(app, client, tmp_path, sample_dir):
    from sklearn.datasets import load_sample_image

    grey = Image.open(next((sample_dir / "Normal").glob("*.png"))).convert("L")
    grey.convert("RGBA").save(tmp_path / "rgba.png")
    grey.convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257, mode="I;16").save(tmp_path / "sixteen.png")
    grey.convert("RGB").convert("CMYK").save(tmp_path / "cmyk.jpg")
    write_dicom(tmp_path / "cr.dcm", np.asarray(grey, dtype=np.float64) * 16, photometric="MONOCHROME1")
    for name in ("rgba.png", "palette.png", "sixteen.png", "cmyk.jpg", "cr.dcm"):
        info = assert_good_answer(predict(client, tmp_path / name), app[2])
        assert info["warnings"] == [], name
    Image.fromarray(load_sample_image("china.jpg")).save(tmp_path / "photo.jpg")
    info = assert_good_answer(predict(client, tmp_path / "photo.jpg"), app[2])
    assert any("colour photograph" in w for w in info["warnings"])


def test_twenty_concurrent_requests_are_all_answered(app, client, sample_dir):
    files = sorted(sample_dir.glob("*/*.png"))[::30][:20]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda p: predict(client, p), files))
    assert len(results) == 20
    for r in results:
        assert_good_answer(r, app[2])


@pytest.mark.slow
def test_memory_does_not_keep_growing_over_120_requests(app, client, sample_dir):
    """A quick check; bench/app_soak.py measures the same over half an hour of visitors (its test runs it briefly)."""
    files = sorted(sample_dir.glob("*/*.png"))
    pid = app[1].pid
    for p in files[:30]:  # warm-up: allocator pools, caches, Gradio's upload folder
        predict(client, p)
    before = rss_kib(pid)
    for i in range(120):
        predict(client, files[i % len(files)], method=("GradCAM", "GradCAM++", "EigenCAM")[i % 3])
    after = rss_kib(pid)
    assert after < before * 1.10, f"RSS grew from {before} KiB to {after} KiB"


@contextlib.contextmanager
def browser_page(url: str):
    """A page of the app in Debian's headless Chromium, loaded and showing the disclaimer."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
    assert Path(chromium).exists(), "install Debian's chromium (.ci/run does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            # not "networkidle": a page with per-visitor state keeps a heartbeat connection open (Gradio uses it
            # to drop the state when the tab closes)
            page.goto(url, wait_until="load")
            page.wait_for_selector("text=not for diagnosis", timeout=60_000)
            yield page
        finally:
            browser.close()


def wait_for_every_model(page, n_models: int) -> None:
    for i in range(n_models):
        page.wait_for_selector(f"#heatmap-{i} img", timeout=60_000)
        label = page.inner_text(f"#label-{i}")
        assert all(c in label for c in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")), label


@pytest.mark.slow
def test_real_browser_shows_every_model(app, sample_dir, tmp_path):
    shot = Path(os.environ.get("CXR_SCREENSHOT_DIR", tmp_path)) / "app.png"
    with browser_page(app[0]) as page:
        page.set_input_files("input[type=file]", str(next((sample_dir / "COVID").glob("*.png"))))
        wait_for_every_model(page, len(app[2]))
        assert "Unavailable" in page.inner_text(f"#model-{len(app[2])}")
        assert page.inner_text("#agreement").strip()
        for i in range(len(app[2])):  # each model's decision by its saved rule, and the rule in its header
            assert page.inner_text(f"#decision-{i}").startswith("Decision: ")
            assert "Normal only when P(Normal) ≥ " in page.inner_text(f"#model-{i}")
        page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as im:
        assert im.size[0] >= 1400


def test_an_analysed_upload_is_deleted_never_served_back_and_its_dicom_tags_never_shown(app, tmp_path, sample_dir):
    import httpx
    from pydicom import dcmread

    url = app[0]
    grey = Image.open(next((sample_dir / "COVID").glob("*.png"))).convert("L")
    dcm = write_dicom(tmp_path / "patient.dcm", np.asarray(grey, dtype=np.float64) * 16)
    ds = dcmread(dcm)
    ds.PatientName, ds.PatientID, ds.InstitutionName = "Doe^Jane", "PID-73519", "St Example Hospital"
    ds.save_as(dcm)
    for api_name, data in (
        ("predict", ["GradCAM", "predicted class"]),
        ("classify", []),
        ("analyse", ["GradCAM", "predicted class"]),
    ):
        upload = upload_file(url, dcm)
        stored = Path(upload["path"])
        assert stored.is_file() and httpx.get(f"{url}gradio_api/file={stored}").status_code == 200
        out = call(url, api_name, [upload, *data], uuid.uuid4().hex)
        analysed = out[0] if api_name == "analyse" else out[0]["error"] is None
        assert analysed and "⚠" not in str(out[0]), out[0]
        text = json.dumps(out)
        assert not any(tag in text for tag in ("Jane", "PID-73519", "Example Hospital")), api_name
        assert not stored.exists(), api_name  # deleted once analysed
        assert httpx.get(f"{url}gradio_api/file={stored}").status_code in (403, 404), api_name


def test_the_page_analyses_its_upload_again_after_the_file_is_gone_and_examples_stay(
    app, client, sample_dir, held_out_normal
):
    url, session = app[0], uuid.uuid4().hex
    upload = upload_file(url, held_out_normal)
    first = call(url, "analyse_page", [upload, "GradCAM", "predicted class", None], session)
    assert not Path(upload["path"]).exists() and "⚠" not in first[0]
    # the same page, other settings: analysed from the image it kept (the file is gone)
    again = call(url, "analyse_page", [upload, "EigenCAM", "Normal", None], session)
    assert "⚠" not in again[0] and "not for diagnosis" in again[0]
    assert all(isinstance(label, dict) for label in again[2:4]), again[2:4]  # both models' probabilities
    # another visitor cannot reach it by its name
    other = call(url, "analyse_page", [upload, "GradCAM", "predicted class", None], uuid.uuid4().hex)
    assert "upload it again" in other[0]
    # an image the app sent out, named as an upload by a hostile request, is analysed but not deleted
    full = call(
        url, "predict", [upload_file(url, next((sample_dir / "COVID").glob("*.png"))), "GradCAM", PREDICTED], session
    )
    heat = full[1][0]["image"]
    assert call(url, "classify", [heat], uuid.uuid4().hex)[0]["error"] is None
    assert Path(heat["path"]).is_file()
    # an example image, clicked and analysed, stays for the next visitor who clicked it
    (example,) = call(url, "load_example", [0], uuid.uuid4().hex)  # the upload component's new value
    for _ in range(2):
        out = call(url, "predict", [example, "GradCAM", "predicted class"], uuid.uuid4().hex)
        assert out[0]["error"] is None, out[0]
    assert Path(example["path"]).is_file()


def _test_films(models) -> list:
    """Each served model's test split (from its run folder's split.json)."""
    return [set(json.loads((Path(m).parent / "split.json").read_text())["test"]) for m in models]


def test_examples_are_films_every_model_held_out_and_say_their_class(app):
    url, _, models = app
    captions = [sample[0] for sample in example_table(url)["props"]["samples"]]
    assert captions == [f"{c} · held out from training" for c in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")]
    tests = _test_films(models)
    for i, caption in enumerate(captions):
        (film,) = call(url, "load_example", [i], uuid.uuid4().hex)
        info = call(url, "classify", [film], uuid.uuid4().hex)[0]
        assert info["error"] is None and set(models) <= set(info["models"])
        example = info["example"]
        assert all(example["file_name"] in test for test in tests), example
        assert example["true_class"] == caption.split(" · ")[0] == example["file_name"].split("/")[0]
        assert example["held_out"] and example["tested_by"] == models and example["trained_on_by"] == []


SWEPT_APP_SESSIONS = 4
SWEPT_APP_SPACE_MB = 64
SWEPT_APP_UPLOAD_WAIT_S = 6


@pytest.fixture(scope="module")
def swept_app(app_models, sample_dir, tmp_path_factory):
    """The app with Gradio's cache sweep every second for files older than two seconds, uploads never analysed
    deleted after 6 s, a Gradio cache of its own (at most 64 MB), the state of its 4 most recent sessions kept and
    one request processed at a time; yields its URL, process, models and that cache."""
    log = tmp_path_factory.mktemp("swept-app-log") / "app.log"
    cache = tmp_path_factory.mktemp("swept-app-gradio-cache")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(cache)}
    url, proc = launch_app(
        ["--models", ",".join(app_models), "--examples", str(sample_dir), "--cache-sweep", "1,2"]
        + ["--upload-wait", str(SWEPT_APP_UPLOAD_WAIT_S)]
        + ["--max-sessions", str(SWEPT_APP_SESSIONS), "--concurrency", "1", "--upload-space", str(SWEPT_APP_SPACE_MB)],
        log,
        env=env,
    )
    yield url, proc, app_models, cache
    stop(proc)


def _wait_until_gone(*paths: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while any(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"the cache sweep left {[str(p) for p in paths if p.exists()]}"
        time.sleep(0.2)


def test_examples_answer_after_the_cache_sweep_which_still_clears_uploads_and_heat_maps(swept_app, sample_dir):
    url, _, models, cache = swept_app
    session = uuid.uuid4().hex
    # each file is there when its request returns (checked at once: the sweep ages them from then, and one
    # request of a loaded machine can take longer than the 2 seconds the sweep allows)
    never_analysed = Path(upload_file(url, next((sample_dir / "Normal").glob("*.png")))["path"])
    assert never_analysed.is_file()
    full = call(
        url, "predict", [upload_file(url, next((sample_dir / "COVID").glob("*.png"))), "GradCAM", PREDICTED], session
    )
    heat_map = Path(full[1][0]["image"]["path"])
    assert heat_map.is_file()
    (clicked,) = call(url, "load_example", [0], session)
    assert Path(clicked["path"]).is_file()
    # the sweep removes what the app sent, the copy of the example clicked included; the upload never analysed
    # goes after the upload wait
    _wait_until_gone(never_analysed, heat_map, Path(clicked["path"]))
    # the page that clicked it before the sweep still gets an answer for it, and so does every later click
    page = call(url, "analyse_page", [clicked, "GradCAM", PREDICTED, None], session)
    assert "⚠" not in page[0] and "held out from training" in page[0], page[0]
    for i in range(4):
        (film,) = call(url, "load_example", [i], uuid.uuid4().hex)
        info, _ = call(url, "predict", [film, "GradCAM", PREDICTED], uuid.uuid4().hex)
        assert info["error"] is None and info["example"]["held_out"], info
        assert all(info["models"][m]["heatmap_index"] is not None for m in models)
    # and nothing else stays: a few sweeps later the cache holds no file (gr.File's own preprocess would leave
    # an empty file at the cache's top for every request above, which the sweep never removes)
    time.sleep(4)
    assert [str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()] == []


def test_an_upload_waits_for_its_analysis_past_the_sweeps_age_until_the_upload_wait(swept_app, held_out_normal):
    """Gradio's sweep ages what the app sends (heat maps, copies of examples); an upload is the app's to delete:
    one that waits longer than the sweep's age (a queue behind a crowd) is still there to be analysed."""
    url = swept_app[0]
    upload = upload_file(url, held_out_normal)
    time.sleep(4)  # two sweeps, each deleting what Gradio recorded more than 2 s ago
    assert Path(upload["path"]).is_file()
    info = call(url, "classify", [upload], uuid.uuid4().hex)[0]
    assert info["error"] is None, info
    assert not Path(upload["path"]).exists()  # analysed: deleted


def test_an_upload_of_a_film_the_models_trained_on_says_so_on_the_page_and_in_the_api(app, sample_dir, tmp_path):
    """The launched app knows its models' films by their bytes (their runs' split.json): a visitor's upload of a
    training film, under any name, is said to be that film, and that the models' answers on it are not a test."""
    url, models = app[0], app[2]
    name = next(n for n in films_of_every(models, "train") if n.startswith("COVID/"))
    renamed = tmp_path / "my-upload.png"
    renamed.write_bytes((sample_dir / name).read_bytes())
    info = call(url, "classify", [upload_file(url, renamed)], uuid.uuid4().hex)[0]
    assert info["error"] is None and info["example"] is None, info
    assert info["known_film"]["file_name"] == name and info["known_film"]["trained_on_by"] == models, info
    page = call(url, "analyse_page", [upload_file(url, renamed), "GradCAM", PREDICTED, None], uuid.uuid4().hex)
    assert f"This upload is film {name}" in page[0] and "that answer is not a test" in page[0], page[0]
    tested = [n for n in films_of_every(models, "test") if n.startswith("COVID/")][-1]  # not the example (the first)
    info = call(url, "classify", [upload_file(url, sample_dir / tested)], uuid.uuid4().hex)[0]
    assert info["known_film"]["held_out"] and info["known_film"]["tested_by"] == models, info


def test_the_server_keeps_the_state_of_its_most_recent_sessions_only(swept_app, held_out_normal):
    """--max-sessions N: a page among the N most recently active analyses again from the image it kept; once
    N other sessions came after it, it is asked to upload the film again (and the server's memory is bounded)."""
    url = swept_app[0]
    film = held_out_normal
    page, upload = uuid.uuid4().hex, upload_file(url, film)
    assert "⚠" not in call(url, "analyse_page", [upload, "GradCAM", PREDICTED, None], page)[0]
    assert not Path(upload["path"]).exists()  # from now on only the page's kept image can be analysed again

    def others(n: int) -> None:
        for _ in range(n):
            info = call(url, "classify", [upload_file(url, film)], uuid.uuid4().hex)[0]
            assert info["error"] is None, info

    others(SWEPT_APP_SESSIONS - 1)
    again = call(url, "analyse_page", [upload, "EigenCAM", "Normal", None], page)
    assert "⚠" not in again[0] and "not for diagnosis" in again[0], again[0]
    others(SWEPT_APP_SESSIONS)
    evicted = call(url, "analyse_page", [upload, "GradCAM", PREDICTED, None], page)
    assert "upload it again" in evicted[0] and "kept only for a while" in evicted[0], evicted[0]


def test_the_upload_route_keeps_only_films_within_its_space(swept_app, sample_dir, tmp_path):
    """What anyone may store through Gradio's upload route: a type the app does not analyse is deleted at once,
    a request must say its length, and the cache's bytes have a cap; each refusal is one sentence."""
    import httpx

    url, cache = swept_app[0], swept_app[3]
    upload_url = url + "gradio_api/upload"

    def stored() -> set:
        return {p.name for p in cache.rglob("*") if p.is_file()}

    page = tmp_path / "page.html"
    page.write_text("<script>alert(1)</script>")
    before = stored()
    r = httpx.post(upload_url, files=[("files", (page.name, page.read_bytes(), "text/html"))])
    assert r.status_code == 415 and "nothing was kept" in r.json()["detail"], r.text
    assert "page.html" not in stored() - before
    r = httpx.post(upload_url, content=iter([b"--x\r\n"]), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 411 and "Content-Length" in r.json()["detail"]
    big = tmp_path / "big.png"
    big.write_bytes(
        next((sample_dir / "Normal").glob("*.png")).read_bytes() + os.urandom((SWEPT_APP_SPACE_MB + 1) << 20)
    )
    r = httpx.post(upload_url, files=[("files", (big.name, big.open("rb"), "image/png"))], timeout=60)
    assert r.status_code == 507 and "upload space is full" in r.json()["detail"], r.text
    assert "big.png" not in stored()
    # a film is still taken and analysed
    film = next((sample_dir / "Normal").glob("*.png"))
    info = call(url, "classify", [upload_file(url, film)], uuid.uuid4().hex)[0]
    assert info["error"] is None, info


BOUNDED_APP_WAIT_S = 3


@pytest.fixture(scope="module")
def bounded_app(app_models, tmp_path_factory):
    """The app deleting uploads not analysed within 3 s and keeping 1 MB of decoded images for every page
    together, in a Gradio cache of its own; yields its URL, process, log and that cache."""
    log = tmp_path_factory.mktemp("bounded-app-log") / "app.log"
    cache = tmp_path_factory.mktemp("bounded-app-gradio-cache")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(cache)}
    args = ["--models", ",".join(app_models), "--upload-wait", str(BOUNDED_APP_WAIT_S), "--kept-images", "1"]
    url, proc = launch_app(args, log, env=env)
    yield url, proc, log, cache
    if proc.poll() is None:
        stop(proc)


def test_an_upload_never_analysed_is_removed_after_the_upload_wait(bounded_app, sample_dir):
    """--upload-wait: a file sent to the upload route and never analysed is deleted within the wait (plus the
    expiry's period), long before Gradio's 15-minute sweep; one analysed at once is answered as usual."""
    url = bounded_app[0]
    film = next((sample_dir / "Normal").glob("*.png"))
    never = Path(upload_file(url, film)["path"])
    assert never.is_file()
    info = call(url, "classify", [upload_file(url, film)], uuid.uuid4().hex)[0]
    assert info["error"] is None, info
    _wait_until_gone(never, timeout=BOUNDED_APP_WAIT_S + 5)
    assert not never.parent.exists()  # its folder too
    late = call(url, "classify", [{"path": str(never), "meta": {"_type": "gradio.FileData"}}], uuid.uuid4().hex)
    assert "upload it again" in late[0]["error"], late


def test_the_images_pages_keep_share_one_memory_budget(bounded_app, sample_dir, tmp_path, held_out_normal):
    """--kept-images 1: the decoded images every page keeps to analyse again fit in 1 MB together; the least
    recently used go first, and that page is asked to upload its film again."""
    url = bounded_app[0]
    page, upload = uuid.uuid4().hex, upload_file(url, held_out_normal)
    assert "⚠" not in call(url, "analyse_page", [upload, "GradCAM", PREDICTED, None], page)[0]
    again = call(url, "analyse_page", [upload, "EigenCAM", "Normal", None], page)
    assert "⚠" not in again[0], again[0]
    large = tmp_path / "large.png"  # 800² grey, 0.64 MB decoded: two of them pass the budget
    Image.open(next((sample_dir / "COVID").glob("*.png"))).convert("L").resize((800, 800)).save(large)
    for _ in range(2):
        assert (
            "⚠"
            not in call(url, "analyse_page", [upload_file(url, large), "GradCAM", PREDICTED, None], uuid.uuid4().hex)[0]
        )
    dropped = call(url, "analyse_page", [upload, "GradCAM", PREDICTED, None], page)
    assert "upload it again" in dropped[0], dropped[0]


def test_sigterm_stops_the_app_and_removes_everything_it_stored(bounded_app, sample_dir):
    """A Space or container stopping the app (SIGTERM) stops it as Ctrl-C does: an upload never analysed, the
    heat maps sent, every file the app and Gradio wrote in the app's cache folder are removed."""
    url, proc, log, cache = bounded_app
    film, other = sorted((sample_dir / "Normal").glob("*.png"))[:2]  # two films: one content, one stored path
    never_analysed = Path(upload_file(url, other)["path"])
    answer, gallery = call(url, "predict", [upload_file(url, film), "GradCAM", PREDICTED], uuid.uuid4().hex)
    assert answer["error"] is None and gallery, answer
    assert never_analysed.is_file() and any(p.is_file() for p in cache.rglob("*.png") if p != never_analysed)
    proc.send_signal(15)
    proc.wait(timeout=30)
    assert [str(p) for p in cache.rglob("*") if p.is_file()] == []
    assert list(cache.iterdir()) == []  # the app's own folder inside it too
    assert "stored uploads removed" in log.read_text()


def _event_times(url: str, api_name: str, data: list, times: dict) -> None:
    """Run an event through the queue; record when (monotonic) its processing started and when it completed."""
    import httpx

    deps = httpx.get(url + "config").json()["dependencies"]
    fn_index = next(i for i, d in enumerate(deps) if d.get("api_name") == api_name)
    session = uuid.uuid4().hex
    join = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    httpx.post(url + "gradio_api/queue/join", json=join).raise_for_status()
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=300) as events:
        for line in events.iter_lines():
            msg = json.loads(line[5:]) if line.startswith("data:") else {}
            if msg.get("msg") in ("process_starts", "process_completed"):
                times[msg["msg"]] = time.monotonic()
                if msg["msg"] == "process_completed":
                    assert msg.get("success", True), msg
                    return


def test_one_concurrency_limit_bounds_every_endpoint_together(swept_app, sample_dir, tmp_path):
    """--concurrency 1: a /classify sent while a /predict is being processed waits for it (with a limit per
    endpoint it would run beside it); and Gradio's monitoring dashboard is not served."""
    import httpx

    url = swept_app[0]
    film = next((sample_dir / "COVID").glob("*.png"))
    big = tmp_path / "big.png"
    Image.open(film).convert("L").resize((2048, 2048)).save(big)  # a few seconds of Grad-CAM on 2 cores
    slow, fast = {}, {}
    heavy = ThreadPoolExecutor(1).submit(
        _event_times, url, "predict", [upload_file(url, big), "GradCAM++", PREDICTED], slow
    )
    deadline = time.monotonic() + 30
    while "process_starts" not in slow:
        assert time.monotonic() < deadline and not heavy.done(), "the /predict request never started"
        time.sleep(0.01)
    _event_times(url, "classify", [upload_file(url, film)], fast)
    heavy.result()
    assert fast["process_starts"] >= slow["process_completed"] - 0.05, (slow, fast)
    for path in ("monitoring", "monitoring/summary"):
        assert httpx.get(url + path).status_code in (403, 404), path


@pytest.mark.slow
def test_a_visitor_clicks_an_example_after_sweeps_in_a_real_browser(swept_app, tmp_path):
    url, _, models, _ = swept_app
    time.sleep(5)  # several sweeps since start: every copy made at start-up is older than their age
    with browser_page(url) as page:
        for caption, wait in (("Viral Pneumonia · held out from training", 0), ("COVID · held out from training", 4)):
            time.sleep(wait)  # another sweep between the two visits
            true_class = caption.split(" · ")[0]
            page.get_by_text(caption).click()
            # the film arrives in the upload box (its file name starts with its class), then it is analysed
            has = "(c) => document.querySelector('#%s').innerText.includes(c)"
            page.wait_for_function(has % "upload", arg=true_class, timeout=10_000)
            page.get_by_role("button", name="Analyse").click()
            # this film's finished analysis: its class in the status, no longer computing heat maps
            done = "(c) => { const s = document.querySelector('#status').innerText; return s.includes(c)"
            done += " && !s.includes('Computing') && s.includes('not for diagnosis'); }"
            page.wait_for_function(done, arg=true_class, timeout=60_000)
            wait_for_every_model(page, len(models))
            status = page.inner_text("#status")
            assert "held out from training" in status and "⚠" not in status, status
        page.screenshot(path=str(tmp_path / "after-sweeps.png"), full_page=True)


def test_an_examples_folder_of_training_films_photos_and_broken_files_is_lines_and_a_page_note(
    app_models, sample_dir, tmp_path
):
    import httpx

    from cxr.models.ood import probe_images

    lite0 = app_models[0]
    train = json.loads((Path(lite0).parent / "split.json").read_text())["train"]
    metrics = json.loads((Path(lite0).parent / "metrics.json").read_text())
    folder = tmp_path / "examples"
    for c in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"):
        (folder / c).mkdir(parents=True)
        for name in [n for n in train if n.startswith(c + "/")][:2]:
            (folder / name).symlink_to(sample_dir / name)
    # not in any split, so tried first: a grey non-radiograph that lite0's guard flags, and a broken file
    probe = next(name for name in probe_images() if name not in metrics["ood"]["probes_missed"])
    probe_images()[probe].save(folder / "COVID" / "AAA-probe.png")
    (folder / "COVID" / "AAB-broken.png").write_bytes(b"\x89PNG broken")
    url, proc = launch_app(["--models", ",".join(app_models), "--examples", str(folder)], tmp_path / "app.log")
    try:
        log = (tmp_path / "app.log").read_text()
        assert f"AAA-probe.png skipped: it does not look like a chest X-ray to {lite0}" in log, log[-3000:]
        assert "AAB-broken.png skipped: it cannot be read" in log
        assert log.count("so its answer there is not a test") == 4
        notes = next(
            c["props"]["value"]
            for c in httpx.get(url + "config").json()["components"]
            if c.get("props", {}).get("elem_id") == "example-notes"
        )
        assert notes.count("that answer is not a test") == 4
        assert all(caption[0].startswith("⚠") for caption in example_table(url)["props"]["samples"])
        (film,) = call(url, "load_example", [0], uuid.uuid4().hex)
        info = call(url, "classify", [film], uuid.uuid4().hex)[0]
        assert info["error"] is None and info["example"]["trained_on_by"] == app_models
    finally:
        stop(proc)


def test_quickstart_serves_two_models_whose_test_films_are_the_examples(tmp_path, sample_dir):
    """``python app.py --quickstart DATA`` from a folder with no runs: two models trained, both served first."""
    from helpers import make_subset

    # 30 films a class: 3 in each test split, so that one the guard of a model this small flags leaves others
    data = make_subset(tmp_path / "data", sample_dir, 30)
    home = tmp_path / "checkout"
    home.mkdir()
    env = {k: v for k, v in {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}.items() if k != "CXR_APP_MODELS"}
    url, proc = launch_app(["--quickstart", str(data)], tmp_path / "app.log", cwd=home, env=env, timeout=600)
    try:
        models = [str(Path("runs") / name / "model") for name in ("quickstart-lite0", "quickstart-logreg")]
        tests = [set(json.loads((home / m).parent.joinpath("split.json").read_text())["test"]) for m in models]
        captions = [sample[0] for sample in example_table(url)["props"]["samples"]]
        assert len(captions) == 4 and all(c.endswith("held out from training") for c in captions)
        for i in range(4):
            (film,) = call(url, "load_example", [i], uuid.uuid4().hex)
            info = call(url, "classify", [film], uuid.uuid4().hex)[0]
            assert list(info["models"]) == models, info  # both, and nothing else
            assert all(info["models"][m]["probabilities"] for m in models)
            assert all(info["example"]["file_name"] in test for test in tests)
            assert info["agreement"].startswith(("All 2 models agree", "The models disagree"))
    finally:
        stop(proc)
