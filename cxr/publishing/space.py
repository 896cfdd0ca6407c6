"""A Hugging Face Space for published cxr models, built and deployed in one command.

``python -m cxr.hub space ORG/NAME --models ORG/m1,ORG/m2`` checks everything first — the Space id,
the token, and that every model id is a published cxr checkpoint — then creates the Space
repository (``repo_type="space"``, Gradio SDK) and uploads exactly what it needs to start:

- ``app.py``: the app's entry point (:func:`cxr.commands.app.main`);
- ``cxr/``: this package, as installed or checked out (Python modules and package data);
- ``requirements.txt``: the app's runtime dependencies pinned at the versions running here
  (Gradio itself comes from the Space's ``sdk_version``);
- ``README.md``: front matter a Space accepts (``sdk``, ``sdk_version``, ``app_file``,
  ``python_version``, ``models`` and ``preload_from_hub`` so start-up downloads no weights: each model's
  ``config.json`` and ``model.safetensors`` come with the build; the small files beside them that the app also
  reads, its ``split.json`` and guard reference, are fetched at start);
- ``app_models.txt``: the models the app shows, one per line;
- ``examples/<Class>/<file>``, with ``--examples``: the films the app offers as examples (chosen by the command
  line from a folder so that every model held them out; the app checks again at start).

Nothing is uploaded when a check fails. Research use only — not for diagnosis.

Example:
    >>> url = deploy_space("my-org/cxr-demo", ["my-org/cxr-lite0", "my-org/cxr-resnet50"])   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from huggingface_hub import HfApi, SpaceCard, constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from cxr.errors import CXRError
from cxr.labels import DISCLAIMER
from cxr.locations import EXAMPLES_DIR
from cxr.models.pretrained import hub_is_offline
from cxr.publishing.publish import check_token
from cxr.reporting.model_card import LICENSE_LINK, LICENSE_NAME
from cxr.run_folder import MODEL_CONFIG_NAME, MODEL_WEIGHTS_NAME

__all__ = [
    "APP_PY",
    "SPACE_FILES",
    "validate_space_id",
    "check_models_published",
    "space_requirements",
    "build_space",
    "deploy_space",
]

_logger = logging.getLogger(__name__)

#: The Space's entry point: the same three lines as the repository's ``app.py``.
APP_PY = '''"""The cxr Gradio app on a Hugging Face Space. Research use only — not for diagnosis."""
import sys

from cxr.commands.app import main as app_main

if __name__ == "__main__":
    sys.exit(app_main())
'''
#: What a deployed Space holds besides the ``cxr/`` package.
SPACE_FILES = ("app.py", "README.md", "requirements.txt", "app_models.txt")
#: Runtime dependencies a Space must not pin: Gradio comes from the front matter's ``sdk_version``.
_SDK_PROVIDED = {"gradio"}
_MODEL_FILES = (MODEL_CONFIG_NAME, MODEL_WEIGHTS_NAME)
#: The ``cxr`` package folder, which a Space holds whole.
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def validate_space_id(space_id: Optional[str]) -> str:
    """Check that ``space_id`` is a well-formed ``OWNER/NAME``.

    Raises:
        CXRError: naming the problem.
    """
    if not space_id or space_id.count("/") != 1 or not all(space_id.split("/")):
        raise CXRError(
            f"malformed Space id {space_id!r}: expected OWNER/NAME (your user or organisation, a slash, "
            "a name); nothing was uploaded"
        )
    try:
        validate_repo_id(space_id)
    except HFValidationError as e:
        raise CXRError(f"malformed Space id {space_id!r}: {e}; nothing was uploaded") from None
    return space_id


def check_models_published(model_ids: Sequence[str], token: Optional[str] = None) -> Dict[str, str]:
    """Make sure every id is a published cxr model: its repository exists and holds ``config.json``
    with a ``cxr`` block and ``model.safetensors``.

    Args:
        model_ids: Hub model ids.
        token: a token that can read them (private models).

    Returns:
        ``{model id: its architecture}``.

    Raises:
        CXRError: listing every id that is malformed, missing, or not a cxr checkpoint.
    """

    if not model_ids:
        raise CXRError("--models needs at least one published model id (ORG/NAME); nothing was uploaded")
    api, found, problems = HfApi(token=token), {}, []
    for model_id in model_ids:
        try:
            if model_id.count("/") != 1:
                raise HFValidationError("expected ORG/NAME")
            validate_repo_id(model_id)
            info = api.model_info(model_id)
            files = {s.rfilename for s in info.siblings or []}
            missing = [f for f in _MODEL_FILES if f not in files]
            if missing:
                problems.append(f"{model_id}: not a cxr checkpoint (no {', '.join(missing)})")
                continue
            cfg = json.loads(Path(hf_hub_download(model_id, MODEL_CONFIG_NAME, token=token)).read_text())
            if not isinstance(cfg.get("cxr"), dict):
                problems.append(f"{model_id}: not a cxr checkpoint (its config.json has no 'cxr' block)")
                continue
            found[model_id] = str(cfg.get("architecture"))
            if info.private or info.gated:
                _logger.warning(
                    "%s is %s: the Space can load it only with a secret HF_TOKEN that may read it (Space settings)",
                    model_id,
                    "private" if info.private else "gated",
                )
        except HFValidationError as e:
            problems.append(f"{model_id}: malformed model id ({e})")
        except RepositoryNotFoundError:
            problems.append(f"{model_id}: no such model on the Hub (or private, and the token cannot read it)")
        except Exception as e:  # connection errors and the like
            problems.append(f"{model_id}: cannot check it ({type(e).__name__}: {e})")
    if problems:
        raise CXRError("cannot deploy the Space; nothing was uploaded:\n  " + "\n  ".join(problems))
    return found


def _runtime_requirements() -> List[str]:
    """Names of cxr's runtime dependencies: the installed distribution's metadata, else pyproject.toml."""
    try:
        requires = metadata.requires("cxr") or []
        if requires:
            return [r for r in requires if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        pass
    pyproject = _PACKAGE_DIR.parent / "pyproject.toml"
    if not pyproject.is_file():
        raise CXRError("cannot tell cxr's dependencies: cxr is neither installed nor run from its checkout")
    try:
        import tomllib  # Python 3.11's; 3.10 has no tomllib
    except ImportError:  # Python 3.10, from a checkout
        raise CXRError("cannot read pyproject.toml on Python 3.10: install cxr (pip install .) first") from None
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def space_requirements() -> str:
    """The Space's ``requirements.txt``: every runtime dependency pinned at the version running here
    (local version labels such as ``+cu130`` dropped), except what the Gradio SDK provides."""
    lines = [
        "# cxr's runtime dependencies, pinned at the versions that deployed this Space (python -m cxr.hub space).",
        "# Gradio comes from the README's sdk_version.",
    ]
    for requirement in _runtime_requirements():
        name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]
        if name.lower() in _SDK_PROVIDED:
            continue
        try:
            version = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            raise CXRError(f"cxr's dependency {name} is not installed here; install requirements.txt first") from None
        lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def _space_readme(
    space_id: str, model_ids: Sequence[str], architectures: Dict[str, str], examples: Sequence[str] = ()
) -> str:
    import gradio  # Gradio loads only when a page is built or served
    import yaml  # PyYAML loads only to write a Space's README front matter

    front = {
        "title": "cxr — chest X-ray classifiers",
        "emoji": "🩻",
        "colorFrom": "blue",
        "colorTo": "gray",
        "sdk": "gradio",
        "sdk_version": gradio.__version__,
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "app_file": "app.py",
        "pinned": False,
        "license": "other",
        "license_name": LICENSE_NAME,
        "license_link": LICENSE_LINK,
        "short_description": "Research-only chest X-ray classifiers with Grad-CAM",
        "models": list(model_ids),
        # downloaded when the Space is built, so starting the app fetches no weights
        "preload_from_hub": [f"{m} {','.join(_MODEL_FILES)}" for m in model_ids],
        "tags": ["medical-imaging", "chest-x-ray", "grad-cam", "cxr"],
    }
    rows = "\n".join(f"| [`{m}`](https://huggingface.co/{m}) | `{architectures.get(m, '?')}` |" for m in model_ids)
    films = (
        f"\n\nThe examples ({', '.join(f'`{e}`' for e in examples)}, in `{EXAMPLES_DIR}/`) are films every model "
        "held out from training (each model's `split.json`); they stay under the terms of the database they come "
        "from."
        if examples
        else ""
    )
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()}
---

# Chest X-ray classifiers, side by side

**{DISCLAIMER}** Upload a frontal chest X-ray: each model below gives the probabilities of its own
classes (those it was trained on; its model card lists them) and a Grad-CAM heat map. The models were trained
on databases whose classes can come from different hospitals and age groups, so they can answer from the
source of an image rather than from disease; each model card says how it was trained and scored.

| model | architecture |
|---|---|
{rows}

Deployed with `python -m cxr.hub space {space_id} --models {",".join(model_ids)}`; the models shown are
listed in `app_models.txt`. Programs can call the `/classify` endpoint (probabilities only) or `/predict`
(probabilities and heat maps) with `gradio_client`.{films}
"""


