"""The app's example films (cxr/app/examples.py), chosen from the real sample against real splits: never one a
served model trained on while a held-out one exists, and every bad folder a line, never a crash; and a visitor's
upload of one of the models' own films, known by its bytes, is said to be one."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.app.board import ModelBoard
from cxr.app.examples import (
    ExampleFilms,
    KnownFilms,
    choose_examples,
    screen_with,
    training_record,
    training_split,
)
from cxr.app.handlers import PageHandlers
from cxr.app.kept import KeptImages
from cxr.app.upload_guard import StoredUploads
from cxr.data.content import content_digests
from cxr.data.data_source import load_data_source
from cxr.data.folders import scan_image_folder
from cxr.data.splits import load_split_content, save_split, stratified_split
from cxr.errors import CXRError
from cxr.labels import CLASS_NAMES

FIXTURE = Path(__file__).parent / "fixtures" / "logreg-model"


@pytest.fixture(scope="module")
def names(sample_dir):
    """The sample's file names (``<Class>/<basename>``) by class, sorted as the chooser sorts them."""
    records = scan_image_folder(sample_dir)
    return {c: [f for _, f, y in records if y == i] for i, c in enumerate(CLASS_NAMES)}


def _split(train=(), validation=(), test=()):
    return {"train": list(train), "validation": list(validation), "test": list(test)}


def test_the_real_split_of_the_sample_gives_test_films_of_every_class(sample_dir):
    records = scan_image_folder(sample_dir)
    split = stratified_split([f for _, f, _ in records], [y for _, _, y in records], seed=1)
    choice = choose_examples(sample_dir, {"a/model": split, "b/model": split})
    assert [e.true_class for e in choice.examples] == list(CLASS_NAMES)
    for e in choice.examples:
        assert e.file_name in split["test"] and e.path.is_file() and e.path.parent.name == e.true_class
        assert e.tested == ("a/model", "b/model") and e.held_out
        assert e.caption == f"{e.true_class} · held out from training"
    assert choice.problems == []


def test_films_a_model_trained_or_tuned_on_are_passed_over(sample_dir, names):
    first, second, third = names["COVID"][:3]
    splits = {"m1": _split(train=[first], validation=[second], test=[third]), "m2": None}
    (covid,) = [e for e in choose_examples(sample_dir, splits).examples if e.true_class == "COVID"]
    # first and second were seen by m1; the third is m1's test film; m2's training films are unknown
    assert covid.file_name == third and covid.tested == ("m1",) and covid.unknown == ("m2",)
    assert covid.caption == "COVID · held out by 1 of 2 models"
    assert "not known" in covid.description and "test split of model m1" in covid.description
    # with no split known at all, nothing can be said held out
    (unknown,) = [e for e in choose_examples(sample_dir, {"m2": None}).examples if e.true_class == "COVID"]
    assert unknown.caption == "COVID · training films not known" and not unknown.tested


def test_a_film_in_every_test_split_comes_before_one_a_model_never_saw(sample_dir, names):
    unseen_by_m2, in_both = names["Normal"][0], names["Normal"][5]
    splits = {"m1": _split(test=[unseen_by_m2, in_both]), "m2": _split(test=[in_both])}
    (normal,) = [e for e in choose_examples(sample_dir, splits).examples if e.true_class == "Normal"]
    assert normal.file_name == in_both


def test_when_every_film_was_trained_on_the_example_says_so(tmp_path, sample_dir, names):
    folder = tmp_path / "examples"
    for c in CLASS_NAMES:
        (folder / c).mkdir(parents=True)
        for f in names[c][:2]:
            (folder / f).symlink_to(sample_dir / f)
    trained = [f for c in CLASS_NAMES for f in names[c][:2]]
    choice = choose_examples(folder, {"runs/x/model": _split(train=trained)})
    assert len(choice.examples) == 4 and all(e.seen == ("runs/x/model",) for e in choice.examples)
    assert all(e.caption.startswith("⚠") and "not a test" in e.description for e in choice.examples)
    assert sum("not a test" in line for line in choice.problems) == 4


