"""Options shared by the commands that read feedback data."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from prefkit.data.errors import rejects_path_for
from prefkit.data.layouts import parse_map_args
from prefkit.data.read import DEFAULT_MAX_TEXT_CHARS, FeedbackReader, known_formats
from prefkit.progress import progress_iter

T = TypeVar("T")


def add_read_arguments(parser: argparse.ArgumentParser, *, on_error_default: str = "raise") -> None:
    group = parser.add_argument_group("reading data")
    group.add_argument(
        "--format",
        metavar="NAME",
        default=None,
        help=f"a known layout ({', '.join(known_formats())}); detected and printed when omitted",
    )
    group.add_argument(
        "--map",
        metavar="KEY=FIELD",
        action="append",
        default=[],
        help="map a source field onto the canonical schema, e.g. --map prompt=instruction+input "
        "--map response_a=response1 --map response_b=response2 "
        "--map votes=annotator1+annotator2+annotator3 (repeatable; '+' joins fields)",
    )
    group.add_argument(
        "--winner-values",
        metavar="SPEC",
        default=None,
        help="what the source's winner/vote values mean, e.g. a=1,b=2,tie=0 (with --map)",
    )
    group.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default=on_error_default,
        help="raise: stop at the first bad record; skip: count it, write it with its reason "
        f"to a rejects file and go on (default: {on_error_default})",
    )
    group.add_argument(
        "--max-text-chars",
        type=int,
        default=DEFAULT_MAX_TEXT_CHARS,
        metavar="N",
        help=f"reject texts longer than N characters (default: {DEFAULT_MAX_TEXT_CHARS:,})",
    )
    empty = group.add_mutually_exclusive_group()
    empty.add_argument(
        "--reject-empty-responses",
        action="store_true",
        help="reject records with an empty response (reason empty_text; with --on-error skip "
        "they go to the rejects file). By default they are kept and counted: saying nothing "
        "can be the judged answer",
    )
    empty.add_argument(
        "--allow-empty-responses",
        dest="reject_empty_responses",
        action="store_false",
        default=False,
        help="keep records with an empty response (the default; accepted for older commands)",
    )


def open_reader(
    args: argparse.Namespace, path: str | Path, rejects_for: str | Path | None
) -> FeedbackReader:
    """A reader configured from the shared options; prints the detected layout."""
    rejects = (
        rejects_path_for(rejects_for)
        if (rejects_for is not None and args.on_error == "skip")
        else None
    )
    reader = FeedbackReader(
        path,
        format=args.format,
        mapping=parse_map_args(args.map) if args.map else None,
        winner_values=args.winner_values,
        on_error=args.on_error,
        rejects_path=rejects,
        max_text_chars=args.max_text_chars,
        reject_empty_responses=args.reject_empty_responses,
    )
    return reader


def announce_layout(reader: FeedbackReader | Any) -> None:
    """Print the layout of ``reader`` (or of anything with ``layout`` and ``detected``, such
    as a Ray run) on stderr."""
    layout = reader.layout
    if layout is None:
        return
    how = "detected" if reader.detected else "using"
    description = getattr(layout, "description", "")
    print(
        f"{how} layout: {layout.name}" + (f" ({description})" if description else ""),
        file=sys.stderr,
    )


def with_layout_notice(reader: FeedbackReader, items: Iterable[T] | None = None) -> Iterator:
    """Iterate ``reader`` (or ``items`` drawn from it, such as ``reader.batches()``),
    printing the layout once it is known (after the first row)."""
    announced = False
    if reader.layout is not None:
        announce_layout(reader)
        announced = True
    for record in reader if items is None else items:
        if not announced:
            announce_layout(reader)
            announced = True
        yield record


def progress(
    items: Iterable[T],
    *,
    description: str,
    unit: str = "rec",
    total: int | None = None,
    enabled: bool = True,
) -> Iterable[T]:
    """A tqdm progress bar on stderr (rate and ETA when the total is known)."""
    return progress_iter(items, description=description, unit=unit, total=total, enabled=enabled)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress`` (default on), the one spelling of every command; ``--quiet``
    is kept as another name for ``--no-progress``."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show progress on stderr: bars on a terminal (default: on)",
    )
    parser.add_argument(
        "--quiet", dest="progress", action="store_false", help="the same as --no-progress"
    )


def add_ray_arguments(
    group: Any, *, actors: str, each: str = "loading the model once", gpus: bool = True
) -> None:
    """Where Ray runs and how many actors (:class:`prefkit.engines.ray_runtime.RayOptions`):
    ``--ray-address``, ``--ray-workers``, ``--ray-num-cpus``, ``--ray-cpus-per-worker`` and,
    where the actors run a model (``gpus``), ``--ray-gpus-per-worker``, the same for every
    command that runs on Ray; ``actors`` names what the actors do, ``each`` what each does
    once."""
    group.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join a running Ray cluster (auto, HOST:6379, ray://HOST:10001); default: start "
        "a local Ray runtime for this command",
    )
    group.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help=f"{actors}, each {each} (default: one per --ray-cpus-per-worker CPUs of the runtime)",
    )
    group.add_argument(
        "--ray-num-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPUs of the local Ray runtime (default: all of this machine's; not with "
        "--ray-address)",
    )
    group.add_argument(
        "--ray-cpus-per-worker",
        type=int,
        default=1,
        metavar="N",
        help="CPUs each actor reserves, and its torch threads (default: 1)",
    )
    if gpus:
        group.add_argument(
            "--ray-gpus-per-worker",
            type=float,
            default=0.0,
            metavar="G",
            help="GPUs each actor reserves (0.5: two actors share a GPU); above 0 the actors "
            "run their models on cuda, so the cluster's GPU nodes need a CUDA build of torch; "
            "the default number of actors then also fits the cluster's GPUs (default: 0, CPUs)",
        )


def ray_options_from_args(args: argparse.Namespace, enabled: bool, flag: str) -> Any:
    """The :class:`~prefkit.engines.ray_runtime.RayOptions` of the ``--ray-*`` options when
    ``enabled`` (Ray Data must be installed), else None (and no ``--ray-*`` option may be
    given); ``flag`` is the option that turns Ray on, as errors name it."""
    from prefkit.errors import UserInputError

    if not enabled:
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("ray_address", "ray_workers", "ray_num_cpus")
            if getattr(args, name) is not None
        ]
        if getattr(args, "ray_gpus_per_worker", 0.0):
            given.append("--ray-gpus-per-worker")
        if given:
            raise UserInputError(f"{' and '.join(given)} need {flag}")
        return None
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserInputError(
            f"{flag} needs Ray Data: pip install 'prefkit[ray]' (or 'ray[data]')"
        ) from None
    from prefkit.engines.ray_runtime import RayOptions

    return RayOptions(
        address=args.ray_address,
        num_cpus=args.ray_num_cpus,
        workers=args.ray_workers,
        cpus_per_worker=args.ray_cpus_per_worker,
        gpus_per_worker=getattr(args, "ray_gpus_per_worker", 0.0),
    )


def add_engine_arguments(
    parser: argparse.ArgumentParser,
    *,
    actors: str,
    work: str,
    each: str = "loading the model once",
    gpus: bool = True,
) -> None:
    """``--engine local|ray`` and where Ray runs (:func:`add_ray_arguments`); ``actors``
    names the actors, ``work`` what they do (``score``), ``each`` what each does once,
    ``gpus`` whether they run a model that a GPU can take."""
    from prefkit.engines import ENGINES

    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help=f"local: this process; ray: Ray Data, a task per data file and actors that {work} "
        "(needs pip install 'prefkit[ray]'; default: local)",
    )
    add_ray_arguments(group, actors=actors, each=each, gpus=gpus)


def add_output_arguments(
    parser: argparse.ArgumentParser, *, out_help: str, out_metavar: str = "OUT"
) -> None:
    """``--out FILE`` or ``--out-shards DIR`` (one of the two) and ``--shard-format``."""
    from prefkit.engines.shard_output import SHARD_FORMATS

    outputs = parser.add_mutually_exclusive_group(required=True)
    outputs.add_argument("--out", metavar=out_metavar, default=None, help=out_help)
    outputs.add_argument(
        "--out-shards",
        metavar="DIR",
        default=None,
        help="with --engine ray: one output file per input data file, named after it "
        "(shards/part-00003.jsonl -> DIR/part-00003.jsonl), each holding its shard's "
        "records in input order; the files are written one after the other, in input "
        "order, each renamed into place when complete; their concatenation is the --out "
        "file. Files "
        "beside the output are named after DIR (DIR.rejects.jsonl). Not resumable: a "
        "rerun writes every shard again",
    )
    parser.add_argument(
        "--shard-format",
        choices=SHARD_FORMATS,
        default=None,
        help="the files of --out-shards (default: jsonl)",
    )


def output_base(args: argparse.Namespace) -> str:
    """``--out``, or ``--out-shards`` (a folder), which the files beside the output
    (``.rejects.jsonl`` and such) are named after."""
    return args.out if args.out is not None else str(Path(args.out_shards))


def check_shard_output(args: argparse.Namespace) -> None:
    """``--out-shards`` needs ``--engine ray``; ``--shard-format`` needs ``--out-shards``."""
    from prefkit.errors import UserInputError

    if args.out_shards is not None and args.engine != "ray":
        raise UserInputError(
            "--out-shards writes the shards of --engine ray; with --engine local use --out FILE"
        )
    if args.out_shards is None and args.shard_format is not None:
        raise UserInputError("--shard-format names the files of --out-shards: give --out-shards")


def ray_reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~prefkit.data.read.FeedbackReader` options of the shared reading
    options, as each Ray read task gets them."""
    return {
        "format": args.format,
        "mapping": parse_map_args(args.map) if args.map else None,
        "winner_values": args.winner_values,
        "on_error": args.on_error,
        "max_text_chars": args.max_text_chars,
        "reject_empty_responses": args.reject_empty_responses,
    }
