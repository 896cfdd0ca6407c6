"""The app's example films: chosen from a Kaggle-layout folder so that no served model trained on them.

Each served model's ``split.json`` (a run folder's, beside a Hub model's ``config.json``, or in the model folder)
says which films it trained on (its ``train`` part), tuned on (``validation``: the kept epoch, the temperature and
the guard's threshold come from it) and was tested on (``test``). :func:`choose_examples` picks, per class folder
(whatever classes the folder holds: ``Normal/`` and ``Tuberculosis/`` as well as the database's four), the
first film of the folder held out by every model — in the test part of each model that has a split, or in no part
of it (a model trained on other data) — that decodes and that no model's out-of-distribution guard flags. Only
when a class has no such film is one offered that a model saw, and then a start-up line and the page (from
:attr:`Example.seen`) say so. A visitor's upload is known the same way when its bytes are a film of a model's split
(:class:`KnownFilms`, from the content digests ``split.json`` holds), so that an answer on a film a model trained on
is never shown as a test. Nothing here imports Gradio. Research use only — not for diagnosis.

Example:
    >>> splits = {"runs/a/model": {"train": ["COVID/1.png"], "validation": [], "test": ["COVID/2.png"]}}
    >>> held_out_by(splits, "COVID/2.png"), held_out_by(splits, "COVID/1.png")
    (True, False)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from cxr.data.content import path_digest
from cxr.data.folders import folder_classes, scan_image_folder
from cxr.data.splits import SPLITS, load_split, load_split_content
from cxr.errors import CXRError
from cxr.locations import is_hub_id
from cxr.run_folder import SPLIT_NAME, RunFolder

__all__ = [
    "Split",
    "Example",
    "ExampleChoice",
    "ExampleFilms",
    "KnownFilms",
    "NOT_A_TEST",
    "training_split",
    "training_record",
    "held_out_by",
    "choose_examples",
    "screen_with",
]

_logger = logging.getLogger(__name__)

#: ``{"train": [...], "validation": [...], "test": [...]}``: file names as ``<Class>/<basename>``.
Split = Dict[str, List[str]]
#: What the page says of a model's answer on a film it trained or tuned on (an example's or an upload's note).
NOT_A_TEST = "that answer is not a test"
#: Films tried per class before the folder is said to have no usable example of it (each is decoded and
#: screened by every model at start-up).
MAX_TRIES_PER_CLASS = 12


def training_split(ref: Union[str, os.PathLike]) -> Optional[Split]:
    """The split a served model was trained with, or ``None`` when it is not known.

    A model folder ``runs/x/model`` reads ``runs/x/split.json`` (or a ``split.json`` of its own); a Hub model
    reads the ``split.json`` published beside its ``config.json``.
    """
    return training_record(ref)[0]


def training_record(ref: Union[str, os.PathLike]) -> Tuple[Optional[Split], Dict[str, str]]:
    """A served model's split (:func:`training_split`) and its films' content digests (``{file_name: digest}``,
    empty for a ``split.json`` written before training recorded them), from one read of its ``split.json``."""
    path = _split_file(ref)
    if path is None:
        return None, {}
    try:
        split = load_split(path)
    except CXRError as e:
        _logger.warning("%s: %s; its training films are not known", ref, e)
        return None, {}
    try:
        content = load_split_content(path)
    except CXRError as e:
        _logger.warning("%s: %s; its films are not known by their bytes", ref, e)
        return split, {}
    if not content:
        _logger.warning(
            "%s: its %s holds no content digests (written before training recorded them): an upload of one of its "
            "films is not recognised as one",
            ref,
            SPLIT_NAME,
        )
    return split, content


def _split_file(ref: Union[str, os.PathLike]) -> Optional[Path]:
    """The ``split.json`` of a served model (see :func:`training_split`), or ``None`` (logged)."""
    path: Optional[Path] = None
    if Path(ref).is_dir() or not is_hub_id(str(ref)):
        folder = Path(ref)
        run = RunFolder(folder.parent)
        candidates = [folder / SPLIT_NAME]
        if run.model_dir.resolve() == folder.resolve():
            candidates.append(run.split)
        path = next((p for p in candidates if p.is_file()), None)
    else:
        from huggingface_hub import hf_hub_download  # the Hub client loads only for a Hub id

        try:
            path = Path(hf_hub_download(str(ref), SPLIT_NAME))
        except Exception as e:  # not published with one, offline and not cached, unreachable
            _logger.warning(
                "%s: its %s could not be fetched (%s); its training films are not known", ref, SPLIT_NAME, e
            )
            return None
    if path is None:
        _logger.warning("%s: no %s beside it; its training films are not known", ref, SPLIT_NAME)
    return path


def held_out_by(splits: Mapping[str, Optional[Split]], file_name: str) -> bool:
    """Whether every model with a known split held ``file_name`` out of training and tuning."""
    return all(not _seen(s, file_name) for s in splits.values() if s is not None)


def _seen(split: Split, file_name: str) -> bool:
    return file_name in split["train"] or file_name in split["validation"]


@dataclasses.dataclass(frozen=True)
class Example:
    """One film — an offered example, or a visitor's upload that is one of the models' films — and what each
    served model knew of it.

    Attributes:
        path: the film.
        file_name: ``<Class>/<basename>``, as split files name it.
        true_class: its class folder.
        tested: models whose test part holds it.
        unseen: models whose split does not name it (trained on other data).
        seen: models that trained or tuned on it (their training or validation part).
        unknown: models without a known split.
        offered: one of the page's examples (``False``: a visitor's upload found to be this film by its bytes,
            :class:`KnownFilms`).
    """

    path: Path
    file_name: str
    true_class: str
    tested: Tuple[str, ...] = ()
    unseen: Tuple[str, ...] = ()
    seen: Tuple[str, ...] = ()
    unknown: Tuple[str, ...] = ()
    offered: bool = True

    @classmethod
    def of(cls, path: Path, file_name: str, splits: Mapping[str, Optional[Split]]) -> "Example":
        """The film ``file_name`` at ``path``, each model judged by whether its split names it."""
        parts = {ref: None if s is None else {p for p in SPLITS if file_name in s[p]} for ref, s in splits.items()}
        return cls.in_parts(path, file_name, parts)

    @classmethod
    def in_parts(
        cls, path: Path, file_name: str, parts: Mapping[str, Optional[Set[str]]], offered: bool = True
    ) -> "Example":
        """The film ``file_name`` at ``path``, given per model the parts of its split the film is in (empty: none,
        ``None``: the split is not known)."""

        def refs(test: Callable[[Optional[Set[str]]], bool]) -> Tuple[str, ...]:
            return tuple(ref for ref, p in parts.items() if test(p))

        return cls(
            Path(path),
            file_name,
            file_name.split("/")[0],
            tested=refs(lambda p: p is not None and "test" in p and not p & {"train", "validation"}),
            unseen=refs(lambda p: p is not None and not p),
            seen=refs(lambda p: p is not None and bool(p & {"train", "validation"})),
            unknown=refs(lambda p: p is None),
            offered=offered,
        )

    @property
    def held_out(self) -> bool:
        """No served model with a known split trained or tuned on it."""
        return not self.seen

    @property
    def caption(self) -> str:
        """The example's label on the page: its true class and whether it was held out from training."""
        if self.seen:
            return f"⚠ {self.true_class} · trained on by {len(self.seen)} model(s)"
        if self.unknown and not (self.tested or self.unseen):
            return f"{self.true_class} · training films not known"
        if self.unknown:
            return f"{self.true_class} · held out by {len(self.tested) + len(self.unseen)} of {self._count} models"
        return f"{self.true_class} · held out from training"

    @property
    def _count(self) -> int:
        return len(self.tested) + len(self.unseen) + len(self.seen) + len(self.unknown)

    @property
    def description(self) -> str:
        """One sentence for the page when this example is analysed."""
        name = Path(self.file_name).name
        if self.offered:
            parts = [f"Example {name}: a film labelled **{self.true_class}** in its database."]
        else:
            parts = [f"This upload is film {self.file_name} of the models' data, labelled **{self.true_class}** there."]
        if self.tested:
            parts.append(f"It is in the test split of {_models(self.tested)}: held out from training.")
        if self.unseen:
            parts.append(f"{_models(self.unseen, capital=True)} never saw it (trained on other films).")
        if self.seen:
            parts.append(
                f"⚠ {_models(self.seen, capital=True)} trained on it (training or validation split): {NOT_A_TEST}."
            )
        if self.unknown:
            parts.append(f"Which films {_models(self.unknown)} trained on is not known (no {SPLIT_NAME}).")
        return " ".join(parts)


