"""What the app holds on the server, without launching it: the images pages keep (one memory budget for all),
the uploads waiting to be analysed (deleted after a wait), and the app's own cache folder (removed at stop).
The launched app's behaviour is in test_app.py."""

import os
from pathlib import Path

import pytest
from PIL import Image

from cxr.app.board import DecodedUpload
from cxr.app.kept import KeptImages
from cxr.app.server import AppFiles
from cxr.app.upload_guard import StoredUploads


@pytest.fixture
def film(sample_dir) -> DecodedUpload:
    return DecodedUpload(Image.open(next((sample_dir / "Normal").glob("*.png"))).convert("L"), [])


def test_kept_images_stay_within_their_budget_dropping_the_least_recently_used(film):
    size = film.image.width * film.image.height
    kept = KeptImages(budget_bytes=3 * size, seconds=900)
    a, b, c = (kept.put(film, now=t) for t in (0, 1, 2))
    assert kept.get(a, now=3) is film  # a is now the most recently used
    d = kept.put(film, now=4)  # a fourth passes the budget: b, the least recently used, goes
    assert kept.get(b, now=5) is None
    assert all(kept.get(t, now=5) is film for t in (a, c, d))
    assert kept.nbytes == 3 * size and len(kept) == 3


def test_kept_images_expire_after_their_last_use_and_can_be_dropped(film):
    kept = KeptImages(budget_bytes=1 << 30, seconds=10)
    old, used = kept.put(film, now=0), kept.put(film, now=0)
    assert kept.get(used, now=8) is film
    assert kept.get(old, now=11) is None  # unused for 11 s
    assert kept.get(used, now=15) is film  # used 7 s ago
    kept.drop(used)
    assert kept.get(used, now=15) is None and kept.nbytes == 0 and len(kept) == 0


def test_an_image_larger_than_the_whole_budget_is_not_kept(film):
    kept = KeptImages(budget_bytes=10, seconds=900)
    assert kept.get(kept.put(film)) is None and kept.nbytes == 0


def _stored_file(folder: Path, name: str) -> str:
    (folder / name).mkdir()
    path = folder / name / "film.png"
    path.write_bytes(b"x")
    return str(path)


def test_uploads_go_once_analysed_or_never_analysed_within_the_wait_and_the_rest_at_stop(tmp_path):
    stored = StoredUploads()
    old, claimed, fresh, analysed = (_stored_file(tmp_path, n) for n in ("old", "claimed", "fresh", "analysed"))
    stored.add([old, claimed, analysed], now=0)
    stored.add([fresh], now=100)
    stored.claim(claimed)  # a request analyses it: it stays while the request holds it, however long
    stored.claim(analysed)
    stored.release(analysed)  # that request ended: deleted, folder and all
    assert not os.path.exists(analysed) and not (tmp_path / "analysed").exists()
    assert stored.expire(older_than=60, now=101) == 1
    assert not os.path.exists(old) and not (tmp_path / "old").exists()
    assert os.path.exists(claimed) and os.path.exists(fresh) and stored.waiting() == 1
    assert stored.remove_all() == 2  # the app stops: the one held and the one waiting
    assert not os.path.exists(claimed) and not os.path.exists(fresh)
    # a path that is not a recorded upload (an example's copy, a heat map sent) is never deleted
    other = _stored_file(tmp_path, "example-copy")
    stored.claim(other)
    stored.release(other)
    assert os.path.exists(other)


def test_the_same_film_uploaded_twice_stays_until_both_are_analysed(tmp_path):
    """Gradio stores the same bytes under the same name at one path: two visitors sending one film share a file,
    which stays until the second analysis has ended."""
    stored = StoredUploads()
    shared = _stored_file(tmp_path, "shared")
    stored.add([shared], now=0)
    stored.add([shared], now=1)  # the second visitor's upload: the same path
    stored.claim(shared)  # the first visitor's request
    assert stored.pending(shared) == 1 and stored.waiting() == 1
    stored.release(shared)
    assert stored.expire(older_than=60, now=30) == 0 and os.path.exists(shared)
    stored.claim(shared)  # the second visitor's request, while a third visitor's arrives and is claimed
    stored.add([shared], now=40)
    stored.claim(shared)
    stored.release(shared)
    assert os.path.exists(shared)  # the third request still holds it
    stored.release(shared)
    assert not os.path.exists(shared) and stored.pending(shared) == 0 and stored.waiting() == 0
    stored.add([_stored_file(tmp_path, "shared")], now=100)  # an arrival never analysed expires as any does
    assert stored.expire(older_than=60, now=200) == 1 and not os.path.exists(shared)


