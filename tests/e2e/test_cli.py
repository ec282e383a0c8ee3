"""The command line, run as users run it: ``python -m aexec ...`` in a real subprocess.

Each test gets its own ``AEXEC_HOME``; the ``runs`` tests share one made by a module-scoped
fixture that runs a succeeding and a failing pipeline first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PIPELINES = Path(__file__).resolve().parent / "pipelines"
ARITH = str(PIPELINES / "arith.py")
FAILING = str(PIPELINES / "failing.py")
SEVERAL = str(PIPELINES / "several.py")
SLOW = str(PIPELINES / "slow.py")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines()]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEXEC_")}
    env["AEXEC_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "aexec", *args]


def aexec(home: Path, *args: str, cwd: Path | None = None) -> Result:
    proc = subprocess.run(
        _command(*args),
        cwd=cwd or home.parent,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_bad_input(result: Result, *fragments: str) -> None:
    """Exit 2 with exactly one line on stderr, ``aexec: error: ...``, and no traceback."""
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("aexec: error: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], str]:
    """Write a pipeline file into the test's directory; return its name relative to it."""

    def write_file(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return name

    return write_file


# -- help ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["runs", "list"]], ids=["aexec", "run", "runs"])
def test_help_imports_no_engine_backend_or_rich(home: Path, command: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "aexec", *command, "--help"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: aexec" in proc.stdout
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()}
    heavy = {"asyncio", "rich", "uvloop", "yaml", "sqlite3", "aexec.executor", "aexec.loader"}
    assert not heavy & imported


# -- bad input -------------------------------------------------------------------------


def test_a_missing_file_is_bad_input(home: Path) -> None:
    assert_bad_input(aexec(home, "run", "nowhere.py"), "no such file: nowhere.py")


def test_a_directory_or_a_non_python_file_is_bad_input(home: Path, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    assert_bad_input(aexec(home, "run", "adir"), "adir is a directory")
    assert_bad_input(aexec(home, "run", "notes.txt"), "notes.txt is not a Python file")


def test_a_syntax_error_names_file_and_line(home: Path, write: Any) -> None:
    name = write("broken.py", "from aexec import pipeline\n\n\ndef p(:\n    pass\n")
    assert_bad_input(aexec(home, "run", name), "broken.py:4: syntax error: invalid syntax")


def test_an_exception_while_importing_is_bad_input(home: Path, write: Any) -> None:
    name = write("raises.py", "from aexec import pipeline\n\nfoo()\n")
    assert_bad_input(
        aexec(home, "run", name),
        "raises.py: error while importing: NameError: name 'foo' is not defined",
    )


def test_a_missing_dependency_is_bad_input(home: Path, write: Any) -> None:
    name = write("needs.py", "import no_such_module_for_aexec\n")
    assert_bad_input(
        aexec(home, "run", name),
        "needs.py: error while importing: ModuleNotFoundError",
        "no_such_module_for_aexec",
    )


def test_a_definition_error_at_import_keeps_its_file_and_line(home: Path, write: Any) -> None:
    name = write(
        "badstep.py",
        "from aexec import step\n\n\n@step(priority=99)\ndef s() -> None: ...\n",
    )
    assert_bad_input(aexec(home, "run", name), "badstep.py:4:", "priority must be")


def test_a_definition_error_at_compile_time_is_bad_input(home: Path, write: Any) -> None:
    name = write(
        "collide.py",
        "from aexec import pipeline, step\n\n\n@step\ndef s() -> None: ...\n\n\n"
        "@pipeline\ndef p() -> None:\n    s.alias('a')()\n    s.alias('a')()\n",
    )
    assert_bad_input(aexec(home, "run", name), "collide.py:11:", "duplicate step key 'a'")


def test_a_pipeline_body_that_raises_is_bad_input(home: Path, write: Any) -> None:
    name = write(
        "body.py",
        "from aexec import pipeline\n\n\n@pipeline\ndef p() -> None:\n    raise KeyError('x')\n",
    )
    assert_bad_input(aexec(home, "run", name), "body.py:6:", "KeyError")


def test_a_plan_error_is_bad_input(home: Path, write: Any) -> None:
    name = write(
        "remote.py",
        "from aexec import pipeline, remote_step\n\nr = remote_step('elsewhere')\n\n\n"
        "@pipeline\ndef p() -> None:\n    r()\n",
    )
    assert_bad_input(aexec(home, "run", name), "remote step 'elsewhere'")


def test_a_file_without_pipelines_is_bad_input(home: Path, write: Any) -> None:
    assert_bad_input(aexec(home, "run", write("empty.py", "x = 1\n")), "defines no pipeline")


def test_several_pipelines_and_no_choice_lists_their_names(home: Path) -> None:
    assert_bad_input(aexec(home, "run", SEVERAL), "several pipelines (alpha, beta)", "-P")


def test_an_unknown_pipeline_name_is_bad_input(home: Path) -> None:
    assert_bad_input(aexec(home, "run", SEVERAL, "-P", "gamma"), "'gamma'", "alpha, beta")


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ([], "missing parameter 'n'"),
        (["-p", "n=2", "-p", "bogus=1"], "unknown parameter 'bogus'"),
        (["-p", "n=many"], "parameter 'n' of pipeline 'sum_of_squares' expects int"),
        (["-p", "n"], "malformed parameter 'n'"),
    ],
    ids=["missing", "unknown", "ill-typed", "malformed"],
)
def test_a_bad_parameter_is_bad_input(home: Path, params: list[str], fragment: str) -> None:
    assert_bad_input(aexec(home, "run", ARITH, *params), fragment)


