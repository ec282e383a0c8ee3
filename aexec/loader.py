"""Load user code: a pipeline file for ``aexec run``, modules for ``aexec worker start -A``.

Every failure is a :class:`~aexec.errors.LoadError` whose message is one line naming the
file (and line, where there is one), ready to print as it is::

    no such file: pipe.py
    pipe.py:12: syntax error: invalid syntax
    pipe.py: error while importing: NameError: name 'foo' is not defined

A file is imported under a module name derived from its absolute path, so two files with
the same name in different directories never collide, and its directory goes first on
``sys.path`` so that it can import its sibling modules.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from aexec.dsl import Pipeline, StepDef
from aexec.errors import DefinitionError, LoadError

MODULE_PREFIX = "aexec_file_"


def load_file(path: str | os.PathLike[str]) -> ModuleType:
    """Import the Python file at ``path`` and return the module.

    The module is registered in ``sys.modules`` under a unique name (``aexec_file_<stem>_<hash
    of its absolute path>``); loading the same file again executes it afresh.
    """
    shown = os.fspath(path)
    file = Path(shown)
    if not file.exists():
        raise LoadError(f"no such file: {shown}")
    if file.is_dir():
        raise LoadError(f"{shown} is a directory, not a Python file")
    if file.suffix != ".py":
        raise LoadError(f"{shown} is not a Python file (expected a .py file)")
    absolute = file.resolve()
    name = _module_name(absolute)
    spec = importlib.util.spec_from_file_location(name, absolute)
    if spec is None or spec.loader is None:  # pragma: no cover - .py files always have one
        raise LoadError(f"cannot load {shown}")
    module = importlib.util.module_from_spec(spec)
    directory = str(absolute.parent)
    if not sys.path or sys.path[0] != directory:
        sys.path.insert(0, directory)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise _import_failure(shown, absolute, exc) from exc
    return module


def load_module_or_file(spec: str) -> ModuleType:
    """Load ``spec``: a path to a ``.py`` file, or a dotted module name importable from here.

    The current directory is put on ``sys.path`` (as ``python -m`` does) so that modules of
    the project a worker is started in can be named directly.
    """
    if _looks_like_path(spec):
        return load_file(spec)
    if not all(part.isidentifier() for part in spec.split(".")):
        raise LoadError(f"{spec!r} is neither a module name nor a .py file")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (spec == exc.name or spec.startswith(exc.name + ".")):
            raise LoadError(f"no module named {spec!r}") from exc
        raise _import_failure(spec, None, exc) from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise _import_failure(spec, None, exc) from exc


def find_pipelines(module: ModuleType) -> dict[str, Pipeline]:
    """The pipelines in ``module``'s namespace, by pipeline name.

    Pipelines defined in the module itself win: those it merely imports are returned only
    when it defines none.  Two different pipelines with the same name are a LoadError.
    """
    found = _unique_by_name(
        (value for value in vars(module).values() if isinstance(value, Pipeline)),
        "pipelines",
        module,
    )
    own = {
        name: p for name, p in found.items() if getattr(p.fn, "__module__", None) == module.__name__
    }
    return own or found


def find_steps(modules: Iterable[ModuleType]) -> dict[str, StepDef[Any, Any]]:
    """The steps with code in the namespaces of ``modules``, by step name.

    ``remote_step`` declarations are left out: they have no code to serve.  The same step
    seen in several modules is one step; two different steps with one name are a LoadError.
    """
    steps: dict[str, StepDef[Any, Any]] = {}
    for module in modules:
        for value in vars(module).values():
            if not isinstance(value, StepDef) or value.is_remote:
                continue
            known = steps.get(value.name)
            if known is None:
                steps[value.name] = value
            elif known is not value:
                raise LoadError(
                    f"two different steps are named {value.name!r} "
                    f"(defined at {known.where} and {value.where}); give one a name= option"
                )
    return steps


def _unique_by_name(
    pipelines: Iterable[Pipeline], what: str, module: ModuleType
) -> dict[str, Pipeline]:
    found: dict[str, Pipeline] = {}
    for p in pipelines:
        known = found.get(p.name)
        if known is None:
            found[p.name] = p
        elif known is not p:
            raise LoadError(
                f"{_display_name(module)}: two different {what} are named {p.name!r} "
                f"(defined at {known.where} and {p.where})"
            )
    return found


def _display_name(module: ModuleType) -> str:
    file = getattr(module, "__file__", None)
    return _relative(file) if file else module.__name__


def _module_name(absolute: Path) -> str:
    stem = re.sub(r"\W", "_", absolute.stem)
    digest = hashlib.sha1(str(absolute).encode(), usedforsecurity=False).hexdigest()[:10]
    return f"{MODULE_PREFIX}{stem}_{digest}"


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec or os.path.isfile(spec)


def _relative(filename: str) -> str:
    """``filename`` relative to the current directory when it lies under it."""
    try:
        return os.path.relpath(filename) if Path(filename).is_relative_to(os.getcwd()) else filename
    except ValueError:  # pragma: no cover - another drive on Windows
        return filename


def _import_failure(shown: str, absolute: Path | None, exc: BaseException) -> LoadError:
    """One line describing why importing ``shown`` failed."""
    if isinstance(exc, SyntaxError):
        # Also covers IndentationError and TabError, maybe raised by a sibling module.
        where = shown
        if exc.filename and (absolute is None or Path(exc.filename) != absolute):
            where = _relative(exc.filename)
        if exc.lineno:
            where = f"{where}:{exc.lineno}"
        kind = "syntax error" if type(exc) is SyntaxError else type(exc).__name__
        return LoadError(f"{where}: {kind}: {exc.msg}")
    if isinstance(exc, DefinitionError):
        # Its message already names the file and line of the mistake.
        message = str(exc)
        if absolute is not None and message.startswith(f"{absolute}:"):
            message = shown + message[len(str(absolute)) :]
        return LoadError(_one_line(message))
    if isinstance(exc, LoadError):
        return LoadError(f"{shown}: {_one_line(str(exc))}")
    detail = _one_line(str(exc))
    text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return LoadError(f"{shown}: error while importing: {text}")


def _one_line(text: str) -> str:
    return " ".join(text.split())