def test_a_screen_skips_films_and_says_why(sample_dir, names):
    bad = names["Viral Pneumonia"][0]

    def screen(path):
        return "it does not look like a chest X-ray to m" if path.name == bad.split("/")[1] else None

    choice = choose_examples(sample_dir, {}, screen)
    (vp,) = [e for e in choice.examples if e.true_class == "Viral Pneumonia"]
    assert vp.file_name == names["Viral Pneumonia"][1]
    assert choice.problems == [f"example {bad} skipped: it does not look like a chest X-ray to m"]


def test_a_folder_with_no_readable_image_is_a_line_not_a_crash(tmp_path):
    folder = tmp_path / "broken"
    for c in CLASS_NAMES:
        (folder / c).mkdir(parents=True)
        (folder / c / "scan.png").write_bytes(b"not a png at all")
        (folder / c / "empty.png").write_bytes(b"")
    choice = choose_examples(folder, {}, screen_with(ModelBoard([])))
    assert choice.examples == []
    assert sum(line.startswith("no usable") for line in choice.problems) == 4
    assert any("cannot be read" in line and "empty" in line for line in choice.problems), choice.problems


def test_a_colour_photograph_is_not_offered(tmp_path, sample_dir, names):
    folder = tmp_path / "mixed"
    for c in CLASS_NAMES:
        (folder / c).mkdir(parents=True)
        (folder / names[c][0]).symlink_to(sample_dir / names[c][0])
    rng = np.random.default_rng(0)
    photo = np.zeros((256, 256, 3), np.uint8)
    photo[..., 0], photo[..., 1] = rng.integers(0, 255, (256, 256)), 200
    Image.fromarray(photo).save(folder / "COVID" / "AAA-holiday.png")  # sorts first
    choice = choose_examples(folder, {}, screen_with(ModelBoard([])))
    assert [e.file_name for e in choice.examples] == [names[c][0] for c in CLASS_NAMES]
    assert any("AAA-holiday.png skipped" in line and "colour photograph" in line for line in choice.problems)


@pytest.mark.parametrize("folder", ["missing", "not-kaggle"])
def test_a_folder_that_is_not_a_class_folder_layout_is_a_line(tmp_path, folder):
    if folder == "not-kaggle":
        (tmp_path / folder / "pictures").mkdir(parents=True)
    choice = choose_examples(tmp_path / folder, {})
    assert choice.examples == [] and len(choice.problems) == 1 and choice.problems[0].startswith("no examples from")


def test_training_split_of_a_run_folder_and_of_a_model_folder(tmp_path, names):
    split = _split(train=names["COVID"][:3], validation=names["COVID"][3:4], test=names["COVID"][4:5])
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    save_split(run / "split.json", split, seed=1)
    assert training_split(run / "model") == split
    alone = tmp_path / "copied-model"
    shutil.copytree(run / "model", alone)
    assert training_split(alone) is None  # a model folder copied out of its run: not known
    save_split(alone / "split.json", split, seed=1)
    assert training_split(alone) == split
    (alone / "split.json").write_text(json.dumps({"train": []}))
    assert training_split(alone) is None  # unreadable: not known (and logged)


def test_example_films_are_recognised_by_their_bytes(tmp_path, sample_dir, names):
    records = scan_image_folder(sample_dir)
    split = stratified_split([f for _, f, _ in records], [y for _, _, y in records], seed=1)
    films = ExampleFilms(choose_examples(sample_dir, {"m": split}).examples, copy_folder=lambda p: "copy-of-" + p.stem)
    covid = films.films[0]
    copy = tmp_path / "gradio-cache" / f"copy-of-{covid.path.stem}" / covid.path.name
    copy.parent.mkdir(parents=True)
    shutil.copy(covid.path, copy)
    assert films.holding(copy) is covid and films.holding(str(copy)) is covid
    assert films.holding(sample_dir / names["COVID"][-1]) is None  # another film
    assert films.holding(None) is None and films.holding(tmp_path / "gone.png") is None
    # a copy the sweep removed is known by its folder and name; another film of the same name is not
    copy.unlink()
    assert films.copied_as(copy) is covid
    assert films.copied_as(tmp_path / "gradio-cache" / "def456" / covid.path.name) is None
    assert films.copied_as(copy.parent / "other.png") is None
    assert ExampleFilms(films.films).copied_as(copy) is None


