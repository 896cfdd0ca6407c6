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

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from cxr.errors import CXRError
from cxr.models.pretrained import hub_is_offline
from cxr.reporting.model_card import render_model_card
from cxr.run_folder import RunFolder, read_json

__all__ = ["validate_hub_model_id", "check_token", "check_push_target", "push_run", "retry_command"]

_logger = logging.getLogger(__name__)

#: Run files published beside the model (the model folder's own files are added to them).


def retry_command(run_dir: Union[str, Path], repo_id: str, private: bool = False) -> str:
    """The command that publishes ``run_dir`` again."""
    return f"python -m cxr.hub push {run_dir} {repo_id}{' --private' if private else ''}"


def validate_hub_model_id(repo_id: Optional[str]) -> str:
    """Check that ``repo_id`` is a well-formed ``ORG/NAME`` Hub model id.

    Raises:
        CXRError: naming the problem.
    """
    if not repo_id:
        raise CXRError("--push-to-hub needs --hub-model-id ORG/NAME")
    if repo_id.count("/") != 1:
        raise CXRError(
            f"malformed --hub-model-id {repo_id!r}: expected ORG/NAME (your user or organisation, a slash, a name)"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise CXRError(f"malformed --hub-model-id {repo_id!r}: {e}") from None
    return repo_id


def _token() -> str:
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
    eval_dirs: Sequence[Union[str, Path]] = (),
) -> str:
    """Publish a finished run: the model, its rendered model card and its report files.

    Args:
        run_dir: a ``train_accelerate.py`` output folder.
        repo_id: ``ORG/NAME``.
        private: create the repository private (an existing repository keeps its visibility).
        commit_message: defaults to "Upload <model> trained with cxr".
        eval_dirs: ``python -m cxr.eval`` outputs of this model on other data: their figures fill the card's
            "External validation" section (numbers only; none of their files is uploaded).

    Returns:
        The URL of the commit.

    Raises:
        CXRError: the folder is not a finished run, or the push failed (the message ends with
            the command that retries it).
    """
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    needed = [run.model_config, run.model_weights, run.metrics, run.run_config, run.split]
    missing = [p.relative_to(run_dir).as_posix() for p in needed if not p.is_file()]
    if missing:
        raise CXRError(f"{run_dir} is not a finished cxr run: missing {', '.join(missing)}")
    run.check_one_run()
    card = render_model_card(run_dir, repo_id, eval_dirs=eval_dirs)  # checks every --eval-dir before the Hub
    try:
        check_push_target(repo_id, private)
    except CXRError as e:
        raise CXRError(
            f"{e}\nThe run folder {run_dir} is complete on disk; once fixed, publish it with:\n"
            f"  {retry_command(run_dir, repo_id, private)}"
        ) from None
    message = commit_message or f"Upload {read_json(run.run_config)['model']} trained with cxr"
    info = _upload(run, card, repo_id, message, retry_command(run_dir, repo_id, private))
    _logger.info("pushed %s to %s", run_dir, info.commit_url)
    return str(info.commit_url)


def _upload(run: RunFolder, card, repo_id: str, message: str, retry: str):
    """Stage the published files of ``run`` and its card, and upload them in one commit."""
    with tempfile.TemporaryDirectory(prefix="cxr-push-") as tmp:
        stage = Path(tmp)
        for path in (run.model_config, run.model_weights, run.model_ood, *run.published):
            if path.is_file():
                _link_or_copy(path, stage / path.name)
        card.save(str(stage / "README.md"))
        try:
            return HfApi().upload_folder(repo_id=repo_id, folder_path=str(stage), commit_message=message)
        except Exception as e:
            raise CXRError(
                f"pushing {run.root} to {repo_id} failed ({type(e).__name__}: {e}). The run folder is complete "
                f"on disk; retry with:\n  {retry}"
            ) from None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
