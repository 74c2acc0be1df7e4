"""A tiny in-memory Hugging Face Hub on 127.0.0.1, enough for huggingface_hub's upload and download calls.

It answers create-repo, validate-yaml, branch, preupload (always "regular": content comes inline in the
commit, no LFS or Xet), commit, revision info, tree listing and /resolve/ file downloads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_INITIAL_FILES = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}


@dataclass
class Repo:
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # commit messages, oldest first

    def resolve(self, revision: str) -> str | None:
        return self.branches.get(revision) or (revision if revision in self.commits else None)

    def files(self, revision: str = "main") -> dict[str, bytes]:
        sha = self.resolve(revision)
        return dict(self.commits[sha]) if sha else {}


class FakeHub:
    """State shared by the request handler threads; tests read `repos` and `requests`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_commits = False
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.hub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str) -> str:
        parent = repo.files(branch)
        sha = hashlib.sha1(f"{len(repo.commits)}{message}".encode()).hexdigest()
        repo.commits[sha] = {**parent, **files}
        repo.branches[branch] = sha
        repo.history.append(message)
        return sha


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, body: object = None, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        hub = _hub_of(self)
        with hub.lock:
            hub.requests.append((self.command, path))
            for pattern, methods, action in ROUTES:
                match = re.fullmatch(pattern, path)
                if match and self.command in methods:
                    action(self, match)
                    return
            self._reply(404, {"error": f"no route {self.command} {path}"})

    do_GET = do_POST = do_HEAD = _route


REPO = r"(?P<repo>[^/]+/[^/]+)"
RESOLVE = rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)"


def _repo(handler: BaseHTTPRequestHandler, repo_id: str) -> Repo | None:
    hub = _hub_of(handler)
    repo = hub.repos.get(repo_id)
    if repo is None:
        handler._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
    return repo


def _hub_of(handler: BaseHTTPRequestHandler) -> FakeHub:
    return handler.server.hub  # type: ignore[attr-defined]


def _create_repo(handler, match) -> None:
    hub = _hub_of(handler)
    payload = json.loads(handler._body())
    repo_id = f"{payload['organization']}/{payload['name']}"
    url = f"{hub.url}/{repo_id}"
    if repo_id in hub.repos:  # the real Hub names the repo in its 409; create_repo(exist_ok=True) reads it
        handler._reply(409, {"error": "You already created this model repo", "url": url})
        return
    repo = hub.repos[repo_id] = Repo(private=payload.get("visibility") != "public")
    hub.commit(repo, "main", dict(_INITIAL_FILES), "initial commit")
    repo.history.clear()  # only count commits made by uploads
    handler._reply(200, {"url": url})


def _validate_yaml(handler, match) -> None:
    handler._body()
    handler._reply(200, {"warnings": []})


def _create_branch(handler, match) -> None:
    handler._body()
    repo = _repo(handler, match["repo"])
    if repo is None:
        return
    if match["branch"] in repo.branches:
        handler._reply(409, {"error": "Reference already exists"})
        return
    repo.branches[match["branch"]] = repo.branches["main"]
    handler._reply(200, {})


def _preupload(handler, match) -> None:
    files = json.loads(handler._body())["files"]
    if _repo(handler, match["repo"]) is None:
        return
    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
    handler._reply(200, {"files": modes, "commitOid": "0" * 40})


def _commit(handler, match) -> None:
    hub = _hub_of(handler)
    lines = [json.loads(line) for line in handler._body().splitlines() if line.strip()]
    repo = _repo(handler, match["repo"])
    if repo is None:
        return
    if hub.fail_commits:
        handler._reply(500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
        return
    if match["rev"] not in repo.branches:
        handler._reply(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        return
    header = next(item["value"] for item in lines if item["key"] == "header")
    files = {
        item["value"]["path"]: base64.b64decode(item["value"]["content"])
        for item in lines
        if item["key"] == "file"
    }
    sha = hub.commit(repo, match["rev"], files, header["summary"])
    handler._reply(200, {"commitUrl": f"{hub.url}/{match['repo']}/commit/{sha}", "commitOid": sha})


def _revision_info(handler, match) -> None:
    repo = _repo(handler, match["repo"])
    if repo is None:
        return
    sha = repo.resolve(match["rev"])
    if sha is None:
        handler._reply(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        return
    siblings = [{"rfilename": name} for name in sorted(repo.commits[sha])]
    handler._reply(200, {"id": match["repo"], "sha": sha, "private": repo.private, "siblings": siblings})


def _tree(handler, match) -> None:
    repo = _repo(handler, match["repo"])
    if repo is None:
        return
    files = repo.files(match["rev"])
    entries = [
        {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        for name, data in sorted(files.items())
    ]
    handler._reply(200, entries)


def _resolve(handler, match) -> None:
    repo = _repo(handler, match["repo"])
    if repo is None:
        return
    sha = repo.resolve(match["rev"])
    data = repo.commits[sha].get(match["file"]) if sha else None
    if data is None:
        handler._reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        return
    headers = {
        "X-Repo-Commit": sha,
        "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
        "Content-Type": "application/octet-stream",
    }
    handler._reply(200, data, headers)


ROUTES = [
    (r"/api/repos/create", ("POST",), _create_repo),
    (r"/api/validate-yaml", ("POST",), _validate_yaml),
    (rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", ("POST",), _create_branch),
    (rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", ("POST",), _preupload),
    (rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", ("POST",), _commit),
    (rf"/api/models/{REPO}/revision/(?P<rev>[^/]+)", ("GET",), _revision_info),
    (rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)", ("GET",), _tree),
    (RESOLVE, ("GET", "HEAD"), _resolve),
]
