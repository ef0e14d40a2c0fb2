"""The labelling page: a small Starlette app over a :class:`~prefrl.annotate.store.LabelStore`.

Routes (every request validated; a bad one gets a 4xx with ``{"error": …}``
and changes nothing):

* ``GET /`` — the page (``page.html``: plain HTML and JavaScript);
* ``GET /api/state`` — progress and the next pending query with its videos;
* ``POST /api/answer`` ``{"query", "answer": left|right|equal|skip, "annotator"}``;
* ``POST /api/undo`` ``{"annotator"}`` — take back the latest answer;
* ``GET /video/NAME`` — ``seg_<i>.webm`` (or ``.mp4``), rendered on first
  request into ``RUN_DIR/videos/`` by one rendering thread (one GL
  context) and served from there only: any other name, and any path that
  leaves that folder, is refused.

:func:`serve_queries` serves a list of pending queries from inside another
program (a training loop that holds the run folder) and blocks until a person
has answered them all.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from prefrl.annotate.store import LabelStore, RequestError, check_annotator
from prefrl.types import PreferenceDataset, Segments

VIDEO_NAME = re.compile(r"^seg_(\d{1,9})\.(webm|mp4)$")
MAX_BODY = 4096


class VideoCache:
    """Segment videos under ``folder``, rendered once each by a single thread that owns the GL."""

    def __init__(self, folder: Path, segments: Segments, *, width: int = 320, height: int = 240,
                 fps: float = 20.0, backend: str | None = None) -> None:
        self.folder = Path(folder)
        self.segments = segments
        self.width, self.height, self.fps, self.backend = width, height, fps, backend
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prefrl-render")
        self._renderer = None
        self._jobs: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        """The file for ``name``, or :class:`RequestError` for any other name or a path outside."""
        match = VIDEO_NAME.match(name)
        if not match:
            raise RequestError(f"no such video {name[:80]!r}: names are seg_<index>.webm or "
                               ".mp4, inside the run folder", 400 if "/" in name or ".." in name
                               else 404)
        index = int(match.group(1))
        if index >= self.segments.num_segments:
            raise RequestError(f"no segment {index}: the pool has "
                               f"{self.segments.num_segments}", 404)
        root = self.folder.resolve()
        path = (root / name).resolve()
        if path.parent != root:
            raise RequestError(f"{name!r} leaves the run folder", 400)
        return path

    def get(self, name: str) -> Path:
        """Render ``name`` unless it exists; its path (waits for the rendering thread)."""
        path = self.path(name)
        if path.exists():
            return path
        with self._lock:
            job = self._jobs.get(name)
            if job is None or (job.done() and job.exception() is not None):
                job = self._pool.submit(self._render, path)
                self._jobs[name] = job
        return job.result()

    def prefetch(self, names: list[str]) -> None:
        for name in names:
            path = self.path(name)
            with self._lock:
                if not path.exists() and name not in self._jobs:
                    self._jobs[name] = self._pool.submit(self._render, path)

    def _render(self, path: Path) -> Path:
        from prefrl.render import Renderer, check_states, write_video

        if path.exists():
            return path
        index = int(VIDEO_NAME.match(path.name).group(1))
        qpos = np.asarray(self.segments.qpos[index])
        qvel = np.asarray(self.segments.qvel[index])
        check_states(qpos, qvel, f"segment {index}")
        if self._renderer is None:
            self._renderer = Renderer(self.width, self.height, backend=self.backend)
        return write_video(path, self._renderer.frames(qpos, qvel), self.fps)

    def close(self) -> None:
        def free() -> None:
            if self._renderer is not None:
                self._renderer.close()
                self._renderer = None

        self._pool.submit(free).result()
        self._pool.shutdown(wait=True)


def _page() -> str:
    return resources.files("prefrl.annotate").joinpath("page.html").read_text(encoding="utf-8")


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def make_app(store: LabelStore, videos: VideoCache, *, annotator: str = "",
             video_format: str = "webm", hosts: tuple[str, ...] = LOCAL_HOSTS) -> Any:
    """The Starlette application serving ``store``'s queries.

    Other web sites open in the same browser must not label for the person:
    a request must name one of ``hosts`` in its ``Host`` header (against DNS
    rebinding; ``("*",)`` allows any), a cross-origin ``Origin`` is refused
    (403), and a change needs ``Content-Type: application/json`` (415), which
    a foreign page cannot send without a CORS preflight that is never granted.
    """
    from urllib.parse import urlsplit

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.routing import Route

    page = _page().replace("__DEFAULT_ANNOTATOR__", json.dumps(annotator))

    def error(err: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    def state() -> dict[str, Any]:
        q = store.next_pending()
        out: dict[str, Any] = {"progress": store.progress(), "label": store.label_name,
                               "task": store.header.get("task", ""), "query": None}
        if q is not None:
            left, right = store.pair(q)
            names = [f"seg_{left}.{video_format}", f"seg_{right}.{video_format}"]
            out["query"] = {"id": q, "left": f"/video/{names[0]}", "right": f"/video/{names[1]}"}
            following = store.next_pending_after(q)
            videos.prefetch(names + ([f"seg_{i}.{video_format}" for i in store.pair(following)]
                                     if following is not None else []))
        return out

    async def body(request: Request) -> dict[str, Any]:
        origin = request.headers.get("origin")
        if origin is not None and (urlsplit(origin).netloc != request.headers.get("host")):
            raise RequestError(f"cross-origin request from {origin[:80]!r} refused", 403)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise RequestError(f"send JSON (Content-Type: application/json), not {kind!r}", 415)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise RequestError(f"request body over {MAX_BODY} bytes", 413)
        try:
            data = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"request body is not JSON: {err}", 400) from err
        if not isinstance(data, dict):
            raise RequestError("request body must be a JSON object", 400)
        return data

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def get_state(request: Request) -> JSONResponse:
        return JSONResponse(state())

    async def answer(request: Request) -> JSONResponse:
        try:
            data = await body(request)
            unknown = sorted(set(data) - {"query", "answer", "annotator"})
            if unknown:
                raise RequestError(f"unknown field(s) {unknown}", 422)
            done = store.answer(data.get("query"), data.get("answer"), data.get("annotator"))
        except RequestError as err:
            return error(err)
        return JSONResponse({"answered": done, **state()})

    async def undo(request: Request) -> JSONResponse:
        try:
            check_annotator((await body(request)).get("annotator"))
        except RequestError as err:
            return error(err)
        return JSONResponse({"undone": store.undo(), **state()})

    def video(request: Request) -> Any:  # sync: Starlette runs it in a worker thread
        try:
            path = videos.get(request.path_params["name"])
        except RequestError as err:
            return error(err)
        except (ValueError, OSError) as err:  # cannot draw or encode: say why
            return JSONResponse({"error": str(err)}, status_code=500)
        kind = "video/webm" if path.suffix == ".webm" else "video/mp4"
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})

    return Starlette(routes=[
        Route("/", index),
        Route("/api/state", get_state),
        Route("/api/answer", answer, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/video/{name:path}", video),
    ], middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))])


def allowed_hosts(host: str) -> tuple[str, ...]:
    """``Host`` headers to accept when listening on ``host``: the loopback names, else any."""
    return LOCAL_HOSTS if host in LOCAL_HOSTS else ("*",)


class Server:
    """``uvicorn`` serving an app on ``host:port`` (0: any free port) in a background thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="prefrl-annotate", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> Server:
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def serve_queries(segments: Segments, pairs: Any, out_path: str | Path, *, task: str,
                  label_name: str = "human", host: str = "127.0.0.1", port: int = 0,
                  annotator: str = "", timeout: float | None = None, video_format: str = "webm",
                  announce: Any = None, meta: dict[str, Any] | None = None, width: int = 320,
                  height: int = 240, gl: str | None = None) -> PreferenceDataset:
    """Serve the queries ``pairs [Q, 2]`` (segment indices) on the page; block until answered.

    For a program that holds a run folder (e.g. an online loop whose round
    waits for a person): the labels go to ``out_path`` (resumed if it already
    holds these queries), the videos to ``out_path``'s folder ``videos/``.
    Returns the dataset with the people's labels under ``label_name`` (mask
    False where skipped). ``announce(url)`` is called once the page listens
    (default: a line on stderr). ``TimeoutError`` after ``timeout`` seconds.
    ``meta``: the labels file's header ``meta`` (where the queries come from);
    ``width``/``height``/``gl``: the videos' size and GL backend.
    """
    import jax.numpy as jnp

    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must be [Q, 2] segment indices, got {pairs.shape} {pairs.dtype}")
    q = pairs.shape[0]
    dataset = PreferenceDataset(segments=segments, first=jnp.asarray(pairs[:, 0]),
                                second=jnp.asarray(pairs[:, 1]), labels={label_name: jnp.full(
                                    (q,), 0.5, jnp.float32)},
                                label_mask={label_name: jnp.zeros((q,), bool)})
    store = LabelStore.create(out_path, dataset, task=task, label_name=label_name,
                              source="serve_queries", meta=meta)
    videos = VideoCache(Path(out_path).parent / "videos", segments, width=width, height=height,
                        backend=gl)
    server = Server(make_app(store, videos, annotator=annotator, video_format=video_format,
                             hosts=allowed_hosts(host)), host, port).start()
    (announce or (lambda url: print(f"label {q} queries at {url}", file=sys.stderr)))(server.url)
    try:
        if not store.wait_done(timeout):
            raise TimeoutError(f"{store.progress()['pending']} of {q} queries still unanswered "
                               f"after {timeout} s (labels so far are in {out_path})")
        return store.to_dataset()
    finally:
        server.stop()
        videos.close()
