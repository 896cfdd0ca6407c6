"""The Gradio behaviours the app's workarounds rely on (:mod:`cxr.app.gradio_internals`), one test each, run
against the installed Gradio: after an upgrade, a failure here names the workaround that no longer holds. Most run
Gradio's own code in this process; the upload route's are checked on a small page served on 127.0.0.1 the way the
app serves its page (its cache folder, its guard, its launch options)."""

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path

import pytest
from helpers import call, free_port

from cxr.app import gradio_internals as gi
from cxr.app.server import AppFiles, ServerLimits, launch_options
from cxr.commands.app import main as app_main
from cxr.errors import CXRError

UNTESTED = "6.999.0"


@pytest.fixture
def film(tmp_path, sample_dir) -> Path:
    """A real film outside Gradio's cache, last modified long ago (so a refreshed copy shows)."""
    path = tmp_path / "films" / "Normal-1.png"
    path.parent.mkdir()
    path.write_bytes(next((sample_dir / "Normal").glob("*.png")).read_bytes())
    os.utime(path, (1e9, 1e9))
    return path


@pytest.fixture
def gradio_cache(tmp_path) -> Path:
    """A Gradio cache folder of the test's own, named as the app names its own."""
    folder = (tmp_path / "gradio-cache").resolve()
    folder.mkdir()
    previous = gi.use_gradio_cache(folder)
    yield folder
    gi.restore_gradio_cache(previous)


def _files(folder: Path) -> set:
    return {p for p in folder.rglob("*") if p.is_file()}


# -- the version check ---------------------------------------------------------------------------------------------


def test_an_untested_gradio_gets_one_warning_line_and_a_tested_one_none(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger=gi.__name__)
    monkeypatch.setattr(gi, "installed_gradio_version", lambda: UNTESTED)
    assert gi.warn_if_untested_gradio()
    (record,) = [r for r in caplog.records if r.name == gi.__name__]
    line = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in line
    assert line == (
        f"Gradio {UNTESTED} is not a version cxr's app was tested with ({', '.join(gi.TESTED_GRADIO_VERSIONS)}); "
        "its workarounds in cxr/app/gradio_internals.py may not hold."
    )
    caplog.clear()
    assert not gi.warn_if_untested_gradio(gi.TESTED_GRADIO_VERSIONS[0])
    assert not caplog.records


def test_the_app_warns_of_an_untested_gradio_when_it_starts(monkeypatch, caplog):
    """``python app.py`` says it before anything else it does (here it stops where the models would load)."""

    def stop_here(models):
        raise CXRError("stopped where the models load")

    monkeypatch.setattr(gi, "installed_gradio_version", lambda: UNTESTED)
    monkeypatch.setattr("cxr.commands.app.resolve_model_refs", stop_here)
    caplog.set_level(logging.WARNING, logger=gi.__name__)
    assert app_main(["--models", "cxr-test/none"]) == 2
    assert [r.getMessage().split(" is not")[0] for r in caplog.records if r.name == gi.__name__] == [
        f"Gradio {UNTESTED}"
    ]


def test_the_installed_gradio_is_one_the_workarounds_were_tested_with():
    """After a Gradio upgrade: when every other test here passes, add its version to TESTED_GRADIO_VERSIONS."""
    import gradio

    assert gi.installed_gradio_version() == gradio.__version__
    assert gradio.__version__ in gi.TESTED_GRADIO_VERSIONS, (
        f"Gradio {gradio.__version__} is installed; cxr/app/gradio_internals.py was tested with "
        f"{gi.TESTED_GRADIO_VERSIONS}"
    )


# -- the cache folder ----------------------------------------------------------------------------------------------


def test_gradio_caches_where_gradio_temp_dir_names_read_when_the_page_is_built(tmp_path, monkeypatch):
    import gradio as gr
    from gradio.utils import get_upload_folder

    monkeypatch.delenv(gi.CACHE_ENV, raising=False)
    assert gi.gradio_cache_root().resolve() == Path(get_upload_folder()).resolve()
    folder = tmp_path / "app-cache"
    previous = gi.use_gradio_cache(folder)
    try:
        assert previous is None and gi.gradio_cache_root() == folder == Path(get_upload_folder())
        with gr.Blocks() as demo:
            box = gr.File()
    finally:
        gi.restore_gradio_cache(previous)
    assert gi.CACHE_ENV not in os.environ
    # what the page was built with stays its cache, whatever the setting is now
    assert gi.blocks_cache_folder(demo) == folder.resolve() and Path(box.GRADIO_CACHE) == folder


