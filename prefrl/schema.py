"""Header schemas: what each kind of prefrl file may say in its JSON header (no JAX).

A file's header is trusted only after its kind's :class:`Schema` has checked
it (:func:`check`, called by :func:`prefrl.io.load_npz` for every kind
registered here): each field's type, range and finiteness, the task name
and its parameters. A broken rule raises :class:`SchemaError` naming the field,
which ``load_npz`` reports as a :class:`prefrl.io.FileFormatError` naming the file too
(``data.npz: header field 'meta.task_params.target_speed': expected a finite number,
got nan``). Task names are prefrl's tasks, plus the names of other environments'
data registered with :func:`register_task_name`.

A schema is a mapping of field name → :class:`Field` (a check and whether the
field is required) plus cross-field checks. Later kinds register their own
(:func:`register`) or extend an existing one (:func:`extend`)::

    schema.register("sac_checkpoint", schema.Schema({
        "obs_dim": schema.required(schema.integer(min=1)),
        "task": schema.optional(schema.task_name()),
    }, checks=(schema.task_params_agree("task", "task_params"),)))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Check = Callable[[Any, str], None]
"""``check(value, field_path)``: raises :class:`SchemaError` when ``value`` is wrong."""


class SchemaError(ValueError):
    """A header field is wrong: ``field`` is its dotted path, the message says why."""

    def __init__(self, field: str, message: str):
        super().__init__(f"header field {field!r}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a header: its check, whether it must be present, whether null is allowed."""

    check: Check
    required: bool = False
    nullable: bool = False


def required(check: Check) -> Field:
    return Field(check, required=True)


def optional(check: Check, *, nullable: bool = True) -> Field:
    return Field(check, required=False, nullable=nullable)


@dataclasses.dataclass(frozen=True)
class Schema:
    """The fields of one kind of header (unknown fields pass) and its cross-field checks."""

    fields: Mapping[str, Field]
    checks: tuple[Callable[[Mapping[str, Any]], None], ...] = ()

    def __call__(self, value: Any, path: str = "") -> None:
        if not isinstance(value, Mapping):
            raise SchemaError(path or "(header)",
                              f"expected a JSON object, got {_describe(value)}")
        for name, spec in self.fields.items():
            where = f"{path}.{name}" if path else name
            if name not in value:
                if spec.required:
                    raise SchemaError(where, "missing")
                continue
            item = value[name]
            if item is None:
                if spec.nullable:
                    continue
                raise SchemaError(where, "must not be null")
            spec.check(item, where)
        for cross in self.checks:
            try:
                cross(value)
            except SchemaError as err:
                if path:
                    raise SchemaError(f"{path}.{err.field}", str(err).split(": ", 1)[1]) from err
                raise


def _describe(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number",
             str: "a string", list: "a list", dict: "an object"}
    kind = names.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


# --------------------------------------------------------------------------- field checks


def integer(*, min: int | None = None, max: int | None = None) -> Check:  # noqa: A002
    def check(value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"expected an integer, got {_describe(value)}")
        if min is not None and value < min:
            raise SchemaError(path, f"must be >= {min}, got {value}")
        if max is not None and value > max:
            raise SchemaError(path, f"must be <= {max}, got {value}")
    return check