def test_an_unsupported_url_scheme_is_bad_input(home: Path) -> None:
    result = aexec(home, "run", ARITH, "-p", "n=2", "--store", "redis://localhost")
    assert_bad_input(result, "unsupported store URL")


def test_a_missing_config_file_is_bad_input(home: Path) -> None:
    result = aexec(home, "run", ARITH, "-p", "n=2", "-c", "nowhere.yaml")
    assert_bad_input(result, "nowhere.yaml")


def test_a_usage_mistake_is_one_line_too(home: Path) -> None:
    assert_bad_input(aexec(home, "run"), "FILE")


def test_traceback_flag_shows_the_traceback(home: Path) -> None:
    result = aexec(home, "run", "--traceback", "nowhere.py")
    assert result.code == 2
    assert "Traceback" in result.err
    assert result.err.splitlines()[-1] == "aexec: error: no such file: nowhere.py"


# -- running ---------------------------------------------------------------------------


def test_a_succeeding_run_prints_its_result_and_a_summary(home: Path) -> None:
    result = aexec(home, "run", ARITH, "-p", "n=4", "-p", "offset=100")
    assert result.code == 0, result
    assert json.loads(result.out) == 0 + 1 + 4 + 9 + 100
    summary = result.err.splitlines()[-1]
    assert summary.startswith("run ")
    assert " succeeded: 5 steps in " in summary


def test_json_prints_one_report(home: Path) -> None:
    result = aexec(home, "run", ARITH, "-p", "n=3", "--json")
    assert result.code == 0, result
    assert result.out.count("\n") == 1
    report = result.json()
    assert set(report) == {"run_id", "status", "result", "error", "steps"}
    assert report["status"] == "succeeded"
    assert report["result"] == 0 + 1 + 4
    assert report["error"] is None
    assert report["steps"] == {
        "square_0": {"status": "succeeded", "attempts": 1},
        "square_1": {"status": "succeeded", "attempts": 1},
        "square_2": {"status": "succeeded", "attempts": 1},
        "total": {"status": "succeeded", "attempts": 1},
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("bob", "hello bob"), ('"007"', "hello 007"), ("42", None)],
    ids=["plain-string", "json-string", "json-int"],
)
def test_parameters_are_json_when_they_parse(home: Path, value: str, expected: str | None) -> None:
    result = aexec(home, "run", SEVERAL, "-P", "alpha", "-p", f"name={value}")
    if expected is None:  # 42 is an int, and `name` is declared str
        assert_bad_input(result, "expects str, got int")
    else:
        assert result.code == 0, result
        assert json.loads(result.out) == expected