def test_nothing_is_deleted_while_an_upload_is_being_stored(tmp_path):
    """Gradio makes an upload's folder and moves the file in before the guard records it: a request ending, the
    expiry or a refused request meanwhile must not delete that film's file (another visitor may be sending it
    again) or its folder. What is due is deleted once no upload is being stored."""
    stored = StoredUploads()
    shared, old, other = (_stored_file(tmp_path, n) for n in ("shared", "old", "other"))
    stored.add([shared], now=0)
    stored.add([old], now=0)
    stored.claim(shared)
    with stored.storing():  # a second visitor sends the film: Gradio has made its folder, the guard not yet recorded it
        stored.release(shared)  # the first request ends
        assert stored.expire(older_than=60, now=1000) == 1  # the old upload is due, not deleted yet
        stored.refuse([other])  # a refused request stored this file: due as well
        assert all(os.path.exists(p) for p in (shared, old, other))
        stored.add([shared], now=1000)  # the guard records the second arrival
    assert os.path.exists(shared)  # the second visitor's request will analyse it
    assert not os.path.exists(old) and not os.path.exists(other)  # what was due, once nothing is being stored
    stored.claim(shared)
    stored.release(shared)
    assert not os.path.exists(shared)
    # nested: what is due waits for the last upload being stored, even if that one fails
    again = _stored_file(tmp_path, "again")
    stored.add([again], now=2000)
    stored.claim(again)
    with pytest.raises(OSError):
        with stored.storing():
            with stored.storing():
                stored.release(again)
            assert os.path.exists(again)
            raise OSError("the upload failed")
    assert not os.path.exists(again) and not (tmp_path / "again").exists()


def test_an_upload_kept_from_the_sweep_is_forgotten_by_it_once_deleted(tmp_path):
    """Attached to the page, the record keeps each upload from Gradio's sweep (its route and its input box record
    the path for it) and takes it out of the sweep's records when it deletes it."""
    from types import SimpleNamespace

    box = SimpleNamespace(keep_in_cache=set(), temp_files=set())
    page = SimpleNamespace(blocks={1: box}, upload_file_set=set())
    page.temp_file_sets = [page.upload_file_set, box.temp_files]
    stored = StoredUploads()
    stored.attach(page)
    upload = _stored_file(tmp_path, "upload")
    page.upload_file_set.add(upload)  # the route recorded it for its sweep
    stored.add([upload])
    assert page.upload_file_set == set() and box.keep_in_cache == {upload}
    box.temp_files.add(upload)  # a request names it: Gradio's preprocessing records it for its sweep
    stored.claim(upload)
    stored.release(upload)
    assert not os.path.exists(upload) and box.keep_in_cache == box.temp_files == set()


def _post_through_guard(guard, body_chunks):
    """One POST to the upload route through ``guard``, its body in ``body_chunks``; returns (status, body)."""
    import asyncio

    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1} for i, c in enumerate(body_chunks)
    ]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    size = str(sum(map(len, body_chunks))).encode()
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "headers": [(b"content-length", size)]}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_guard_holds_deletions_from_an_uploads_last_byte_until_it_is_recorded(tmp_path):
    """In front of a stand-in for Gradio's upload route (which, like Gradio's, stores the file once it has read the
    last byte and records it for its sweep): while the route stores a film, a request ending on another visitor's
    upload of the same film does not delete it (one ending before the last byte deletes its own at once); the stored
    upload is recorded; a refused request does not take another visitor's film with it."""
    import json

    from cxr.app.upload_guard import UploadGuard

    stored = StoredUploads()
    shared, early = _stored_file(tmp_path, "shared"), _stored_file(tmp_path, "early")
    stored.add([shared, early], now=0)
    stored.claim(shared)  # the first visitor's upload of the film, being analysed
    stored.claim(early)  # another upload, being analysed
    seen = {}

    def route(names, first_request_ends=False):
        async def app(scope, receive, send):
            while (await receive()).get("more_body"):
                if os.path.exists(early):  # the other analysis ends before the last byte: its upload goes at once
                    stored.release(early)
                    seen["deleted before the last byte"] = not os.path.exists(early)
            if first_request_ends:  # the first visitor's request ends while this upload is stored
                stored.release(shared)
                seen["kept while stored"] = os.path.exists(shared)
            paths = [shared if n == "film.png" else str(tmp_path / n) for n in names]
            for p in paths:
                Path(p).write_bytes(b"x")
            body = json.dumps(paths).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        return app

    guard = UploadGuard(route(["film.png"], True), tmp_path, 1 << 30, 1 << 20, (".png",), stored=stored)
    status, body = _post_through_guard(guard, [b"a" * 10, b"b" * 10])
    assert status == 200 and json.loads(body) == [shared]
    assert seen == {"deleted before the last byte": True, "kept while stored": True}
    assert os.path.exists(shared) and stored.pending(shared) == 1
    # a request carrying the same film and a page is refused whole, but the other visitor's film stays
    stored.claim(shared)  # the second visitor's request holds it
    guard = UploadGuard(route(["film.png", "page.html"]), tmp_path, 1 << 30, 1 << 20, (".png",), stored=stored)
    status, body = _post_through_guard(guard, [b"c" * 10])
    assert status == 415 and b"nothing was kept" in body
    assert os.path.exists(shared) and not (tmp_path / "page.html").exists()
    stored.release(shared)  # the second visitor's analysis ends: the film goes
    assert not os.path.exists(shared)


def test_the_app_gets_a_cache_folder_of_its_own_removed_whole_when_it_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    other = tmp_path / "another-app" / "file.png"  # another app sharing GRADIO_TEMP_DIR
    other.parent.mkdir()
    other.write_bytes(b"x")
    with AppFiles(upload_wait=60) as files:
        assert files.cache.parent == tmp_path.resolve() and os.environ["GRADIO_TEMP_DIR"] == str(files.cache)
        waiting = _stored_file(files.cache, "upload")
        files.uploads.add([waiting])
        (files.cache / "hash" / "image.png").parent.mkdir()
        (files.cache / "hash" / "image.png").write_bytes(b"heat map")
    assert not files.cache.exists() and other.is_file()
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path)
