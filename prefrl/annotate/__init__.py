"""People as teachers: a local labelling page over the project's dataset files.

:class:`LabelStore` (``store``) keeps the labels; :func:`make_app` and
:func:`serve_queries` (``server``) serve them; ``interchange`` reads and
writes Uni-RLHF's and imitation's preference files.
"""

from prefrl.annotate.server import Server, VideoCache, make_app, serve_queries
from prefrl.annotate.store import LabelStore, RequestError

__all__ = ["LabelStore", "RequestError", "Server", "VideoCache", "make_app", "serve_queries"]