def _models(refs: Sequence[str], capital: bool = False) -> str:
    if len(refs) == 1:
        return f"{'M' if capital else 'm'}odel {refs[0]}"
    return f"{'E' if capital else 'e'}very one of {len(refs)} models ({', '.join(refs)})"


@dataclasses.dataclass
class ExampleChoice:
    """What :func:`choose_examples` offers and what it has to say about it.

    Attributes:
        examples: the films offered, in class order.
        problems: start-up lines: an unusable folder, films skipped, classes without a usable film, examples
            that a served model trained on.
    """

    examples: List[Example] = dataclasses.field(default_factory=list)
    problems: List[str] = dataclasses.field(default_factory=list)


class ExampleFilms:
    """The examples on offer, recognised by their bytes: the copy of an example that Gradio makes in its cache
    (for each click) is the same film.

    Args:
        films: the examples, in the order the page lists them.
        copy_folder: the name of the folder a copy of a film gets in the app's cache (Gradio names it by the
            film's content), so that a copy the cache sweep removed is still known for the film it was;
            ``None``: gone copies are not recognised.
    """

    def __init__(self, films: Sequence[Example], copy_folder: Optional[Callable[[Path], str]] = None):
        self.films = list(films)
        self._by_size: Dict[int, List[Tuple[str, Example]]] = {}
        for e in self.films:
            self._by_size.setdefault(e.path.stat().st_size, []).append((path_digest(e.path), e))
        self._by_copy_folder = {copy_folder(e.path): e for e in self.films} if copy_folder else {}

    def holding(self, path: Union[str, os.PathLike, None]) -> Optional[Example]:
        """The example whose film ``path`` holds byte for byte, if any."""
        if not path or not Path(path).is_file():
            return None
        same_size = self._by_size.get(Path(path).stat().st_size)
        if not same_size:
            return None
        digest = path_digest(path)
        return next((e for d, e in same_size if d == digest), None)

    def copied_as(self, path: Union[str, os.PathLike]) -> Optional[Example]:
        """The example ``path`` was a copy of — a file of the example's name in the folder its copies get —
        whether or not the copy is still there; ``None`` for any other path (a visitor's upload of another
        film of the same name included)."""
        e = self._by_copy_folder.get(Path(path).parent.name)
        return e if e is not None and e.path.name == Path(path).name else None


