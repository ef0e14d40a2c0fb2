"""People's labels of a query set, kept in the project's preference-dataset file.

The labels file is an ordinary preference dataset (``prefrl.data.dataset``):
the queries' segments, ``first``/``second``, and a label named
``label_name`` (``"human"`` by default) with ``label = P(first ≻ second)``
(1 left/first preferred, 0 right/second, ½ equal). ``label_mask`` is True
only for answered, non-skipped queries, so ``prefrl fit --label human``
trains on exactly the people's labels. Labels the source dataset already
had (e.g. a scripted oracle's) are kept beside it, for agreement checks.

What a person adds is the ``annotation`` schema extension (header
``extensions.annotation``: ``schema_version``, ``label``, ``annotators``,
``source``; arrays ``[Q]`` per label name N):

* ``annotation.annotator.N`` int32 — index into ``annotators``, −1 pending;
* ``annotation.skipped.N`` bool — "can't tell" (recorded, not trained on);
* ``annotation.order.N`` int32 — 0, 1, 2, … in answering order, −1 pending
  (undo takes back the highest; a restart resumes at the first pending query);
* ``annotation.time.N`` float64 — Unix time of the answer, 0 pending.

Every change rewrites the file atomically (``prefrl.io``).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from prefrl.data import dataset as dataset_lib
from prefrl.io import FileFormatError, read_npz_arrays
from prefrl.types import PreferenceDataset, Segments

EXTENSION = "annotation"
EXTENSION_VERSION = 1
FIELDS = ("annotator", "skipped", "order", "time")
ANSWERS = {"left": 1.0, "right": 0.0, "equal": 0.5}  # label = P(first = left ≻ second)
ANNOTATOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,63}$")


class RequestError(ValueError):
    """A request that cannot be carried out; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_annotator(name: object) -> str:
    """The annotator's name, or :class:`RequestError` (1–64 letters, digits, `` ._@+-``)."""
    if not isinstance(name, str) or not name.strip():
        raise RequestError("annotator must be a non-empty name", 422)
    name = name.strip()
    if not ANNOTATOR.match(name):
        raise RequestError(f"annotator {name[:80]!r} must be 1-64 characters: letters, digits, "
                           "space and . _ @ + - (starting with a letter or digit)", 422)
    return name


def check_label_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name or ""):
        raise ValueError(f"label name {name!r} must be 1-40 letters, digits, _ or -")
    return name


