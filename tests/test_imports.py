"""Every public module imports, and importing the package stays light."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import prefkit
import prefkit.cli


def run_python(code: str) -> str:
    """The standard output of ``code`` run in a fresh interpreter (so that its imports are
    its own)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def all_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(prefkit.__path__, prefix="prefkit."))


def test_every_module_imports() -> None:
    names = [name for name in all_modules() if not name.endswith("__main__")]
    assert "prefkit.data.records" in names and "prefkit.cli" in names
    for name in names:
        importlib.import_module(name)


def test_package_and_data_layer_import_without_heavy_libraries() -> None:
    code = (
        "import sys, prefkit, prefkit.data, prefkit.cli; "
        "heavy = [m for m in ('torch', 'transformers', 'pyarrow', 'datasets', 'peft', 'ray') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    output = run_python(code)
    assert output.strip() == ""


def test_losses_import_only_torch() -> None:
    code = (
        "import sys, prefkit.losses.reward, prefkit.losses.preference, prefkit.losses.rl; "
        "print(','.join(m for m in ('transformers', 'pyarrow', 'trl', 'scipy') if m in sys.modules))"
    )
    output = run_python(code)
    assert output.strip() == ""


def test_annotate_loads_its_server_and_database_only_when_used() -> None:
    code = (
        "import sys, prefkit.cli, prefkit.annotate.config, prefkit.annotate.tasks, "
        "prefkit.annotate.agreement; prefkit.cli.build_parser; "
        "print(','.join(m for m in ('sqlalchemy', 'alembic', 'starlette', 'uvicorn', 'psycopg', "
        "'jinja2', 'markdown_it') if m in sys.modules))"
    )
    output = run_python(code)
    assert output.strip() == ""


def test_serve_loads_its_web_framework_only_when_serving() -> None:
    code = (
        "import sys, prefkit.cli, prefkit.serve, prefkit.serve.config; "
        "prefkit.cli.build_parser(('serve',)); "
        "print(','.join(m for m in ('fastapi', 'uvicorn', 'starlette', 'pydantic', 'httpx', 'torch') "
        "if m in sys.modules))"
    )
    output = run_python(code)
    assert output.strip() == ""


def test_listing_the_commands_imports_no_command_module() -> None:
    """``prefkit --help`` (and a mistyped command) list every command from
    :data:`prefkit.cli.COMMAND_HELP` without importing torch or any command's module."""
    code = (
        "import sys, contextlib, io; from prefkit.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit): main(['--help'])\n"
        "loaded = [m for m in sys.modules if m.startswith('prefkit.cli.') or m in ('torch', 'transformers')]\n"
        "print(','.join(loaded)); print(out.getvalue())"
    )
    output = run_python(code)
    loaded, help_text = output.split("\n", 1)
    assert loaded == ""
    for name in prefkit.cli.COMMAND_MODULES:
        assert f"    {name}" in help_text
    wrong = subprocess.run(
        [sys.executable, "-m", "prefkit", "scor"], capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "invalid choice: 'scor'" in wrong.stderr
