"""``prefkit annotate``: collect human feedback in the browser (wiring only, see :mod:`prefkit.annotate`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefkit.annotate.config import ProjectConfig, ServeConfig
from prefkit.cli import COMMAND_HELP
from prefkit.cli.common import add_read_arguments, open_reader, with_layout_notice
from prefkit.config import add_dataclass_arguments, dataclass_from_args

DESCRIPTION = """\
Collect human feedback: people compare, rank, rate or thumb responses in a
browser; every vote is kept and exported as records that 'prefkit rm train'
reads directly.

A project lives in a database: SQLite by default (--db FILE or sqlite:///FILE;
default $PREFKIT_ANNOTATE_DB or ./prefkit-annotate.db), or PostgreSQL for a team
(--db postgresql://USER@HOST/DB). Needs the extra: pip install 'prefkit[annotate]'.
"""

EPILOG = """\
a whole round:
  prefkit annotate create helpful --data pairs.jsonl --task pairwise --overlap 3 --guidelines guide.md
  prefkit annotate add-annotator helpful ana          # prints ana's login token, once
  prefkit annotate add-annotator helpful lead --admin
  prefkit annotate serve --port 8080                  # open http://127.0.0.1:8080/login
  prefkit annotate status helpful
  prefkit annotate export helpful --out votes.jsonl
  prefkit rm train votes.jsonl --out runs/rm          # soft labels from the votes
"""

CREATE_EPILOG = """\
examples:
  prefkit annotate create helpful --data pairs.jsonl --task pairwise --overlap 3
  prefkit annotate create best --data candidates.jsonl --task ranking --overlap 2
  prefkit annotate create quality --data answers.jsonl --task rating \\
      --attribute helpfulness=1..5 --attribute correctness=1..3 --level ordinal
  prefkit annotate create hard --data pairs.jsonl --task pairwise --overlap 3 \\
      --priority uncertainty --reward runs/rm --gold gold.jsonl --gold-every 10
DATA is any file prefkit reads; labels already in it are not shown to annotators.
Rating and binary projects make one item per response; --attributes FILE.json takes
a list of {"name", "minimum", "maximum", "description"} objects.
"""


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="database: a file path or sqlite:///FILE (default $PREFKIT_ANNOTATE_DB or "
        "./prefkit-annotate.db), or postgresql://USER:PASSWORD@HOST:PORT/DB",
    )


def register(commands: argparse._SubParsersAction) -> None:
    annotate = commands.add_parser(
        "annotate",
        help=COMMAND_HELP["annotate"],
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = annotate.add_subparsers(title="annotate commands", metavar="COMMAND")
    annotate.set_defaults(handler=lambda args: annotate.print_help() or 2)

    create = sub.add_parser(
        "create",
        help="create a project from a data file",
        description="Create an annotation project: its items, task, overlap and guidelines.",
        epilog=CREATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("project", metavar="PROJECT", help="project name (letters, digits, . _ -)")
    create.add_argument("--data", required=True, metavar="FILE", help="the items to annotate")
    create.add_argument(
        "--guidelines", metavar="FILE.md", help="guidelines (Markdown) shown on every page"
    )
    create.add_argument(
        "--reward", metavar="RM_DIR", help="reward-model folder for --priority uncertainty"
    )
    create.add_argument(
        "--gold", metavar="FILE", help="gold items: records of the task's kind with known answers"
    )
    create.add_argument(
        "--attribute",
        action="append",
        default=[],
        metavar="NAME=MIN..MAX",
        help="a rating attribute and its integer scale, e.g. helpfulness=1..5 (repeatable)",
    )
    create.add_argument(
        "--attributes", metavar="FILE.json", help="rating attributes from a JSON file"
    )
    _add_db(create)
    add_dataclass_arguments(create, ProjectConfig, skip=("attributes",), title="project options")
    add_read_arguments(create)
    create.set_defaults(handler=_create)

    add = sub.add_parser(
        "add-annotator",
        help="add an annotator and print their login token (shown once)",
        description="Add an annotator (or, with --admin, a project admin) and print the login "
        "token. Only a hash of it is stored: keep it, or add the person again under another name.",
    )
    add.add_argument("project", metavar="PROJECT")
    add.add_argument(
        "name", metavar="NAME", help="the annotator's name (shown in reports and exports)"
    )
    add.add_argument(
        "--admin", action="store_true", help="may see the admin page and download the export"
    )
    _add_db(add)
    add.set_defaults(handler=_add_annotator)

    serve = sub.add_parser(
        "serve",
        help="serve the annotation pages",
        description="Serve every project in the database. Annotators log in at /login with "
        "their token; admins also see /p/PROJECT/admin.",
    )
    _add_db(serve)
    add_dataclass_arguments(serve, ServeConfig, title="server options")
    serve.set_defaults(handler=_serve)

    status = sub.add_parser(
        "status",
        help="progress, agreement and flagged annotators of a project",
        description="Progress per annotator, Krippendorff's alpha, Fleiss' kappa, agreement of "
        "each annotator with the others and with gold items, and flags.",
    )
    status.add_argument("project", metavar="PROJECT")
    status.add_argument("--json", action="store_true", help="print the full report as JSON")
    _add_db(status)
    status.set_defaults(handler=_status)

    export = sub.add_parser(
        "export",
        help="write the answers as canonical records, every vote kept",
        description="Write one record per answered item with every annotator's vote (pairwise: "
        "votes plus the plurality outcome, an even split being a tie; ranking: mean ranks; "
        "rating: mean ratings; binary: the majority label) and each vote's strength, "
        "rationale, times and shown order in metadata['annotate']. "
        "'prefkit rm train' reads the file directly.",
    )
    export.add_argument("project", metavar="PROJECT")
    export.add_argument(
        "--out", required=True, metavar="FILE", help=".jsonl, .jsonl.gz or .parquet"
    )
    export.add_argument("--no-gold", action="store_true", help="leave gold items out")
    export.add_argument(
        "--min-votes",
        type=int,
        default=1,
        metavar="N",
        help="only items with at least N answers (default: 1)",
    )
    _add_db(export)
    export.set_defaults(handler=_export)


def _open(args: argparse.Namespace):  # noqa: ANN202 - a Store
    try:
        from prefkit.annotate.store import open_store
    except ImportError as error:
        from prefkit.errors import UserInputError

        raise UserInputError(
            f"prefkit annotate needs its extra ({error.name} is missing): "
            "pip install 'prefkit[annotate]'"
        ) from None
    return open_store(args.db)


def _create(args: argparse.Namespace) -> int:
    from prefkit.annotate.config import check_project_name, parse_attribute, read_attributes_file
    from prefkit.annotate.project import check_reward_option, create_project
    from prefkit.data.read import FeedbackReader

    attributes = tuple(parse_attribute(spec) for spec in args.attribute)
    if args.attributes:
        attributes += read_attributes_file(args.attributes)
    config = dataclass_from_args(ProjectConfig, args, attributes=attributes)
    check_project_name(args.project)  # mistakes in the options first, before reading the data
    check_reward_option(config, args.reward)
    guidelines = Path(args.guidelines).read_text(encoding="utf-8") if args.guidelines else ""
    store = _open(args)
    try:
        # with --on-error skip, bad records go to ./PROJECT.rejects.jsonl (never beside the data)
        reader = open_reader(args, args.data, rejects_for=Path(args.project))
        records = list(with_layout_notice(reader))
        gold = list(FeedbackReader(args.gold)) if args.gold else []
        summary = create_project(
            store,
            args.project,
            records,
            config,
            guidelines=guidelines,
            gold=gold,
            reward_dir=args.reward,
            source=str(args.data),
            gold_source=str(args.gold),
        )
    finally:
        store.close()
    print(reader.stats.summary(), file=sys.stderr)
    print(
        f"created project {args.project!r}: {summary.n_items} items"
        + (f" and {summary.n_gold} gold items" if summary.n_gold else "")
        + f", {config.task}, overlap {config.overlap}, {config.priority} order"
    )
    print(f"next: prefkit annotate add-annotator {args.project} NAME")
    return 0


def _add_annotator(args: argparse.Namespace) -> int:
    from prefkit.annotate.project import add_annotator

    store = _open(args)
    try:
        token = add_annotator(store, args.project, args.name, admin=args.admin)
    finally:
        store.close()
    role = "admin" if args.admin else "annotator"
    print(f"added {role} {args.name!r} to project {args.project!r}; login token (shown once):")
    print(token)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from prefkit.annotate.web import serve

    config = dataclass_from_args(ServeConfig, args)
    store = _open(args)
    try:
        serve(store, config)
    finally:
        store.close()
    return 0


def _status(args: argparse.Namespace) -> int:
    from prefkit.annotate.agreement import describe_alpha
    from prefkit.annotate.project import project_report

    store = _open(args)
    try:
        report = project_report(store, args.project)
    finally:
        store.close()
    if args.json:
        print(json.dumps(_finite(report.to_json()), indent=2))
        return 0
    print(
        f"project {report.name}: {report.task}, overlap {report.overlap}; "
        f"{report.labels_done} of {report.labels_needed} labels, "
        f"{report.items_complete} of {report.n_items} items complete"
        + (f", {report.n_gold} gold items" if report.n_gold else "")
    )
    for row in report.agreement:
        kappa = "" if row.fleiss_kappa is None else f", Fleiss' kappa {_fmt(row.fleiss_kappa)}"
        print(
            f"agreement ({row.name}, {row.level}): Krippendorff's alpha {_fmt(row.alpha)} "
            f"[{describe_alpha(row.alpha)}]{kappa} over {row.n_units} units"
        )
    if report.annotators:
        print(
            f"{'annotator':<24} {'done':>5} {'open':>5} {'skip':>5} {'med s':>7} {'agree':>6} {'gold':>6}  flags"
        )
    for person in report.annotators:
        print(
            f"{person.name[:24]:<24} {person.done:>5} {person.leased:>5} {person.skipped:>5} "
            f"{_fmt(person.median_seconds, 1):>7} {_fmt(person.agreement, 2):>6} "
            f"{_fmt(person.gold_accuracy, 2):>6}  {'; '.join(person.flags)}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from prefkit.annotate.project import export_project

    store = _open(args)
    try:
        summary = export_project(
            store, args.project, args.out, include_gold=not args.no_gold, min_votes=args.min_votes
        )
    finally:
        store.close()
    print(f"{summary.describe()} -> {args.out}")
    return 0


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


def _finite(value: object) -> object:
    """NaN (an undefined agreement) as JSON null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