class LabelStore:
    """The labels of one query set, answered one at a time; thread-safe; saved on each change.

    ``LabelStore.create(path, dataset, task=…)`` starts a new file (or resumes
    ``path`` when it exists and holds the same queries); ``LabelStore.open(path)``
    resumes one. ``answer``, ``skip`` and ``undo`` validate, change, save.
    """

    def __init__(self, path: Path, dataset: PreferenceDataset, header: dict[str, Any],
                 label_name: str, fields: dict[str, np.ndarray], annotators: list[str]) -> None:
        self.path, self.dataset, self.header = Path(path), dataset, header
        self.label_name = label_name
        self.label = np.asarray(dataset.labels[label_name], np.float32).copy()
        self.mask = np.asarray(dataset.label_mask[label_name], bool).copy()
        self.fields = fields
        self.annotators = annotators
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)

    # ------------------------------------------------------------------ creating and opening

    @classmethod
    def create(cls, path: str | Path, dataset: PreferenceDataset, *, task: str,
               label_name: str = "human", source: str = "", meta: dict[str, Any] | None = None
               ) -> LabelStore:
        """A store for ``dataset``'s queries at ``path``; resumes ``path`` if it holds them."""
        check_label_name(label_name)
        path = Path(path)
        if path.exists():
            store = cls.open(path, label_name)
            store.check_same_queries(dataset, source or "the dataset")
            return store
        q = dataset.num_queries
        if q < 1:
            raise ValueError(f"{source or 'the dataset'} has no queries to label")
        labels = {k: v for k, v in dataset.labels.items() if k != label_name}
        masks = {k: v for k, v in dataset.label_mask.items() if k != label_name}
        labels[label_name] = jnp.full((q,), 0.5, jnp.float32)
        masks[label_name] = jnp.zeros((q,), bool)
        data = dataset.replace(labels=labels, label_mask=masks)
        fields = {"annotator": np.full(q, -1, np.int32), "skipped": np.zeros(q, bool),
                  "order": np.full(q, -1, np.int32), "time": np.zeros(q, np.float64)}
        header = {"task": task, "meta": dict(meta or {}),
                  "oracles": {}, "seeds": {}, "source": source}
        store = cls(path, data, header, label_name, fields, [])
        store.save()
        return store

    @classmethod
    def open(cls, path: str | Path, label_name: str = "human") -> LabelStore:
        """Resume a labels file; :class:`FileFormatError` if its annotation is inconsistent."""
        dataset, header = dataset_lib.load(path)
        ext = (header.get("extensions") or {}).get(EXTENSION)
        if not isinstance(ext, dict) or ext.get("schema_version") != EXTENSION_VERSION:
            raise FileFormatError(f"{path}: not a labels file of prefrl annotate (no "
                                  f"extensions.{EXTENSION} of schema_version {EXTENSION_VERSION})")
        if ext.get("label") != label_name or label_name not in dataset.labels:
            raise FileFormatError(f"{path}: holds people's labels named {ext.get('label')!r}, "
                                  f"not {label_name!r}")
        annotators = ext.get("annotators")
        if not isinstance(annotators, list) or not all(isinstance(a, str) for a in annotators):
            raise FileFormatError(f"{path}: extensions.{EXTENSION}.annotators must be a list "
                                  "of names")
        arrays = read_npz_arrays(path)
        fields = {}
        for name in FIELDS:
            key = f"{EXTENSION}.{name}.{label_name}"
            if key not in arrays or arrays[key].shape != (dataset.num_queries,):
                raise FileFormatError(f"{path}: array {key} missing or not [Q]")
            fields[name] = arrays[key].copy()
        store = cls(Path(path), dataset, {**header, "source": ext.get("source", "")},
                    label_name, fields, list(annotators))
        store._check_consistent()
        return store

    def _check_consistent(self) -> None:
        f, where = self.fields, f"{self.path}: {EXTENSION}"
        answered = f["order"] >= 0
        bad = {
            "annotator index out of range": (f["annotator"] < -1)
            | (f["annotator"] >= len(self.annotators)),
            "an answered query without annotator": answered & (f["annotator"] < 0),
            "a pending query with an annotator or a label": ~answered
            & ((f["annotator"] >= 0) | self.mask | f["skipped"]),
            "a skipped query with a label in use": f["skipped"] & self.mask,
            "an answered, unskipped query whose label is masked": answered & ~f["skipped"]
            & ~self.mask,
        }
        for what, where_bad in bad.items():
            if where_bad.any():
                first = int(np.flatnonzero(where_bad)[0])
                raise FileFormatError(f"{where}: {what} (query {first})")
        orders = f["order"][answered]
        if len(np.unique(orders)) != orders.size:
            raise FileFormatError(f"{where}: answering order repeats a number")

    def check_same_queries(self, dataset: PreferenceDataset, where: str) -> None:
        """``ValueError`` unless ``dataset`` has this file's queries and segments (for resuming)."""
        mine = self.dataset
        pairs = ((mine.first, dataset.first), (mine.second, dataset.second),
                 (mine.segments.qpos, dataset.segments.qpos),
                 (mine.segments.obs, dataset.segments.obs))
        same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
        if not same:
            raise ValueError(f"{self.path} holds labels of other queries than {where}; give "
                             "another labels file (or remove it to start over)")

    # ------------------------------------------------------------------ reading

    @property
    def num_queries(self) -> int:
        return int(self.label.shape[0])

    @property
    def segments(self) -> Segments:
        return self.dataset.segments

    def pair(self, query: int) -> tuple[int, int]:
        """(left, right) segment indices of ``query`` (left = first)."""
        return int(self.dataset.first[query]), int(self.dataset.second[query])

    def next_pending(self) -> int | None:
        """The first query not yet answered, or ``None`` when every query is."""
        pending = np.flatnonzero(self.fields["order"] < 0)
        return int(pending[0]) if pending.size else None

    def next_pending_after(self, query: int) -> int | None:
        """The first pending query after ``query`` (what the page will show next)."""
        pending = np.flatnonzero(self.fields["order"][query + 1:] < 0)
        return int(pending[0]) + query + 1 if pending.size else None

    def progress(self) -> dict[str, int]:
        with self._lock:
            answered = self.fields["order"] >= 0
            skipped = self.fields["skipped"]
            return {"total": self.num_queries, "answered": int(answered.sum()),
                    "labelled": int(self.mask.sum()), "skipped": int(skipped.sum()),
                    "equal": int((self.mask & (self.label == 0.5)).sum()),
                    "pending": int((~answered).sum())}

    def done(self) -> bool:
        return self.next_pending() is None

    def check_query(self, query: object) -> int:
        """The query id, or :class:`RequestError` (404 for an id the query set does not have)."""
        if isinstance(query, bool) or not isinstance(query, int):
            raise RequestError(f"query must be an integer id, got {query!r}", 422)
        if not 0 <= query < self.num_queries:
            raise RequestError(f"unknown query id {query}: this set has queries "
                               f"0..{self.num_queries - 1}", 404)
        return query

    # ------------------------------------------------------------------ changing

    def answer(self, query: object, answer: object, annotator: object) -> dict[str, Any]:
        """Record ``answer`` (``left``, ``right``, ``equal`` or ``skip``) by ``annotator``; save.

        Everything is validated before anything changes (:class:`RequestError`
        with the HTTP status: 404 unknown query, 422 bad answer or annotator,
        409 a query answered already).
        """
        name = check_annotator(annotator)
        if not isinstance(answer, str) or (answer not in ANSWERS and answer != "skip"):
            raise RequestError(f"answer must be one of {[*ANSWERS, 'skip']}, got {answer!r}", 422)
        with self._lock:
            q = self.check_query(query)
            if self.fields["order"][q] >= 0:
                raise RequestError(f"query {q} is answered already; undo it first", 409)
            if name not in self.annotators:
                self.annotators.append(name)
            old = self._snapshot()
            f = self.fields
            f["annotator"][q] = self.annotators.index(name)
            f["order"][q] = int(f["order"].max(initial=-1)) + 1
            f["time"][q] = time.time()
            f["skipped"][q] = answer == "skip"
            self.mask[q] = answer != "skip"
            self.label[q] = ANSWERS.get(answer, 0.5)
            self._save_or_restore(old)
            return {"query": q, "answer": answer, "label": float(self.label[q])}

    def undo(self) -> int | None:
        """Take back the latest answer (of anyone); its query id, or ``None`` if none; save."""
        with self._lock:
            if not (self.fields["order"] >= 0).any():
                return None
            q = int(np.argmax(self.fields["order"]))
            old = self._snapshot()
            self.fields["annotator"][q] = -1
            self.fields["order"][q] = -1
            self.fields["time"][q] = 0.0
            self.fields["skipped"][q] = False
            self.mask[q] = False
            self.label[q] = 0.5
            self._save_or_restore(old)
            return q

    def _snapshot(self) -> tuple:
        return (self.label.copy(), self.mask.copy(), {k: v.copy() for k, v in self.fields.items()},
                list(self.annotators))

    def _save_or_restore(self, old: tuple) -> None:
        """Save; on failure put the old values back so memory and file agree."""
        try:
            self.save()
        except BaseException:
            self.label, self.mask, self.fields, self.annotators = old
            raise
        self.changed.notify_all()

    def to_dataset(self) -> PreferenceDataset:
        """The dataset with the current people's labels (masked where pending or skipped)."""
        labels = dict(self.dataset.labels)
        masks = dict(self.dataset.label_mask)
        labels[self.label_name] = jnp.asarray(self.label)
        masks[self.label_name] = jnp.asarray(self.mask)
        return self.dataset.replace(labels=labels, label_mask=masks)

    def save(self) -> Path:
        with self._lock:
            ext_header = {"schema_version": EXTENSION_VERSION, "label": self.label_name,
                          "annotators": list(self.annotators), "source": self.header["source"]}
            arrays = {f"{k}.{self.label_name}": v for k, v in self.fields.items()}
            return dataset_lib.save(
                self.path, self.to_dataset(), task=self.header.get("task", ""),
                oracles=self.header.get("oracles"), seeds=self.header.get("seeds"),
                meta=self.header.get("meta"), extensions={EXTENSION: (ext_header, arrays)})

    def wait_done(self, timeout: float | None = None) -> bool:
        """Block until every query is answered (or ``timeout`` s); whether it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while not self.done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.changed.wait(timeout=left if left is not None else 1.0)
            return True
