"""``prefrl annotate``: label a dataset's queries yourself, on a local web page.

    prefrl annotate --dataset runs/data.npz --out-dir runs/people --annotator alice
    # open the printed address (http://127.0.0.1:8765/), answer with the keys:
    #   ← / 1 left better, → / 2 right better, = / 3 equal, s can't tell (skip),
    #   u undo the last answer, r replay
    prefrl fit --dataset runs/people/labels.npz --label human --out runs/rm.npz

Each query shows its two segments as videos side by side (left = the
dataset's first segment), rendered from the stored physics state on first
request into ``OUT_DIR/videos/``. Every answer is written at once, atomically,
to ``OUT_DIR/labels.npz``: the dataset's queries with the people's label
(``label = P(left ≻ right)``; 1, 0, ½ for equal; skips recorded and not
trained on; each answer's annotator and time; ``prefrl.annotate.store``).
Running the command again resumes at the first unanswered query. It listens
on 127.0.0.1 only unless ``--host`` says otherwise; requests are validated
and nothing outside ``OUT_DIR`` is served. Stop it with Ctrl-C (or
``--exit-when-done``); it ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prefrl import config as cfg
from prefrl.config import ConfigError, field


@dataclasses.dataclass(frozen=True)
class AnnotateConfig:
    """Options of ``prefrl annotate``."""

    out_dir: str = field("", "run folder: labels.npz and videos/ go here (and only these "
                             "are served)")
    dataset: str | None = field(None, "preference dataset whose queries to label (may be left "
                                      "out when OUT_DIR/labels.npz exists: resume)")
    label_name: str = field("human", "name of the people's label in the labels file")
    annotator: str = field("", "name filled in on the page (each answer records its annotator)")
    host: str = field("127.0.0.1", "address to listen on (127.0.0.1: this machine only)")
    port: int = field(8765, "port to listen on (0: any free port; the address is printed)")
    video: Literal["webm", "mp4"] = field("webm", "video format: webm (VP9) or mp4 (H.264)")
    width: int = field(320, "video width per segment (even)")
    height: int = field(240, "video height (even)")
    gl: str | None = field(None, "GL backend: egl, osmesa or glfw (default: egl without a display)")
    exit_when_done: bool = field(False, "stop once every query is answered")

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise ConfigError("give the run folder: --out-dir DIR")
        if self.video not in ("webm", "mp4"):
            raise ConfigError(f"--video must be webm or mp4, got {self.video!r}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ConfigError(f"--width/--height must be even and >= 16, got "
                              f"{self.width}×{self.height}")
        if self.gl is not None and self.gl not in ("egl", "osmesa", "glfw"):
            raise ConfigError(f"--gl must be egl, osmesa or glfw, got {self.gl!r}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotate", help="label a dataset's queries on a local web page",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg.add_dataclass_args(p, AnnotateConfig)
    p.set_defaults(func=run)


def open_store(config: AnnotateConfig) -> Any:
    """The labels file of ``config.out_dir``: created from ``--dataset`` or resumed."""
    from prefrl.annotate.store import LabelStore, check_annotator, check_label_name
    from prefrl.data import dataset as dataset_lib

    try:
        check_label_name(config.label_name)
        if config.annotator:
            check_annotator(config.annotator)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out-dir {out}: is not a folder")
    path = out / "labels.npz"
    if config.dataset is None:
        if not path.exists():
            raise ConfigError(f"give --dataset: {path} does not exist yet, so there is nothing "
                              "to resume")
        return LabelStore.open(path, config.label_name)
    data, header = dataset_lib.load(config.dataset)
    meta = {"dataset": str(config.dataset), **{k: v for k, v in (header.get("meta") or {}).items()
                                               if k in ("task_params",)}}
    return LabelStore.create(path, data, task=header.get("task", ""), label_name=config.label_name,
                             source=str(config.dataset), meta=meta)


def check_drawable(path: str) -> None:
    """``ValueError`` for a dataset whose segments carry no physics state to draw."""
    from prefrl.data import dataset as dataset_lib
    from prefrl.render import check_states

    data, _ = dataset_lib.load(path)
    check_states(np.asarray(data.segments.qpos), np.asarray(data.segments.qvel), path)


def run(args: argparse.Namespace) -> int:
    from prefrl.annotate.server import Server, VideoCache, allowed_hosts, make_app
    from prefrl.render import Renderer

    config = cfg.from_args(AnnotateConfig, args)
    # The GL check comes first: a machine that cannot render gets the message, no files.
    Renderer(16, 16, backend=config.gl).close()
    if config.dataset is not None:
        check_drawable(config.dataset)
    store = open_store(config)
    videos = VideoCache(Path(config.out_dir) / "videos", store.segments, width=config.width,
                        height=config.height, backend=config.gl)
    app = make_app(store, videos, annotator=config.annotator, video_format=config.video,
                   hosts=allowed_hosts(config.host))
    server = Server(app, config.host, config.port).start()
    progress = store.progress()
    print(f"prefrl annotate: {progress['answered']} of {progress['total']} queries answered; "
          f"labelling page at {server.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"prefrl annotate: warning: listening on {config.host}: other machines can reach "
              "the page", file=sys.stderr, flush=True)
    try:
        while server.thread.is_alive():
            if config.exit_when_done and store.done():
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        videos.close()
    print(json.dumps({"labels": str(store.path), "url": server.url, **store.progress(),
                      "annotators": store.annotators}))
    return 0