def number(*, min: float | None = None, max: float | None = None,  # noqa: A002
           positive: bool = False) -> Check:
    """A finite number (int or float) within ``[min, max]`` (``positive``: > 0)."""
    def check(value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(path, f"expected a finite number, got {_describe(value)}")
        if not math.isfinite(value):
            raise SchemaError(path, f"expected a finite number, got {value}")
        if positive and value <= 0:
            raise SchemaError(path, f"must be > 0, got {value}")
        if min is not None and value < min:
            raise SchemaError(path, f"must be >= {min}, got {value}")
        if max is not None and value > max:
            raise SchemaError(path, f"must be <= {max}, got {value}")
    return check


def string(*, choices: Sequence[str] | None = None) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a string, got {_describe(value)}")
        if choices is not None and value not in choices:
            raise SchemaError(path, f"{value!r} is not one of {sorted(choices)}")
    return check


def boolean() -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true or false, got {_describe(value)}")
    return check


def obj() -> Check:
    """Any JSON object (its content checked elsewhere, e.g. by a config dataclass)."""
    def check(value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise SchemaError(path, f"expected an object, got {_describe(value)}")
    return check


def list_of(item: Check, *, min_len: int = 0) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise SchemaError(path, f"expected a list, got {_describe(value)}")
        if len(value) < min_len:
            raise SchemaError(path, f"needs at least {min_len} entries, got {len(value)}")
        for i, x in enumerate(value):
            item(x, f"{path}[{i}]")
    return check


def mapping_of(item: Check) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise SchemaError(path, f"expected an object, got {_describe(value)}")
        for key, x in value.items():
            item(x, f"{path}.{key}")
    return check


OTHER_TASKS: set[str] = {"unknown", "synthetic"}
"""Task names a file may record besides prefrl's tasks (:func:`register_task_name` adds one)."""


def register_task_name(name: str) -> None:
    """Let files record task ``name`` of another environment (e.g. a dataset imported from
    another benchmark, ``"hopper"``); prefrl's own tasks need no registration."""
    OTHER_TASKS.add(str(name))


def task_name() -> Check:
    """A registered half-cheetah task (``prefrl.envs.TASKS``) or one of :data:`OTHER_TASKS`."""
    def check(value: Any, path: str) -> None:
        from prefrl.envs.tasks import TASKS

        if not isinstance(value, str):
            raise SchemaError(path, f"expected a task name, got {_describe(value)}")
        if value not in TASKS and value not in OTHER_TASKS:
            raise SchemaError(path, f"unknown task {value!r}; valid tasks: {sorted(TASKS)} "
                              "(data of another environment: prefrl.schema.register_task_name)")
    return check


def same_task_as_training(header: Mapping[str, Any]) -> None:
    """A PPO checkpoint's ``task``/``task_params`` are those its ``train_config`` trained on."""
    from prefrl.envs.tasks import TASKS

    train = header.get("train_config")
    # A custom environment (prefrl.loops.ppo's env_factory) names its own task: not checked.
    if not isinstance(train, Mapping) or train.get("task") not in TASKS or (
            header.get("task") not in TASKS):
        return
    if train["task"] != header["task"]:
        raise SchemaError("task", f"says {header['task']!r}, but 'train_config.task' (the task "
                                  f"it was trained on) says {train['task']!r}")
    given = train.get("task_param") or []
    params = header.get("task_params") if isinstance(header.get("task_params"), Mapping) else {}
    for item in given if isinstance(given, list) else []:
        key, _, text = str(item).partition("=")
        try:
            value = float(text)
        except ValueError:
            continue
        if key.strip() in params and params[key.strip()] != value:
            raise SchemaError(f"task_params.{key.strip()}",
                              f"is {params[key.strip()]!r}, but it was trained with {item!r}")


def task_params_agree(task_field: str, params_field: str) -> Callable[[Mapping[str, Any]], None]:
    """A cross check: ``params_field`` holds finite values of parameters ``task_field`` declares.

    Dotted names reach into nested objects (``meta.task_params``).
    """
    def get(header: Mapping[str, Any], dotted: str) -> Any:
        node: Any = header
        for part in dotted.split("."):
            if not isinstance(node, Mapping):
                return None
            node = node.get(part)
        return node

    def check(header: Mapping[str, Any]) -> None:
        from prefrl.envs.tasks import TASKS

        params = get(header, params_field)
        if params is None:
            return
        mapping_of(number())(params, params_field)
        task = get(header, task_field)
        if task in TASKS:
            allowed = TASKS[task].defaults
            unknown = sorted(set(params) - set(allowed))
            if unknown:
                raise SchemaError(f"{params_field}.{unknown[0]}",
                                  f"task {task!r} has no such parameter; valid: {sorted(allowed)}")
            if params.get("ctrl_cost_weight", 0.0) < 0:
                raise SchemaError(f"{params_field}.ctrl_cost_weight",
                                  f"must be >= 0, got {params['ctrl_cost_weight']}")
    return check


def same_length(a: str, b: str) -> Callable[[Mapping[str, Any]], None]:
    def check(header: Mapping[str, Any]) -> None:
        x, y = header.get(a), header.get(b)
        if isinstance(x, list) and isinstance(y, list) and x and y and len(x) != len(y):
            raise SchemaError(b, f"has {len(y)} entries, but {a!r} has {len(x)}")
    return check


# --------------------------------------------------------------------------- the registry

_TASK_PARAMS = optional(mapping_of(number()))
_POSITIVE_INT = integer(min=1)

SCHEMAS: dict[str, Schema] = {
    "trajectory": Schema({
        "task": required(task_name()),
        "task_params": _TASK_PARAMS,
        "num_steps": optional(integer(min=0), nullable=False),
        "num_envs": optional(integer(min=0), nullable=False),
        "seed": optional(integer()),
        "policy": optional(string()),
        "checkpoint": optional(string()),
        "deterministic": optional(boolean()),
    }, checks=(task_params_agree("task", "task_params"),)),
    "preference_dataset": Schema({
        "task": optional(task_name()),
        "segment_length": optional(_POSITIVE_INT, nullable=False),
        "num_segments": optional(integer(min=0), nullable=False),
        "num_queries": optional(integer(min=0), nullable=False),
        "labels": required(list_of(string())),
        "oracles": optional(mapping_of(obj())),
        "seeds": optional(mapping_of(integer())),
        "meta": optional(Schema({"task_params": _TASK_PARAMS, "trajectory": optional(string()),
                                 "expert": optional(string())})),
    }, checks=(task_params_agree("task", "meta.task_params"),)),
    "ppo_checkpoint": Schema({
        "obs_dim": required(_POSITIVE_INT),
        "act_dim": required(_POSITIVE_INT),
        "ppo_config": required(obj()),
        "num_updates": optional(_POSITIVE_INT),
        "policy_hidden": optional(list_of(_POSITIVE_INT), nullable=False),
        "value_hidden": optional(list_of(_POSITIVE_INT), nullable=False),
        "discount": optional(number(min=0.0, max=1.0), nullable=False),
        "task": optional(task_name()),
        "task_params": _TASK_PARAMS,
        "reward": optional(string(), nullable=False),
        "train_config": optional(obj()),
        "progress": optional(obj()),
        "extra": optional(obj()),
    }, checks=(task_params_agree("task", "task_params"), same_task_as_training)),
    "policy": Schema({
        "algo": optional(string()),
        "network": required(Schema({
            "action_dim": required(_POSITIVE_INT),
            "hidden": required(list_of(_POSITIVE_INT)),
            "state_dependent_std": required(boolean()),
            "obs_mean": optional(list_of(number()), nullable=False),
            "obs_std": optional(list_of(number(positive=True)), nullable=False),
            "type": optional(string()),
            # prefrl.networks.ACTIVATIONS (SAC's actors are ReLU); tests/test_sac_resume.py
            # loads one.
            "activation": optional(string(choices=("tanh", "relu"))),
        }, checks=(same_length("obs_mean", "obs_std"),))),
        "meta": optional(Schema({"task": optional(task_name())})),
    }),
    "reward_model": Schema({
        "config": required(obj()),
        "network": optional(string()),
        "obs_dim": required(_POSITIVE_INT),
        "act_dim": required(_POSITIVE_INT),
        "segment_length": required(_POSITIVE_INT),
        "extra": optional(obj()),
    }),
    "regret_sf_reward": Schema({
        "phi": required(Schema({"kind": required(string(choices=("frozen", "learned")))})),
        "obs_dim": required(_POSITIVE_INT),
        "act_dim": required(_POSITIVE_INT),
        "feature_dim": optional(_POSITIVE_INT),
        "task": optional(Schema({"task": optional(task_name()), "task_params": _TASK_PARAMS},
                                checks=(task_params_agree("task", "task_params"),))),
        "extra": optional(obj()),
    }),
}


def register(kind: str, schema: Schema) -> None:
    """Add the schema of a new file kind (an existing kind is refused: use :func:`extend`)."""
    if kind in SCHEMAS:
        raise ValueError(f"kind {kind!r} already has a schema; use schema.extend")
    SCHEMAS[kind] = schema


def extend(kind: str, checks: Sequence[Callable[[Mapping[str, Any]], None]] = (),
           **fields: Field) -> None:
    """Add fields (and cross-field checks) to the schema of ``kind``."""
    old = SCHEMAS[kind]
    SCHEMAS[kind] = Schema({**old.fields, **fields}, (*old.checks, *checks))


def check(kind: str, header: Any) -> None:
    """Raise :class:`SchemaError` naming the field when ``header`` breaks its kind's schema.

    Kinds without a registered schema only need a JSON object.
    (:func:`prefrl.io.load_npz` turns it into a ``FileFormatError`` naming the file.)
    """
    SCHEMAS.get(kind, Schema({}))(header)


__all__ = ["OTHER_TASKS", "SCHEMAS", "Field", "Schema", "SchemaError", "boolean", "check",
           "extend", "integer", "list_of", "mapping_of", "number", "obj", "optional", "register",
           "register_task_name", "required", "same_length", "same_task_as_training", "string",
           "task_name", "task_params_agree"]