def build_space(
    folder: Union[str, Path],
    space_id: str,
    model_ids: Sequence[str],
    architectures: Optional[Dict[str, str]] = None,
    examples: Sequence[Tuple[str, Path]] = (),
) -> Path:
    """Write a Space's files into ``folder`` (which must be empty or missing).

    Args:
        folder: where to write.
        space_id: ``OWNER/NAME`` (named in the README).
        model_ids: the models the Space shows.
        architectures: ``{model id: architecture}`` for the README's table.
        examples: ``(file name as <Class>/<file>, film)`` for each example film.

    Returns:
        The folder, holding :data:`SPACE_FILES`, ``cxr/`` and, with examples, :data:`EXAMPLES_DIR`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    package = _PACKAGE_DIR
    shutil.copytree(package, folder / "cxr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    from cxr.reporting.model_card import TEMPLATE_PATH  # package data: ships inside cxr/ as in a wheel

    cards = folder / "cxr" / "model_cards"
    cards.mkdir(exist_ok=True)
    shutil.copy2(TEMPLATE_PATH, cards / TEMPLATE_PATH.name)
    (folder / "app.py").write_text(APP_PY)
    (folder / "requirements.txt").write_text(space_requirements())
    (folder / "app_models.txt").write_text(
        "# The models this Space shows (python -m cxr.hub space), one Hub id per line.\n" + "\n".join(model_ids) + "\n"
    )
    for name, film in examples:
        target = folder / EXAMPLES_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(film, target)  # the bytes, also of a symlink
    (folder / "README.md").write_text(_space_readme(space_id, model_ids, architectures or {}, [n for n, _ in examples]))
    return folder


def _check_ours_to_replace(api, space_id: str, force: bool) -> None:
    """Refuse to overwrite an existing Space that cxr did not deploy (it has no ``app_models.txt`` and ``cxr/``)."""
    try:
        files = set(api.list_repo_files(space_id, repo_type="space"))
    except RepositoryNotFoundError:
        return
    except Exception as e:
        raise CXRError(f"cannot read the Space {space_id}: {type(e).__name__}: {e}; nothing was uploaded") from None
    ours = "app_models.txt" in files and "cxr/__init__.py" in files
    if files - {".gitattributes"} and not ours and not force:
        raise CXRError(
            f"the Space {space_id} exists and was not deployed by cxr (no app_models.txt and cxr/ package); "
            "its app.py, README.md and requirements.txt would be replaced. Pass --force to do so; "
            "nothing was uploaded"
        )


def deploy_space(
    space_id: str,
    model_ids: Sequence[str],
    private: bool = False,
    commit_message: Optional[str] = None,
    force: bool = False,
    examples: Sequence[Tuple[str, Path]] = (),
) -> str:
    """Create (or update) a Gradio Space showing ``model_ids`` and upload what it needs.

    Every check runs before anything is created or uploaded: the Space id, the Hub connection and
    token, each model id (published, a cxr checkpoint), that an existing Space was deployed by cxr
    (else ``force``), and the README's front matter (the Hub's own validator). An update replaces the
    ``cxr/`` package whole and rewrites :data:`SPACE_FILES`; other files the owner added stay.

    Args:
        space_id: ``OWNER/NAME``.
        model_ids: published cxr model ids, shown in this order.
        private: create the Space private (an existing Space keeps its visibility).
        commit_message: defaults to "Deploy cxr app with N model(s)".
        force: deploy over an existing Space that cxr did not deploy (its app.py, README.md and
            requirements.txt are replaced).
        examples: ``(<Class>/<file>, film)`` of each film to offer as an example (an update replaces the
            Space's examples whole).

    Returns:
        The URL of the commit.

    Raises:
        CXRError: naming what is wrong; nothing was uploaded.
    """

    validate_space_id(space_id)
    model_ids = list(dict.fromkeys(m.strip() for m in model_ids if m.strip()))
    if hub_is_offline():
        raise CXRError("cannot deploy a Space: the Hub is offline (HF_HUB_OFFLINE=1); nothing was uploaded")
    token, _ = check_token()
    architectures = check_models_published(model_ids, token)
    api = HfApi(token=token)
    _check_ours_to_replace(api, space_id, force)
    message = commit_message or f"Deploy cxr app with {len(model_ids)} model(s)"
    with tempfile.TemporaryDirectory(prefix="cxr-space-") as tmp:
        folder = build_space(Path(tmp) / "space", space_id, model_ids, architectures, examples)
        _check_front_matter(folder)
        info = _upload_space(api, space_id, folder, private, message)
    _logger.info("deployed %s with %s", space_id, ", ".join(model_ids))
    return str(info.commit_url)


def _check_front_matter(folder: Path) -> None:
    """The Space README's front matter, checked by the Hub's own validator before anything is uploaded."""
    try:
        SpaceCard((folder / "README.md").read_text()).validate(repo_type="space")
    except Exception as e:  # ValueError for refused metadata, HTTP errors for the validator itself
        raise CXRError(
            f"the Space README's front matter was refused or could not be checked "
            f"({type(e).__name__}: {e}); nothing was uploaded"
        ) from None


def _upload_space(api: HfApi, space_id: str, folder: Path, private: bool, message: str):
    """Create the Space if missing and upload ``folder`` in one commit (the package and examples replaced whole)."""
    try:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=space_id,
            repo_type="space",
            folder_path=str(folder),
            delete_patterns=["cxr/**", f"{EXAMPLES_DIR}/**"],
            commit_message=message,
        )
    except HfHubHTTPError as e:
        raise CXRError(f"could not deploy {space_id} at {constants.ENDPOINT}: {e}") from None