# -- the upload box's own preprocess -------------------------------------------------------------------------------


def _preprocess(demo, payload):
    """Run an event's input through Gradio's block function, as a request does."""
    (fn,) = demo.fns.values()
    return asyncio.run(demo.preprocess_data(fn, [payload], None))


def _payload(path: Path) -> dict:
    return {"path": str(path), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def test_the_upload_box_hands_over_the_stored_path_creating_nothing(gradio_cache, film):
    """An event calls the preprocess set on the component instance: the stored path, no file made, a clean
    message for another type."""
    import gradio as gr

    stored = gradio_cache / "upload" / film.name
    stored.parent.mkdir()
    stored.write_bytes(film.read_bytes())
    with gr.Blocks() as demo:
        box = gi.single_file_input(file_types=[".png"])
        box.upload(lambda path: path, box, gr.Textbox())
    before = _files(gradio_cache)
    assert _preprocess(demo, _payload(stored)) == [str(stored)]
    assert _files(gradio_cache) == before
    text = gradio_cache / "upload" / "notes.txt"
    text.write_text("not a film")
    with pytest.raises(gr.Error, match=r"Invalid file type: upload one of \.png"):
        _preprocess(demo, _payload(text))


def test_gradio_files_own_preprocess_still_leaves_a_file_per_event(gradio_cache, film):
    """Why the upload box has its own preprocess: when this fails, gr.File no longer leaves a file in the cache
    per event, and single_file_input may go."""
    import gradio as gr

    stored = gradio_cache / "upload" / film.name
    stored.parent.mkdir()
    stored.write_bytes(film.read_bytes())
    with gr.Blocks() as demo:
        box = gr.File(file_count="single", type="filepath")
        box.upload(lambda path: path, box, gr.Textbox())
    before = _files(gradio_cache)
    _preprocess(demo, _payload(stored))
    assert len(_files(gradio_cache) - before) == 1


# -- the cache sweep -----------------------------------------------------------------------------------------------


def test_the_sweep_removes_by_age_only_the_files_gradio_recorded(gradio_cache, film):
    """delete_cache deletes the uploads recorded and each component's copies once older than its age; a file it did
    not record stays (hence the app's own upload expiry, and its cache folder deleted whole at stop)."""
    import gradio as gr
    from gradio.route_utils import delete_files_created_by_app

    with gr.Blocks() as demo:
        box = gr.File()
    copy = Path(box.move_resource_to_block_cache(film))
    upload = gradio_cache / "upload" / film.name
    upload.parent.mkdir()
    upload.write_bytes(b"x")
    demo.upload_file_set.add(str(upload))
    unrecorded = gradio_cache / "tmp-unrecorded"
    unrecorded.write_bytes(b"")
    delete_files_created_by_app(demo, age=3600)  # all younger than an hour
    assert copy.is_file() and upload.is_file()
    delete_files_created_by_app(demo, age=0)
    assert not copy.exists() and not upload.exists() and unrecorded.is_file()


# -- the upload route, a copy handed out, on a served page ---------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, sample_dir):
    """A page with the app's upload box and an event handing out a film, in an app cache folder, behind the app's
    guard and launch options (Gradio's file size limit lowered to 1 MB); yields its URL, Blocks, files and film."""
    import gradio as gr

    films = tmp_path_factory.mktemp("served-films")
    film = films / "Normal-1.png"
    film.write_bytes(next((sample_dir / "Normal").glob("*.png")).read_bytes())
    with AppFiles(upload_wait=600) as files:
        with gr.Blocks() as demo:
            box = gi.single_file_input(file_types=[".png"])
            echo = gr.Textbox()
            handed = gr.File()
            gr.Button().click(lambda path: path, box, echo, api_name="echo")
            gr.Button().click(lambda: str(film), None, handed, api_name="hand_out")
        demo.queue()
        files.uploads.attach(demo)  # as build_demo does
        options = launch_options(
            files, ServerLimits(max_sessions=10, upload_space_mb=64), host="127.0.0.1", port=free_port()
        )
        _, url, _ = demo.launch(
            **{**options, "max_file_size": 1 << 20, "allowed_paths": [str(film)]}, prevent_thread_lock=True, quiet=True
        )
        try:
            yield url, demo, files, film
        finally:
            demo.close()


def _post(url: str, name: str, body: bytes):
    import httpx

    return httpx.post(url + "gradio_api/upload", files=[("files", (name, body, "application/octet-stream"))])


def test_the_upload_route_is_where_the_guard_looks_and_answers_as_it_reads(served):
    """POST <root>/gradio_api/upload stores a film as <cache>/<hash>/<name>, records it, answers the JSON list of
    stored paths; the guard sees the request, records the upload and takes it out of Gradio's record before the
    answer, so the cache sweep never deletes it; removing it leaves no folder."""
    from gradio.route_utils import delete_files_created_by_app

    url, demo, files, film = served
    route = demo.server_app.url_path_for("upload_file")
    assert gi.is_upload_request({"type": "http", "method": "POST", "path": route})
    assert Path(demo.server_app.uploaded_file_dir) == files.cache  # read when the server was created
    r = _post(url, film.name, film.read_bytes())
    assert r.status_code == 200, r.text
    (stored,) = gi.stored_upload_paths(r.status_code, r.content)
    assert r.json() == [stored]
    path = Path(stored)
    assert path.parent.parent == files.cache and len(path.parent.name) == 64 and path.name == film.name
    assert path.read_bytes() == film.read_bytes()
    assert files.uploads.pending(stored) == 1 and stored not in demo.upload_file_set
    delete_files_created_by_app(demo, age=0)  # the sweep, as if the upload were older than any age
    assert path.is_file()
    assert files.uploads.remove_all() == 1 and not path.parent.exists()


def test_the_guard_deletes_another_type_and_gradio_refuses_an_oversized_file_before_storing_it(served):
    url, _, files, film = served
    before = _files(files.cache)
    r = _post(url, "page.html", b"<script>alert(1)</script>")
    assert r.status_code == 415 and "nothing was kept" in r.json()["detail"], r.text
    r = _post(url, "big.png", film.read_bytes() + os.urandom(1 << 20))
    assert r.status_code == 413, r.text
    assert gi.stored_upload_paths(r.status_code, r.content) == []
    assert _files(files.cache) == before and files.uploads.waiting() == 0


def test_a_served_event_gets_the_uploads_path_and_leaves_nothing(served):
    """Through the queue, as the page sends it: the upload's stored path reaches the handler and the event adds
    no file to the cache (the box's own preprocess; the cache read on every request); the sweep leaves the upload,
    which the event recorded for it, to the app, which takes it out of the sweep's records when it deletes it."""
    from gradio.route_utils import delete_files_created_by_app

    url, demo, files, film = served
    stored = _post(url, film.name, film.read_bytes()).json()[0]
    before = _files(files.cache)
    (echoed,) = call(url, "echo", [{"path": stored, "meta": {"_type": "gradio.FileData"}}], uuid.uuid4().hex)
    assert echoed == stored and _files(files.cache) == before
    # the event recorded the input for the sweep (its box's temp_files): the upload is spared all the same
    assert any(stored in recorded for recorded in demo.temp_file_sets)
    delete_files_created_by_app(demo, age=0)
    assert Path(stored).is_file()
    assert files.uploads.remove_all() == 1  # deleted by the app: out of every record the sweep reads
    assert not any(stored in recorded for recorded in demo.temp_file_sets)


def test_a_film_handed_out_is_copied_where_its_hash_says_and_refreshed_when_handed_out_again(served):
    url, _, files, film = served
    (first,) = call(url, "hand_out", [], uuid.uuid4().hex)
    copy = Path(first["path"])
    assert copy == files.cache / gi.copy_folder_name(film) / film.name and copy.read_bytes() == film.read_bytes()
    changed = copy.stat().st_ctime_ns
    time.sleep(0.05)
    (again,) = call(url, "hand_out", [], uuid.uuid4().hex)
    assert Path(again["path"]) == copy and copy.stat().st_ctime_ns > changed  # the sweep ages it from now


# -- the full queue ------------------------------------------------------------------------------------------------


def test_a_request_beyond_the_full_queue_is_told_the_app_is_busy(tmp_path):
    """One event at a time and one place in the queue: a third request at once is refused with 503 and the busy
    sentence, through the page's route and the API's, and gradio_client says the queue is full; the two that got in
    are answered, and the server serves on."""
    import threading

    import gradio as gr
    import httpx
    from gradio_client import Client
    from gradio_client.utils import QueueError

    release = threading.Event()

    def slow(text):
        release.wait(30)
        return text

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        gr.Button().click(slow, box, out, api_name="slow", concurrency_limit=1)
    demo.queue(max_size=1)
    gi.say_busy_when_full(demo)
    _, url, _ = demo.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        fn_index = next(
            i for i, d in enumerate(httpx.get(url + "config").json()["dependencies"]) if d["api_name"] == "slow"
        )
        joins = []
        for k in range(2):  # one processing, one waiting: the queue is full
            join = {
                "data": [f"x{k}"],
                "fn_index": fn_index,
                "session_hash": f"s{k}",
                "event_data": None,
                "trigger_id": None,
            }
            joins.append(httpx.post(url + "gradio_api/queue/join", json=join))
            time.sleep(0.5)
        assert [r.status_code for r in joins] == [200, 200]
        join = {"data": ["x2"], "fn_index": fn_index, "session_hash": "s2", "event_data": None, "trigger_id": None}
        refused = httpx.post(url + "gradio_api/queue/join", json=join)
        assert refused.status_code == 503 and refused.json()["detail"] == gi.BUSY
        api = httpx.post(url + "gradio_api/call/slow", json={"data": ["x3"]})
        assert api.status_code == 503 and api.json()["detail"] == gi.BUSY
        with pytest.raises(QueueError, match="Queue is full! Please try again."):
            Client(url, verbose=False).predict("x4", api_name="/slow")
        release.set()
        assert call(url, "slow", ["x5"], "s5") == ["x5"]  # still serving once the queue drains
    finally:
        release.set()
        demo.close()


# -- an image handed out -------------------------------------------------------------------------------------------


def _gradio_own_save(processing_utils):
    """Gradio's ``save_pil_to_cache``, whether or not the app's replaced it in this process."""
    fn = processing_utils.save_pil_to_cache
    return getattr(fn, "_gradio_own", fn)


def _heat_map_like(seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 255, (256, 256, 3), dtype=np.uint8)


def test_an_image_handed_out_is_stored_where_its_bytes_hash_says_and_written_whole(tmp_path):
    """What the image and gallery components return is stored at Gradio's own path for it
    (``<cache>/<hash of the encoded bytes>/image.png``), through the app's replacement, leaving no staging file."""
    import gradio as gr
    from gradio import processing_utils
    from PIL import Image

    gi.write_images_whole()
    assert gi.write_images_whole() is False  # once per process
    arr = _heat_map_like()
    own = Path(_gradio_own_save(processing_utils)(Image.fromarray(arr), str(tmp_path / "own"), format="png"))
    ours = tmp_path / "ours"
    gallery = gr.Gallery(format="png")
    gallery.GRADIO_CACHE = str(ours)
    image = gr.Image(format="png")
    image.GRADIO_CACHE = str(ours)
    paths = [Path(gallery.postprocess([(arr, "a heat map")]).root[0].image.path), Path(image.postprocess(arr).path)]
    for path in paths:
        assert path.relative_to(ours.resolve()) == own.relative_to((tmp_path / "own").resolve())
        assert path.read_bytes() == own.read_bytes()
    assert [p.name for p in paths[0].parent.iterdir()] == ["image.png"]


def test_a_visitor_reading_an_image_while_another_request_stores_it_again_reads_it_whole(tmp_path):
    """Two requests that return the same heat map store it at one path: a reader of that path meanwhile gets the
    whole file every time (Gradio's own function truncates it in place first)."""
    import threading

    from gradio import processing_utils
    from PIL import Image

    gi.write_images_whole()
    img = Image.fromarray(_heat_map_like(1))
    path = Path(processing_utils.save_pil_to_cache(img, str(tmp_path), format="png"))
    whole = path.read_bytes()
    done = threading.Event()

    def store_again():
        for _ in range(300):
            processing_utils.save_pil_to_cache(img, str(tmp_path), format="png")
        done.set()

    writer = threading.Thread(target=store_again)
    writer.start()
    reads = []
    while not done.is_set():
        reads.append(path.read_bytes())
    writer.join()
    assert len(reads) > 10
    assert all(r == whole for r in reads), f"{sum(r != whole for r in reads)} of {len(reads)} reads were not whole"
    assert sorted(p.name for p in path.parent.iterdir()) == ["image.png"]