def test_p_selects_a_pipeline_and_results_become_json(home: Path) -> None:
    result = aexec(home, "run", SEVERAL, "-P", "beta", "--json")
    assert result.code == 0, result
    assert result.json()["result"] == {
        "blob": "/wAB",  # not UTF-8: base64
        "text": "plain",  # UTF-8 bytes: text
        "when": "2024-05-01T12:30:00+00:00",
        "tags": ["a", "b"],
        "pair": [1, 2],
    }


def test_a_failing_run_names_the_failed_step_and_exits_1(home: Path) -> None:
    result = aexec(home, "run", FAILING)
    assert result.code == 1, result
    assert result.out == ""
    assert "step 'boom' failed after 2 attempts: ValueError: boom" in result.err
    assert " failed: " in result.err.splitlines()[-1]
    assert "Traceback" not in result.err


def test_a_failing_run_json_reports_skipped_dependents(home: Path) -> None:
    result = aexec(home, "run", FAILING, "--json")
    assert result.code == 1, result
    report = result.json()
    assert report["status"] == "failed"
    assert report["result"] is None
    assert "boom" in report["error"]
    assert report["steps"] == {
        "independent": {"status": "succeeded", "attempts": 1},
        "boom": {"status": "failed", "attempts": 2},
        "after": {"status": "skipped", "attempts": 0},
    }


def test_what_user_code_prints_goes_to_stderr(home: Path, write: Any) -> None:
    name = write(
        "chatty.py",
        "from aexec import pipeline, step\n\nprint('importing')\n\n\n"
        "@step\ndef s() -> int:\n    print('in a step')\n    return 1\n\n\n"
        "@pipeline\ndef p() -> object:\n    return s()\n",
    )
    result = aexec(home, "run", name, "--json")
    assert result.code == 0, result
    assert result.json()["result"] == 1
    assert "importing" in result.err
    assert "in a step" in result.err


def test_sibling_modules_can_be_imported(home: Path, write: Any) -> None:
    write("helper_for_aexec_e2e.py", "VALUE = 42\n")
    name = write(
        "uses_helper.py",
        "from helper_for_aexec_e2e import VALUE\n\nfrom aexec import pipeline, step\n\n\n"
        "@step\ndef s() -> int:\n    return VALUE\n\n\n@pipeline\ndef p() -> object:\n"
        "    return s()\n",
    )
    result = aexec(home, "run", name)
    assert result.code == 0, result
    assert json.loads(result.out) == 42


