"""The public surface: what ``import aexec`` offers, and the one error tree."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import aexec
from aexec import errors
from aexec.types import ErrorInfo

PUBLIC = [
    "AexecError",
    "BackendError",
    "CodecError",
    "CompiledPipeline",
    "ConfigError",
    "DefinitionError",
    "ErrorInfo",
    "Event",
    "EventKind",
    "Executor",
    "InputError",
    "LoadError",
    "ObjectNotFoundError",
    "ObjectStoreError",
    "ParameterError",
    "Pipeline",
    "PlanError",
    "Run",
    "RunFailed",
    "RunFailedError",
    "RunRecord",
    "RunStatus",
    "Settings",
    "StepContext",
    "StepDef",
    "StepRecord",
    "StepStatus",
    "StepTimeoutError",
    "StoreError",
    "StoreUnavailableError",
    "TransportError",
    "UnknownStepError",
    "WorkerLostError",
    "again",
    "current",
    "pipeline",
    "remote_step",
    "skip",
    "step",
]


def test_all_is_exactly_the_public_surface() -> None:
    assert aexec.__all__ == PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(aexec, name) is not None


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from aexec import *", namespace)
    assert set(PUBLIC) <= set(namespace)


def test_an_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        aexec.no_such_name  # noqa: B018


def test_importing_aexec_does_not_load_the_engine() -> None:
    code = (
        "import sys, aexec\n"
        "print(sorted({'asyncio', 'aexec.executor', 'aexec.run', 'aexec.coordinator'}"
        " & set(sys.modules)))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"


def test_run_failed_is_the_old_name_of_run_failed_error() -> None:
    assert aexec.RunFailed is aexec.RunFailedError
    assert issubclass(aexec.RunFailedError, aexec.AexecError)


def test_the_docstring_draws_every_error_of_the_tree() -> None:
    classes = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__name__ == name
    }
    assert all(issubclass(getattr(errors, name), errors.AexecError) for name in classes)
    doc = (errors.__doc__ or "").split("::", 1)[1]
    tree = doc.strip("\n").split("\n\n", 1)[0]
    drawn = {line.strip(" │├└─").split()[0] for line in tree.splitlines()}
    assert drawn == classes


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (errors.UnknownStepError("worker w does not serve step 's'"), False),
        (errors.WorkerLostError("worker w stopped heartbeating"), True),
        (errors.InputError("cannot decode inputs: bad"), False),
    ],
)
def test_errors_aexec_detects_travel_under_their_class_name_without_a_traceback(
    error: errors.AexecError, retryable: bool
) -> None:
    info = ErrorInfo.from_exception(error, retryable=retryable)
    assert info == ErrorInfo(type(error).__name__, str(error), "", retryable)


def test_a_raised_exception_keeps_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        info = ErrorInfo.from_exception(exc)
    assert info.type == "ValueError" and "ValueError: boom" in info.traceback


def test_an_embedded_run_loads_no_broker_metrics_celery_or_webhook_code(tmp_path: Path) -> None:
    """``aexec run`` embedded compiles and imports only what it uses (start-up time)."""
    pipeline = tmp_path / "one.py"
    pipeline.write_text(
        "from aexec import pipeline, step\n\n"
        "@step\nasync def one() -> int:\n    return 1\n\n"
        "@pipeline\ndef single() -> object:\n    return one()\n"
    )
    unused = [
        "aio_pika",
        "aiormq",
        "prometheus_client",
        "aexec.celery.gateway",
        "aexec.ops",
        "aexec.webhooks",
        "aexec.retention",
        "aexec.transport.signed",
        "aexec.control",
    ]
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print(sorted(set({unused!r}) & set(sys.modules)), "
        "file=sys.__stderr__))\n"
        "from aexec.cli.main import main\n"
        f"sys.exit(main(['run', {str(pipeline)!r}]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEXEC_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**env, "AEXEC_HOME": str(tmp_path / "home")},
    )
    assert out.stdout.strip() == "1"
    assert out.stderr.strip().splitlines()[-1] == "[]"
