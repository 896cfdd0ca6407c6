"""Publishing finished runs to the Hugging Face Hub, with their model card.

``train_accelerate.py --push-to-hub --hub-model-id ORG/NAME`` checks the token and the repository
before training (:func:`check_push_target`) and pushes at the end (:func:`push_run`, main process
only). ``python -m cxr.hub push RUN_DIR ORG/NAME`` publishes a finished run, and is the retry path
when a push at the end of training fails: the run folder stays complete on disk.

What lands in the repository: ``config.json`` + ``model.safetensors`` (timm's Hub layout),
``README.md`` (the model card), ``metrics.json``, ``confusion_matrix.png``, ``training_curves.png``
and ``split.json``. Nothing pickled (``checkpoint.pt`` stays local).

Example:
    >>> url = push_run("runs/lite0", "my-org/cxr-lite0")             # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple, Union

from .errors import CXRError
from .models.pretrained import hub_is_offline

__all__ = ["PUSHED_FILES", "validate_hub_model_id", "check_token", "check_push_target", "push_run", "retry_command", "main"]

_logger = logging.getLogger(__name__)

#: Run files published beside the model (the model folder's own files are added to them).
PUSHED_FILES = ("metrics.json", "confusion_matrix.png", "training_curves.png", "split.json")
_MODEL_FILES = ("config.json", "model.safetensors")


def retry_command(run_dir: Union[str, Path], repo_id: str, private: bool = False) -> str:
    """The command that publishes ``run_dir`` again."""
    return f"python -m cxr.hub push {run_dir} {repo_id}{' --private' if private else ''}"


def validate_hub_model_id(repo_id: Optional[str]) -> str:
    """Check that ``repo_id`` is a well-formed ``ORG/NAME`` Hub model id.

    Raises:
        CXRError: naming the problem.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        raise CXRError("--push-to-hub needs --hub-model-id ORG/NAME")
    if repo_id.count("/") != 1:
        raise CXRError(f"malformed --hub-model-id {repo_id!r}: expected ORG/NAME (your user or organisation, a slash, a name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise CXRError(f"malformed --hub-model-id {repo_id!r}: {e}") from None
    return repo_id


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise CXRError(
            "writing to the Hub needs a token with write access: set HF_TOKEN or run `hf auth login` "
            "(nothing was trained, written or uploaded)"
        )
    return token


def check_token() -> Tuple[str, str]:
    """A token the Hub accepts: present and valid (``whoami``).

    Returns:
        ``(token, user name)``.

    Raises:
        CXRError: no token, a rejected token, or an unreachable Hub.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    token = _token()
    try:
        user = HfApi(token=token).whoami()
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status == 401:
            raise CXRError(f"the Hugging Face token was rejected by {constants.ENDPOINT} (401): log in again") from None
        raise CXRError(f"could not check the token at {constants.ENDPOINT}: {e}") from None
    except Exception as e:  # connection refused, DNS, timeouts
        raise CXRError(f"cannot reach the Hub at {constants.ENDPOINT}: {type(e).__name__}: {e}") from None
    return token, str(user.get("name", "?"))


def check_push_target(repo_id: str, private: bool = False) -> str:
    """Make sure a push to ``repo_id`` can succeed: id, token, connection, rights; creates the repository.

    Called before training so a long run never dies at the push for a missing token or a bad id.

    Returns:
        The repository URL.

    Raises:
        CXRError: with the reason.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    validate_hub_model_id(repo_id)
    if hub_is_offline():
        raise CXRError("cannot push: the Hub is offline (HF_HUB_OFFLINE=1)")
    token, user = check_token()
    try:
        url = HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    except HfHubHTTPError as e:
        raise CXRError(f"cannot create or write {repo_id} as {user}: {e}") from None
    return str(url)


def push_run(
        run_dir: Union[str, Path],
        repo_id: str,
        private: bool = False,
        commit_message: Optional[str] = None,
) -> str:
    """Publish a finished run: the model, its rendered model card and its report files.

    Args:
        run_dir: a ``train_accelerate.py`` output folder.
        repo_id: ``ORG/NAME``.
        private: create the repository private (an existing repository keeps its visibility).
        commit_message: defaults to "Upload <model> trained with cxr".

    Returns:
        The URL of the commit.

    Raises:
        CXRError: the folder is not a finished run, or the push failed (the message ends with
            the command that retries it).
    """
    from huggingface_hub import HfApi

    from .model_card import render_model_card

    run_dir = Path(run_dir)
    missing = [f"model/{f}" for f in _MODEL_FILES if not (run_dir / "model" / f).is_file()]
    missing += [f for f in ("metrics.json", "run_config.json", "split.json") if not (run_dir / f).is_file()]
    if missing:
        raise CXRError(f"{run_dir} is not a finished cxr run: missing {', '.join(missing)}")
    try:
        check_push_target(repo_id, private)
    except CXRError as e:
        raise CXRError(f"{e}\nThe run folder {run_dir} is complete on disk; once fixed, publish it with:\n"
                       f"  {retry_command(run_dir, repo_id, private)}") from None
    card = render_model_card(run_dir, repo_id)
    model_name = json.loads((run_dir / "run_config.json").read_text())["model"]
    with tempfile.TemporaryDirectory(prefix="cxr-push-") as tmp:
        stage = Path(tmp)
        for name in _MODEL_FILES:
            _link_or_copy(run_dir / "model" / name, stage / name)
        for name in PUSHED_FILES:
            if (run_dir / name).is_file():
                _link_or_copy(run_dir / name, stage / name)
        card.save(str(stage / "README.md"))
        try:
            info = HfApi().upload_folder(
                repo_id=repo_id,
                folder_path=str(stage),
                commit_message=commit_message or f"Upload {model_name} trained with cxr",
            )
        except Exception as e:
            raise CXRError(
                f"pushing {run_dir} to {repo_id} failed ({type(e).__name__}: {e}). The run folder is complete "
                f"on disk; retry with:\n  {retry_command(run_dir, repo_id, private)}"
            ) from None
    _logger.info("pushed %s to %s", run_dir, info.commit_url)
    return str(info.commit_url)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m cxr.hub push RUN_DIR ORG/NAME [--private]`` and ``python -m cxr.hub space OWNER/NAME --models ...``."""
    from .cli import program_name, run_cli

    parser = argparse.ArgumentParser(
        prog=program_name("python -m cxr.hub"),
        description="Publish cxr runs on the Hugging Face Hub, and deploy a Space that shows them. "
                    "Research use only — not for diagnosis.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="Publish a finished run folder (model, model card, metrics, plots, split).")
    push.add_argument("run_dir", type=Path, help="A train_accelerate.py --output-dir folder.")
    push.add_argument("repo_id", help="Hub model repository ORG/NAME (created if missing).")
    push.add_argument("--private", action="store_true", help="Create the repository private.")
    push.add_argument("--commit-message", default=None, help="Commit message (default: 'Upload <model> trained with cxr').")
    space = sub.add_parser(
        "space", help="Create or update a Gradio Space that shows published models side by side (app, package, "
                      "pinned requirements, README front matter, model list); every check runs before any upload.")
    space.add_argument("space_id", help="Hub Space OWNER/NAME (created if missing).")
    space.add_argument("--models", required=True, metavar="ORG/M1,ORG/M2",
                       help="Comma-separated ids of published cxr models, in the order the app shows them.")
    space.add_argument("--private", action="store_true", help="Create the Space private.")
    space.add_argument("--force", action="store_true",
                       help="Deploy over an existing Space that cxr did not deploy (its app.py, README.md and "
                            "requirements.txt are replaced; other files stay).")
    space.add_argument("--commit-message", default=None,
                       help="Commit message (default: 'Deploy cxr app with N model(s)').")
    args = parser.parse_args(argv)

    def run():
        if args.command == "space":
            from .space import deploy_space

            url = deploy_space(args.space_id, args.models.split(","), private=args.private,
                               commit_message=args.commit_message, force=args.force)
        else:
            url = push_run(args.run_dir, args.repo_id, private=args.private, commit_message=args.commit_message)
        print(url)

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