def test_ctrl_c_cancels_the_run_and_exits_130(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        _command("run", SLOW, "-p", f"marker={marker}"),
        cwd=tmp_path,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():  # the step has started
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the step never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert out == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "cancelled" in err
    assert "Traceback" not in err
    listed = aexec(home, "runs", "list", "--json").json_lines()
    assert [r["status"] for r in listed] == ["cancelled"]


# -- runs ------------------------------------------------------------------------------


@dataclass
class History:
    home: Path
    succeeded: dict[str, Any]
    failed: dict[str, Any]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    home = tmp_path_factory.mktemp("history") / "home"
    succeeded = aexec(home, "run", ARITH, "-p", "n=3", "--json")
    failed = aexec(home, "run", FAILING, "--json", "--tag", "team=data", "--tag", "why=test")
    assert (succeeded.code, failed.code) == (0, 1), (succeeded, failed)
    return History(home, succeeded.json(), failed.json())


def test_runs_list_shows_a_table_newest_first(history: History) -> None:
    result = aexec(history.home, "runs", "list")
    assert result.code == 0, result
    header, *rows = result.out.splitlines()
    assert header.split() == ["RUN", "ID", "PIPELINE", "STATUS", "CREATED", "DURATION"]
    assert [row.split()[:3] for row in rows] == [
        [history.failed["run_id"], "failing", "failed"],
        [history.succeeded["run_id"], "sum_of_squares", "succeeded"],
    ]


def test_runs_list_json_is_one_object_per_line(history: History) -> None:
    result = aexec(history.home, "runs", "list", "--json")
    assert result.code == 0, result
    runs = result.json_lines()
    assert [(r["run_id"], r["pipeline"], r["status"]) for r in runs] == [
        (history.failed["run_id"], "failing", "failed"),
        (history.succeeded["run_id"], "sum_of_squares", "succeeded"),
    ]
    assert all(isinstance(r["created_at"], float) for r in runs)


def test_runs_list_filters_by_status_and_limits(history: History) -> None:
    failed = aexec(history.home, "runs", "list", "--json", "--status", "failed").json_lines()
    assert [r["run_id"] for r in failed] == [history.failed["run_id"]]
    newest = aexec(history.home, "runs", "list", "--json", "--limit", "1").json_lines()
    assert [r["run_id"] for r in newest] == [history.failed["run_id"]]


def test_runs_list_filters_by_pipeline_and_tag(history: History) -> None:
    tagged = aexec(history.home, "runs", "list", "--json", "--tag", "team=data").json_lines()
    assert [(r["run_id"], r["tags"]) for r in tagged] == [
        (history.failed["run_id"], {"team": "data", "why": "test"})
    ]
    by_pipeline = aexec(history.home, "runs", "list", "--json", "--pipeline", "sum_of_squares")
    assert [r["run_id"] for r in by_pipeline.json_lines()] == [history.succeeded["run_id"]]
    assert aexec(history.home, "runs", "list", "--tag", "team=nobody").out == ""


@pytest.mark.parametrize("command", [["run", "x.py"], ["runs", "list"]], ids=["run", "runs"])
def test_a_malformed_tag_is_bad_input(home: Path, command: list[str]) -> None:
    assert_bad_input(aexec(home, *command, "--tag", "no-equals"), "malformed tag")


def test_runs_show_json_is_the_run_report(history: History) -> None:
    for report in (history.succeeded, history.failed):
        result = aexec(history.home, "runs", "show", report["run_id"], "--json")
        assert result.code == 0, result
        assert result.json() == report


def test_runs_show_accepts_an_id_prefix(history: History) -> None:
    run_id = history.failed["run_id"]
    result = aexec(history.home, "runs", "show", run_id[:8])
    assert result.code == 0, result
    assert f"run:      {run_id}" in result.out
    assert "status:   failed" in result.out
    steps = {line.split()[0]: line.split()[1:] for line in result.out.split("\n\n")[1].splitlines()}
    assert steps["boom"] == ["failed", "2", "ValueError:", "boom"]
    assert steps["after"] == ["skipped", "0"]


def test_runs_show_an_unknown_id_is_bad_input(history: History) -> None:
    assert_bad_input(aexec(history.home, "runs", "show", "ffffffff"), "no run matches 'ffffffff'")


def test_runs_logs_prints_one_line_per_event(history: History) -> None:
    run_id = history.failed["run_id"]
    text = aexec(history.home, "runs", "logs", run_id)
    events = aexec(history.home, "runs", "logs", run_id, "--json")
    assert (text.code, events.code) == (0, 0), (text, events)
    logged = events.json_lines()
    assert len(text.out.splitlines()) == len(logged)
    assert [e["kind"] for e in logged[:2]] == ["run_submitted", "run_started"]
    assert logged[-1]["kind"] == "run_failed"
    assert {e["run_id"] for e in logged} == {run_id}
    failed = [e for e in logged if e["kind"] == "step_failed"]
    assert [(e["step"], e["attempt"]) for e in failed] == [("boom", 2)]
    lines = text.out.splitlines()
    assert any("step_failed" in line and "ValueError: boom" in line for line in lines)


def test_celery_tasks_without_a_celery_broker_exit_2_naming_the_setting(home: Path) -> None:
    result = aexec(home, "run", str(PIPELINES / "celery_only.py"))
    assert_bad_input(result, "has celery steps", "AEXEC_CELERY_BROKER")
