"""A LOCAL STAND-IN for the Hugging Face Hub, for tests only: nothing here talks to huggingface.co.

It serves, on 127.0.0.1, the subset of the Hub's HTTP API that ``huggingface_hub`` uses for
``whoami``, ``create_repo``, ``upload_folder``/``create_commit`` (files sent inline, the
"regular" upload mode; README front matter checked as YAML), ``hf_hub_download``,
``snapshot_download``, ``model_info``/``dataset_info``/``space_info`` and ``list_repo_tree``, for model,
dataset and Space repositories. Point ``HF_ENDPOINT`` at :attr:`LocalHub.url` and the library's real code
paths run against it. Repositories live in memory; every commit is a full snapshot. Model repositories
are keyed by their id (``hub.repos["org/name"]``), the others by ``"datasets/org/name"`` and
``"spaces/org/name"`` (:func:`repo_key`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlparse

TOKEN = "hf_local_stand_in_write_token"
#: URL segment of each repository type, as the Hub's API spells it.
KINDS = {"model": "models", "dataset": "datasets", "space": "spaces"}


def repo_key(repo_id: str, repo_type: str = "model") -> str:
    """The key of a repository in :attr:`LocalHub.repos`: the id for models, ``"<type>s/<id>"`` otherwise."""
    kind = KINDS[repo_type]
    return repo_id if kind == "models" else f"{kind}/{repo_id}"


USER = "tester"
ORGS = ("cxr-test",)


@dataclass
class Repo:
    private: bool = False
    sdk: Optional[str] = None  # Spaces only
    commits: List[Tuple[str, Dict[str, bytes]]] = field(default_factory=list)  # (sha, snapshot), newest last

    def snapshot(self, revision: str) -> Optional[Tuple[str, Dict[str, bytes]]]:
        if revision in ("main", "HEAD") and self.commits:
            return self.commits[-1]
        for sha, files in self.commits:
            if sha == revision:
                return sha, files
        return None


class LocalHub:
    """Start with :meth:`start`, stop with :meth:`stop`; thread-safe, in memory.

    Attributes:
        url: the endpoint to put in ``HF_ENDPOINT``.
        requests: ``(method, path)`` of every request served, for assertions.
    """

    def __init__(self):
        self.repos: Dict[str, Repo] = {}
        self.requests: List[Tuple[str, str]] = []
        self.lock = threading.Lock()
        #: When true, every connection is closed without an answer (an unreachable Hub).
        self.unreachable = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._dispatch(self, "HEAD")

            def do_GET(self):
                hub._dispatch(self, "GET")

            def do_POST(self):
                hub._dispatch(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "LocalHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- seeding for tests -------------------------------------------------------------------
    def put_files(self, repo_id: str, files: Dict[str, bytes], private: bool = False, repo_type: str = "model") -> str:
        """Create or update a repository directly (to stage foreign repositories and data sets)."""
        with self.lock:
            repo = self.repos.setdefault(repo_key(repo_id, repo_type), Repo(private=private))
            return self._commit(repo, files, [])

    @staticmethod
    def _commit(repo: Repo, added: Dict[str, bytes], deleted: List[str]) -> str:
        files = dict(repo.commits[-1][1]) if repo.commits else {}
        files.update(added)
        for path in deleted:
            files.pop(path, None)
        h = hashlib.sha1((repo.commits[-1][0] if repo.commits else "").encode())
        for path in sorted(files):
            h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        h.update(str(time.time_ns()).encode())
        sha = h.hexdigest()
        repo.commits.append((sha, files))
        return sha

    # -- HTTP ----------------------------------------------------------------------------------
    def _dispatch(self, req: BaseHTTPRequestHandler, method: str) -> None:
        if self.unreachable:
            req.close_connection = True
            return
        path = unquote(urlparse(req.path).path)
        with self.lock:
            self.requests.append((method, path))
        body = b""
        if method == "POST":
            body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        authed = req.headers.get("Authorization") == f"Bearer {TOKEN}"
        kind = r"(?P<kind>models|datasets|spaces)"
        repo = r"(?P<repo>[^/]+/[^/]+)"
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/api/{kind}/{repo}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/api/{kind}/{repo}/commit/(?P<rev>[^/]+)", self._commit_route),
            ("GET", rf"/api/{kind}/{repo}(?:/revision/(?P<rev>[^/]+))?", self._info),
            ("GET", rf"/api/{kind}/{repo}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self._tree),
            ("HEAD", rf"/(?:(?P<kind>datasets|spaces)/)?{repo}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("GET", rf"/(?:(?P<kind>datasets|spaces)/)?{repo}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for m, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if m == method and match:
                args = match.groupdict()
                if args.get("repo"):  # one key per repository, whatever its type
                    args["repo"] = (
                        args["repo"] if args.get("kind") in (None, "models") else f"{args['kind']}/{args['repo']}"
                    )
                args.pop("kind", None)
                with self.lock:
                    status, headers, payload = handler(authed=authed, body=body, method=method, **args)
                break
        else:
            status, headers, payload = 404, {"X-Error-Message": f"local stand-in: no route {method} {path}"}, b"{}"
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        if method != "HEAD":
            req.wfile.write(payload)

    @staticmethod
    def _error(status: int, code: Optional[str], message: str):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        return status, headers, {"error": message}

    def _readable(self, repo_id: str, authed: bool) -> Optional[Repo]:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not authed):
            return None
        return repo

    def _whoami(self, authed, **_):
        if not authed:
            return self._error(401, None, "Invalid credentials in Authorization header")
        return (
            200,
            {},
            {
                "type": "user",
                "name": USER,
                "orgs": [{"name": o} for o in ORGS],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            },
        )

    def _create(self, authed, body, **_):
        if not authed:
            return self._error(401, None, "Invalid credentials in Authorization header")
        payload = json.loads(body or b"{}")
        namespace = payload.get("organization") or USER
        if namespace not in (USER, *ORGS):
            return self._error(
                403, None, f"You don't have the rights to create a model under the namespace {namespace}"
            )
        repo_type = payload.get("type") or "model"
        if repo_type not in KINDS:
            return self._error(400, None, f"unknown repository type {repo_type!r}")
        if repo_type == "space" and not payload.get("sdk"):
            return self._error(400, None, "a Space needs an sdk (gradio, docker or static)")
        repo_id = f"{namespace}/{payload['name']}"
        key = repo_key(repo_id, repo_type)
        url = f"{self.url}/{key}"
        if key in self.repos:
            return 409, {}, {"error": f"You already created this {repo_type} repo", "url": url}
        self.repos[key] = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self.repos[key].sdk = payload.get("sdk")
        return 200, {}, {"url": url, "name": repo_id}

    def _validate_yaml(self, body, **_):
        """Check a README's front matter parses as a YAML mapping (the Hub checks far more)."""
        import yaml

        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError as e:
            return 400, {"X-Error-Message": "invalid YAML"}, {"errors": [{"message": str(e)}], "warnings": []}
        if match and not isinstance(meta, dict):
            return 400, {"X-Error-Message": "invalid YAML"}, {"errors": [{"message": "metadata is not a mapping"}]}
        warnings = [] if match else [{"message": "empty or missing yaml metadata in repo card"}]
        return 200, {}, {"errors": [], "warnings": warnings}

    def _writable(self, repo, authed):
        if not authed:
            return self._error(401, None, "Invalid credentials in Authorization header")
        if repo not in self.repos:
            return self._error(404, "RepoNotFound", f"Repository {repo} not found")
        return None

    def _preupload(self, repo, authed, body, **_):
        err = self._writable(repo, authed)
        if err:
            return err
        files = json.loads(body)["files"]
        return 200, {}, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    def _commit_route(self, repo, rev, authed, body, **_):
        err = self._writable(repo, authed)
        if err:
            return err
        added, deleted = {}, []
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                deleted.append(item["value"]["path"])
            elif item["key"] != "header":
                return self._error(400, None, f"local stand-in does not support {item['key']}")
        sha = self._commit(self.repos[repo], added, deleted)
        return 200, {}, {"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha}

    def _info(self, repo, authed, rev=None, **_):
        r = self._readable(repo, authed)
        if r is None:
            return self._error(404, "RepoNotFound", f"Repository {repo} not found")
        snap = r.snapshot(rev or "main")
        if snap is None:
            if rev not in (None, "main"):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            snap = ("0" * 40, {})
        sha, files = snap
        repo_id = repo.split("/", 1)[1] if repo.startswith(("datasets/", "spaces/")) else repo
        return (
            200,
            {},
            {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": r.private,
                "disabled": False,
                "sdk": r.sdk,
                "gated": False,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "library_name": "timm",
                "siblings": [{"rfilename": p, "size": len(b)} for p, b in sorted(files.items())],
                "lastModified": "2026-11-25T00:00:00.000Z",
                "createdAt": "2026-11-25T00:00:00.000Z",
            },
        )

    def _lookup(self, repo, rev, authed):
        """``(snapshot, None)`` or ``(None, error response)`` for a readable repository at a revision."""
        r = self._readable(repo, authed)
        if r is None:
            return None, self._error(404, "RepoNotFound", f"Repository {repo} not found")
        snap = r.snapshot(rev)
        if snap is None and rev in ("main", "HEAD") and not r.commits:
            snap = ("0" * 40, {})  # a repository just created: an empty main branch
        if snap is None:
            return None, self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return snap, None

    def _tree(self, repo, rev, authed, sub=None, **_):
        snap, err = self._lookup(repo, rev, authed)
        if err:
            return err
        prefix = (sub.rstrip("/") + "/") if sub else ""
        return (
            200,
            {},
            [
                {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for p, b in sorted(snap[1].items())
                if p.startswith(prefix)
            ],
        )

    def _resolve(self, repo, rev, file, authed, method, **_):
        snap, err = self._lookup(repo, rev, authed)
        if err:
            return err
        sha, files = snap
        if file not in files:
            return self._error(404, "EntryNotFound", f"{file} does not exist on {rev}")
        data = files[file]
        etag = hashlib.sha256(data).hexdigest()
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        return 200, headers, data  # a HEAD gets the same headers (Content-Length) without the body