def test_a_split_file_holds_its_films_digests_and_an_older_one_none(tmp_path, sample_dir, names):
    split = _split(train=names["COVID"][:2], validation=names["Normal"][:1], test=names["Normal"][1:2])
    digests = content_digests(load_data_source(str(sample_dir)).dataset)
    save_split(tmp_path / "split.json", split, seed=1, content=digests)
    content = load_split_content(tmp_path / "split.json")
    assert content == {name: digests[name] for part in split.values() for name in part}  # the split's films only
    save_split(tmp_path / "older.json", split, seed=1)
    assert load_split_content(tmp_path / "older.json") == {}
    (tmp_path / "bad.json").write_text(json.dumps({**split, "content": ["not", "a", "map"]}))
    with pytest.raises(CXRError, match="not a map of file names to digests"):
        load_split_content(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def served(tmp_path_factory, sample_dir, names):
    """A served model (the fixture logreg) whose run trained on two COVID films, tuned on a Normal one and tested
    on another, with its split's digests; and a second model without them (a run written before digests)."""
    root = tmp_path_factory.mktemp("served")
    split = _split(train=names["COVID"][:2], validation=names["Normal"][:1], test=names["Normal"][1:2])
    digests = content_digests(load_data_source(str(sample_dir)).dataset)
    refs = []
    for run, content in (("new", digests), ("older", None)):
        shutil.copytree(FIXTURE, root / run / "model")
        save_split(root / run / "split.json", split, seed=1, content=content)
        refs.append(str(root / run / "model"))
    return refs, split


def _upload(tmp_path, sample_dir, name, as_name="my film.png"):
    """A visitor's upload of a film of the sample: the same bytes under another name and folder."""
    upload = tmp_path / "gradio-upload" / as_name
    upload.parent.mkdir(exist_ok=True)
    shutil.copy(sample_dir / name, upload)
    return upload


def _known(*refs):
    records = {r: training_record(r) for r in refs}
    return KnownFilms({r: split for r, (split, _) in records.items()}, {r: c for r, (_, c) in records.items()})


def test_an_upload_of_a_film_a_model_trained_on_says_so_whatever_its_name(tmp_path, sample_dir, names, served):
    (new, older), split = served
    known = _known(new, older)
    assert len(known) == 4  # the four films of the one split with digests
    trained = known.film(_upload(tmp_path, sample_dir, split["train"][0]))
    assert trained.file_name == split["train"][0] and not trained.offered and not trained.held_out
    # the older model's split names the same film: what it knew follows from the name, as for an example
    assert trained.seen == (new, older)
    assert trained.description.startswith(f"This upload is film {split['train'][0]} of the models' data")
    assert "that answer is not a test" in trained.description
    tested = known.film(_upload(tmp_path, sample_dir, split["test"][0]))
    assert tested.held_out and tested.tested == (new, older)
    assert known.film(_upload(tmp_path, sample_dir, names["Viral Pneumonia"][0])) is None  # none of their films
    assert known.film(tmp_path / "gone.png") is None and known.film(None) is None
    # the older run alone knows its films by name only: an upload is not recognised
    assert _known(older).film(_upload(tmp_path, sample_dir, split["train"][0])) is None


def test_each_model_is_judged_by_its_own_names_for_the_same_bytes(tmp_path, sample_dir, names):
    """Two runs name one film differently (``--label-map Lung_Opacity=Normal`` makes ``Normal/Lung_Opacity-…``
    of ``Lung_Opacity/Lung_Opacity-…``): each is asked by its own name, whichever model is listed first."""
    film = names["Lung_Opacity"][0]
    mapped = "Normal/" + film.split("/", 1)[1]
    digest = content_digests(load_data_source(str(sample_dir)).dataset)[film]
    four = _split(test=[film])  # tested it
    merged = _split(train=[mapped])  # trained on it, under the mapped name
    upload = _upload(tmp_path, sample_dir, film)
    for order in (("four", "merged"), ("merged", "four")):
        splits = {"four": four, "merged": merged}
        contents = {"four": {film: digest}, "merged": {mapped: digest}}
        known = KnownFilms({r: splits[r] for r in order}, {r: contents[r] for r in order})
        e = known.film(upload)
        assert e.seen == ("merged",) and e.tested == ("four",) and not e.held_out, order
    # a model with digests that do not include these bytes never saw the film, whatever its names
    other = KnownFilms({"four": four, "x": _split(train=[film])}, {"four": {film: digest}, "x": {film: "0" * 16}})
    assert other.film(upload).unseen == ("x",) and other.film(upload).tested == ("four",)


def test_the_page_and_the_api_say_when_a_model_trained_on_the_uploaded_film(tmp_path, sample_dir, names, served):
    (new, _older), split = served
    handlers = PageHandlers(ModelBoard.load([new]), KeptImages(64 << 20, 60), StoredUploads())
    handlers.known = _known(new)
    uploads = tmp_path / "gradio-upload"

    def stored(*args, **kwargs):  # as the upload route's guard does: each upload recorded, deleted once analysed
        upload = _upload(tmp_path, sample_dir, *args, **kwargs)
        handlers.uploads.add([str(upload)])
        return upload

    upload = stored(split["train"][1])
    *_, last = handlers.stream(str(upload), "GradCAM", "predicted class")
    status, kept = last[0], last[-1]
    assert f"This upload is film {split['train'][1]}" in status and "that answer is not a test" in status
    assert "not for diagnosis" in status
    assert not upload.exists()
    # the page's next analysis, of the image it kept (the file is gone), says so too
    *_, again = handlers.stream(str(upload), "EigenCAM", "Normal", kept)
    assert f"This upload is film {split['train'][1]}" in again[0] and again[-1] == kept
    upload = stored(split["train"][1], as_name="again.png")
    info = handlers.classify(str(upload))
    assert not upload.exists() and info["error"] is None and info["example"] is None
    assert info["known_film"]["trained_on_by"] == [new] and not info["known_film"]["held_out"]
    other = stored(split["test"][0])
    assert handlers.classify(str(other))["known_film"]["tested_by"] == [new]
    unknown = stored(names["Viral Pneumonia"][0], as_name="unknown.png")
    *_, last = handlers.stream(str(unknown), "GradCAM", "predicted class")
    assert "This upload is film" not in last[0] and "⚠" not in last[0]
    unknown = stored(names["Viral Pneumonia"][0], as_name="unknown-api.png")
    assert handlers.classify(str(unknown))["known_film"] is None
    assert not uploads.exists()  # each upload deleted once analysed, and its folder with the last
    uploads.mkdir()
    text = uploads / "notes.png"
    text.write_text("not a film")
    assert handlers.classify(str(text))["error"]  # not an image: refused, as before


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--examples", "MISSING"], "--examples folder not found"),
        (["--cache-sweep", "0,900"], "--cache-sweep takes EVERY,AGE"),
        (["--cache-sweep", "300"], "--cache-sweep takes EVERY,AGE"),
        (["--cache-sweep", "5,a"], "--cache-sweep takes EVERY,AGE"),
    ],
)
def test_bad_app_flags_are_one_line_before_any_model_loads(tmp_path, capsys, flags, message):
    from cxr.commands.app import main as app_main

    flags = [str(tmp_path / f) if f == "MISSING" else f for f in flags]
    assert app_main([*flags, "--models", "cxr-test/never-loaded"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "never-loaded" not in err
