"""``prefkit serve``: a reward model over HTTP (wiring only, see :mod:`prefkit.serve.app`)."""

from __future__ import annotations

import argparse
import os
import sys

from prefkit.cli import COMMAND_HELP
from prefkit.config import add_dataclass_arguments, dataclass_from_args
from prefkit.serve.config import ServeConfig

API_KEYS_ENV = "PREFKIT_API_KEYS"

DESCRIPTION = """\
Serve a reward model (any folder 'prefkit rm train' writes) over HTTP. Requests
from all clients are scored together in batches. Needs the extra:
pip install 'prefkit[serve]'.

endpoints:
  POST /get_reward    OpenRLHF's remote reward model: {"query": [...], "prompts": [...]?}
  POST /v1/score      {"items": [{"prompt": ..., "response": ...}], "normalize": false}
  POST /v1/compare    {"prompt", "response_a", "response_b"} or a list -> P(a preferred)
  GET  /health        200 once the model is loaded (no key needed)
  GET  /v1/model      what is loaded;  GET /metrics: Prometheus text format

With --api-key (repeatable) or $PREFKIT_API_KEYS (comma-separated), every endpoint
but /health needs 'Authorization: Bearer KEY'. SIGTERM or Ctrl-C lets the requests
in flight finish, then stops.
"""

EPILOG = """\
examples:
  prefkit serve runs/rm --port 8000
  PREFKIT_API_KEYS=secret prefkit serve runs/rm --host 0.0.0.0 --port 8000
  curl -s http://127.0.0.1:8000/v1/score -H 'Authorization: Bearer secret' \\
       -d '{"items": [{"prompt": "Say hi", "response": "Hello!"}]}'
"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help=COMMAND_HELP["serve"],
        usage="prefkit serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] [options]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL_DIR", help="a folder written by 'prefkit rm train'")
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        action="append",
        default=None,
        help=f"a Bearer token clients must send (repeatable; default: ${API_KEYS_ENV}, "
        "comma-separated; none: no authentication)",
    )
    parser.add_argument(
        "--device", metavar="NAME", default="cpu", help="torch device (default: cpu)"
    )
    parser.add_argument(
        "--embedding-cache",
        metavar="DIR",
        default=None,
        help="keep embeddings of served texts in this folder (default: none, so clients "
        "cannot grow the disk)",
    )
    add_dataclass_arguments(parser, ServeConfig, skip=("api_keys",), title="server options")
    parser.set_defaults(handler=_serve)


def api_keys(given: list[str] | None) -> tuple[str, ...]:
    """Keys from --api-key, else from $PREFKIT_API_KEYS (comma-separated)."""
    if given:
        return tuple(given)
    return tuple(key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip())


def _serve(args: argparse.Namespace) -> int:
    from prefkit.errors import UserInputError

    try:
        from prefkit.serve.app import serve
    except ImportError as error:
        raise UserInputError(
            f"prefkit serve needs the 'serve' extra ({error}); pip install 'prefkit[serve]'"
        ) from None
    try:
        config = dataclass_from_args(ServeConfig, args, api_keys=api_keys(args.api_key))
    except ValueError as error:
        raise UserInputError(str(error)) from None
    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"{args.model}: no such model folder")
    if config.binds_all_interfaces and not config.api_keys:
        print(
            f"prefkit serve: warning: listening on all interfaces ({config.host or '*'}) without "
            f"an API key; anyone who can reach this machine can use the model. Set --api-key or "
            f"${API_KEYS_ENV}.",
            file=sys.stderr,
            flush=True,
        )
    serve(
        args.model,
        config,
        device=args.device,
        embedding_cache=args.embedding_cache,
        log=lambda line: print(line, flush=True),
    )
    return 0