class KnownFilms:
    """The served models' own films, recognised in a visitor's upload by their bytes: the content digests each
    model's ``split.json`` holds (:func:`training_record`), so that the page and the API say when a model trained
    on the film it answers (or held it out) however the upload is named.

    Each model with digests is judged by its own names for those bytes (two runs may name one film differently:
    ``--label-map``, another layout); a model whose split has no digests, by the name another model gives the film,
    as an example is; a model without a split is not known.

    Args:
        splits: per served model, its split (:func:`training_split`) or ``None``.
        contents: per served model, its films' content digests (``{file_name: digest}``; empty or absent: not
            known by their bytes).
    """

    def __init__(self, splits: Mapping[str, Optional[Split]], contents: Mapping[str, Mapping[str, str]]):
        self.splits = dict(splits)
        # per model with digests: digest -> (its first name for the film, the parts its names for it are in)
        self._by_model: Dict[str, Dict[str, Tuple[str, Tuple[str, ...]]]] = {}
        one_part = {part: (part,) for part in SPLITS}  # shared: a film is in one part (kept small at 100,000 films)
        for ref, split in self.splits.items():
            content = contents.get(ref) or {}
            if split is None or not content:
                continue
            part_of = {name: part for part in SPLITS for name in split[part]}
            films: Dict[str, Tuple[str, Tuple[str, ...]]] = {}
            for name, digest in content.items():
                part = part_of.get(name)
                if part is None:
                    continue
                if digest in films:  # the same bytes under two names of this split
                    first, parts = films[digest]
                    films[digest] = (first, tuple(sorted({*parts, part})))
                else:
                    films[digest] = (name, one_part[part])
            self._by_model[ref] = films

    def __len__(self) -> int:
        """The number of distinct films known by their bytes."""
        return len({d for films in self._by_model.values() for d in films})

    def film(self, path: Union[str, os.PathLike, None]) -> Optional[Example]:
        """What the served models knew of the film ``path`` holds byte for byte, or ``None`` when it is none of
        their films (or not a readable file)."""
        if not self._by_model or not path or not Path(path).is_file():
            return None
        try:
            digest = path_digest(path)
        except OSError:
            return None
        found = {ref: films[digest] for ref, films in self._by_model.items() if digest in films}
        if not found:
            return None
        name = next(iter(found.values()))[0]
        parts: Dict[str, Optional[Set[str]]] = {}
        for ref, split in self.splits.items():
            if split is None:
                parts[ref] = None
            elif ref in self._by_model:  # its own names for these bytes; none: not one of its films
                parts[ref] = set(found[ref][1]) if ref in found else set()
            else:  # a split without digests: by the name another model gives the film, as for an example
                parts[ref] = {p for p in SPLITS if name in split[p]}
        return Example.in_parts(Path(path), name, parts, offered=False)


