"""The naming scheme of every parameter file: pytree leaves ↔ named arrays.

Array names are a prefix, then the pytree path of the leaf, one
``/``-separated part per dict key, dataclass field or sequence index
(``state/policy_params/params/Dense_0/kernel``). PRNG keys are stored as
their raw key data (uint32). :mod:`prefrl.checkpoints` (the file kinds)
re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl.io import FileFormatError


class NonFiniteError(ValueError):
    """Refusing to write parameters that hold NaN or inf."""


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _part(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def array_name(prefix: str, path: tuple) -> str:
    """``prefix/part/part/…``: the name of the leaf at ``path`` (a pytree key path)."""
    return "/".join([prefix, *(_part(p) for p in path)])


def flatten(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    """``{name: array}`` for every leaf of ``tree`` (names by :func:`array_name`)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        out[array_name(prefix, path)] = np.asarray(value)
    return out


def unflatten(template: Any, arrays: Mapping[str, np.ndarray], prefix: str, where: str) -> Any:
    """Fill ``template``'s structure from ``arrays`` (names as :func:`flatten` writes them).

    A leaf missing under its name is looked up under its older name
    ``prefix + keystr(path)`` (PPO checkpoints written before this scheme).
    Raises ``FileFormatError`` naming a missing array or a shape mismatch;
    dtypes follow the template.
    """
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in paths:
        name = array_name(prefix, path)
        if name not in arrays:
            name = prefix + jax.tree_util.keystr(path)
        if name not in arrays:
            raise FileFormatError(f"{where}: missing array {array_name(prefix, path)!r}")
        value = arrays[name]
        expected = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        if tuple(value.shape) != tuple(np.shape(expected)):
            raise FileFormatError(
                f"{where}: array {name!r} has shape {value.shape}, expected "
                f"{tuple(np.shape(expected))} (network sizes do not match the header?)"
            )
        if _is_key(leaf):
            leaves.append(jax.random.wrap_key_data(jnp.asarray(value, jnp.uint32)))
        else:
            dtype = getattr(expected, "dtype", None) or np.asarray(expected).dtype
            leaves.append(jnp.asarray(value, dtype=dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def unflatten_dict(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """The nested dict of every array under ``prefix/`` (flax parameters need no template)."""
    out: dict[str, Any] = {}
    for name, value in arrays.items():
        if not name.startswith(prefix + "/"):
            continue
        node = out
        *parents, last = name[len(prefix) + 1:].split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = jnp.asarray(value)
    return out


def _refuse_non_finite(arrays: Mapping[str, np.ndarray], what: str) -> None:
    for name, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise NonFiniteError(f"refusing to save {what}: array {name!r} is not finite")


def _check_finite(arrays: Mapping[str, np.ndarray], where: str) -> None:
    for name, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise FileFormatError(f"{where}: array {name!r} contains NaN or inf")


__all__ = ["NonFiniteError", "array_name", "flatten", "unflatten", "unflatten_dict"]
