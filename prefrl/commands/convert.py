"""``prefrl convert``: preference files to and from Uni-RLHF and imitation.

    prefrl convert --output-format unirlhf --input runs/people/labels.npz --label human \\
        --out runs/uni
    prefrl convert --input-format unirlhf --input runs/uni \\
        --flat runs/uni/halfcheetah-prefrl_transitions.npz --task run --out runs/from_uni.npz
    prefrl convert --output-format imitation --input data.npz --label partial_return --out p.npz
    prefrl convert --input-format imitation --input p.npz --task run --out data2.npz

Uni-RLHF: a folder of three pickles (labels 0 first / 1 second / −1 equal,
``indices_1``/``indices_2`` start rows) over a flat transition ``.npz``
(``prefrl.annotate.interchange``). imitation: fragment pairs with
P(fragment 1 ≻ fragment 2), stacked in an ``.npz``. Labels are converted to
and from ours (P(first ≻ second)); skipped queries are not exported. Ends
with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Literal

from prefrl import config as cfg
from prefrl.config import ConfigError, field

FORMATS = ("prefrl", "unirlhf", "imitation")


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Options of ``prefrl convert``."""

    input: str = field("", "file (prefrl, imitation) or label folder (unirlhf) to read")
    out: str = field("", "file (prefrl, imitation) or folder (unirlhf) to write")
    input_format: Literal["prefrl", "unirlhf", "imitation"] = field("prefrl",
                                                                    "format of --input")
    output_format: Literal["prefrl", "unirlhf", "imitation"] = field("prefrl", "format of --out")
    label: str = field("human", "label to export (prefrl input) / name of imported labels")
    flat: str | None = field(None, "unirlhf input: the flat transition dataset (.npz)")
    query_len: int | None = field(None, "unirlhf input: segment length (None: from the file "
                                         "names)")
    task: str = field("run", "task recorded in an imported dataset")
    env: str = field("halfcheetah-prefrl", "unirlhf output: the env name in the file names")

    def __post_init__(self) -> None:
        for name, value in (("--input-format", self.input_format),
                            ("--output-format", self.output_format)):
            if value not in FORMATS:
                raise ConfigError(f"{name} must be one of {list(FORMATS)}, got {value!r}")
        if (self.input_format == "prefrl") == (self.output_format == "prefrl"):
            raise ConfigError("one side must be prefrl: --output-format unirlhf|imitation, or "
                              "--input-format unirlhf|imitation")
        if not self.input or not self.out:
            raise ConfigError("give --input and --out")
        if self.input_format == "unirlhf" and not self.flat:
            raise ConfigError("--input-format unirlhf needs --flat: the flat transition dataset "
                              "(.npz)")
        if self.query_len is not None and self.query_len < 1:
            raise ConfigError(f"--query-len must be >= 1, got {self.query_len}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="preference files to/from Uni-RLHF and imitation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg.add_dataclass_args(p, ConvertConfig)
    p.set_defaults(func=run)


def convert(config: ConvertConfig) -> dict[str, Any]:
    from prefrl.annotate import interchange
    from prefrl.data import dataset as dataset_lib

    summary: dict[str, Any] = {"from": config.input_format, "to": config.output_format,
                               "out": config.out}
    if config.input_format == "prefrl":
        data, _ = dataset_lib.load(config.input)
        if config.label not in data.labels:
            raise ConfigError(f"--label {config.label!r}: {config.input} has labels "
                              f"{sorted(data.labels)}")
        if config.output_format == "unirlhf":
            paths = interchange.export_unirlhf(config.out, data, config.label, env=config.env)
            summary["files"] = {k: str(v) for k, v in paths.items()}
        else:
            interchange.export_imitation(config.out, data, config.label)
        summary["queries"] = int(data.label_mask[config.label].sum())
        return summary
    from prefrl import preflight

    preflight.check_output_file(config.out, "--out")
    if config.input_format == "unirlhf":
        data = interchange.import_unirlhf(config.input, config.flat, config.query_len,
                                          config.label)
    else:
        data = interchange.import_imitation(config.input, config.label)
    dataset_lib.save(config.out, data, task=config.task,
                     meta={"converted_from": config.input_format, "input": config.input})
    summary.update(queries=data.num_queries, segments=data.segments.num_segments,
                   segment_length=data.segments.length)
    return summary


def run(args: argparse.Namespace) -> int:
    print(json.dumps(convert(cfg.from_args(ConvertConfig, args))))
    return 0