#: Says why a film cannot be offered (it does not decode, a model's guard flags it), or ``None`` when it can.
Screen = Callable[[Path], Optional[str]]


def choose_examples(
    folder: Union[str, os.PathLike],
    splits: Mapping[str, Optional[Split]],
    screen: Optional[Screen] = None,
    per_class: int = 1,
    classes: Optional[Sequence[str]] = None,
) -> ExampleChoice:
    """Choose ``per_class`` films of each class of a Kaggle-layout ``folder`` to offer as examples.

    Films held out by every served model come first (those in every model's test split before those some model
    never saw), then films some model saw, each group in file-name order; ``screen`` rejects films that cannot be
    shown (tried up to :data:`MAX_TRIES_PER_CLASS` per class).

    Args:
        folder: a Kaggle-layout folder (``<Class>/images/*`` or ``<Class>/*``): any class folders, each a class.
        splits: per served model (its ref), its training split (:func:`training_split`) or ``None``.
        screen: see :data:`Screen`; ``None`` accepts every file.
        per_class: films per class.
        classes: only the folder's classes among these (the served models' classes); ``None``: every class
            folder.

    Returns:
        The examples and the start-up problems; never raises for a bad folder.
    """

    choice = ExampleChoice()
    if not Path(folder).is_dir():
        choice.problems.append(f"no examples from {folder}: no such folder")
        return choice
    try:
        records = scan_image_folder(folder)
        names = folder_classes(folder)
    except CXRError as e:
        choice.problems.append(f"no examples from {folder}: {e}")
        return choice
    for label, name in enumerate(names):
        if classes is not None and name not in classes:
            continue
        candidates = [Example.of(p, f, splits) for p, f, y in records if y == label]
        candidates.sort(key=lambda e: (len(e.seen), len(e.unseen), e.file_name))
        chosen, rejected = _screened(candidates, screen, per_class)
        choice.problems += [f"example {e.file_name} skipped: {why}" for e, why in rejected]
        if not chosen:
            choice.problems.append(f"no usable {name} example in {folder} (tried {len(rejected)} file(s))")
        choice.examples += chosen
    choice.problems += [
        f"example {e.file_name}: {_models(e.seen)} trained on this film (its training or validation split), so "
        f"its answer there is not a test; {folder} has no usable {e.true_class} film that every model held out"
        for e in choice.examples
        if e.seen
    ]
    return choice


def _screened(candidates: List[Example], screen: Optional[Screen], wanted: int) -> Tuple[List[Example], List]:
    chosen, rejected = [], []
    for e in candidates[: max(wanted, MAX_TRIES_PER_CLASS)]:
        if len(chosen) == wanted:
            break
        why = screen(e.path) if screen else None
        if why is None:
            chosen.append(e)
        else:
            rejected.append((e, why))
    return chosen, rejected


def screen_with(board) -> Screen:
    """A :data:`Screen` that decodes a film as an upload would be and asks every model of ``board`` (a
    :class:`cxr.app.board.ModelBoard`) whether it looks like the chest X-rays it was trained on."""

    def screen(path: Path) -> Optional[str]:
        result = board.classify(path)
        if result.error:
            return f"it cannot be read ({result.error})"
        if result.warnings:
            return "; ".join(result.warnings)
        flagged = [ref for ref, flag in result.out_of_distribution.items() if flag]
        if flagged:
            return f"it does not look like a chest X-ray to {', '.join(flagged)}"
        return None

    return screen
