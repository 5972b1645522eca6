"""Python graders run user code in a sandboxed worker process: scores come back per sample, user errors
stay per sample, and escapes (network, writes outside the temp dir, endless loops, memory bombs, fork
bombs, signals to the parent) are refused and reported while the parent and the rest of the batch go on.
Needs no cluster: real subprocesses only."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import TypeAdapter

from finetune_api.v1alpha1.graders import Grader
from finetune_trainer.graders import Compiled, GraderError, Result, compile_grader, sample_from_text
from finetune_trainer.graders import sandbox as sandbox_module
from finetune_trainer.graders.sandbox import Limits, Sandbox

GRADER: TypeAdapter[Any] = TypeAdapter(Grader)


def python_grader(source: str, scratch: Path, **extra: Any) -> Compiled:
    spec = GRADER.validate_python({"type": "python", "name": "py", "source": source, **extra})
    return compile_grader(spec, scratch=scratch)


def run(source: str, scratch: Path, items: list[dict[str, Any]], **extra: Any) -> list[Result]:
    with python_grader(source, scratch, **extra) as grader:
        return grader.grade([sample_from_text(str(item.get("output", ""))) for item in items], items)


def error_of(result: Result) -> str:
    assert result.score == 0.0
    assert result.error is not None
    return result.error


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.3)
    yield server
    server.close()


@pytest.fixture
def no_new_processes() -> Iterator[None]:
    """After the test, no process started during it is still running (workers, forks, their children)."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == [], [p.cmdline() for p in left]


def test_scores_come_from_grade_per_sample(tmp_path: Path) -> None:
    source = """
import os, sys

def grade(sample, item):
    print("debug output must not reach the protocol")
    sys.__stdout__.write('{"score": 99}\\n')
    sys.__stdout__.flush()
    os.write(1, b'{"score": 99}\\n')
    if item["kind"] == "json":
        return sample["output_json"]["total"] == item["reference"]["total"]
    if item["kind"] == "int":
        return len(sample["output_text"])
    return 1.0 - abs(float(sample["output_text"]) - item["reference"]) / 10
"""
    items = [
        {"kind": "json", "output": json_text, "reference": {"total": 12}}
        for json_text in ('{"total": 12}', '{"total": 13}')
    ] + [{"kind": "int", "output": "abcd"}, {"kind": "float", "output": "7", "reference": 9}]
    results = run(source, tmp_path, items, pass_threshold=0.5)
    assert [(r.score, r.passed, r.error) for r in results] == [
        (1.0, True, None),
        (0.0, False, None),
        (4.0, True, None),
        (pytest.approx(0.8), True, None),
    ]


def test_an_exception_fails_only_its_sample_naming_type_message_and_line(tmp_path: Path) -> None:
    source = """
def grade(sample, item):
    if item["n"] == 2:
        raise ValueError(f"bad row {item['n']}")
    return item["n"]
"""
    first, broken, third = run(source, tmp_path, [{"n": 1}, {"n": 2}, {"n": 3}])
    assert (first.score, third.score) == (1.0, 3.0)
    assert error_of(broken) == "python grader raised ValueError: bad row 2 (line 4)"


@pytest.mark.parametrize(
    ("value", "message"),
    [("'0.5'", "returned str '0.5'"), ("None", "returned NoneType None"), ("float('nan')", "finite number")],
)
def test_a_non_numeric_return_is_a_per_sample_error(tmp_path: Path, value: str, message: str) -> None:
    (result,) = run(f"def grade(sample, item):\n    return {value}\n", tmp_path, [{}])
    assert message in error_of(result)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def grade(sample, item):\n    return (1\n", "source: syntax error at line 2"),
        ("def score(sample, item):\n    return 1\n", "source: defines no top-level function grade"),
        ("def grade(sample):\n    return 1\n", "must accept two arguments"),
        ("async def grade(sample, item):\n    return 1\n", "not async"),
        ("def grade(sample, item):\n    return 1\nreturn 2\n", "'return' outside function"),
    ],
)
def test_source_problems_are_refused_at_compile_time(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(GraderError, match="grader 'py': source") as err:
        python_grader(source, tmp_path)
    assert message in str(err.value)


def test_an_error_while_loading_the_source_fails_every_sample(tmp_path: Path) -> None:
    source = "import json\nsettings = json.loads('{')\n\ndef grade(sample, item):\n    return 1\n"
    results = run(source, tmp_path, [{}, {}])
    assert [error_of(r) for r in results] == [
        "python grader raised JSONDecodeError: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1) (line 2) while loading the source"
    ] * 2


def test_network_access_is_refused_and_nothing_arrives(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    source = f"""
import socket, urllib.request

def grade(sample, item):
    if item["how"] == "socket":
        with socket.create_connection(("127.0.0.1", {port}), timeout=2) as s:
            s.sendall(b"leak")
    else:
        urllib.request.urlopen("http://127.0.0.1:{port}/leak", timeout=2)
    return 1
"""
    results = run(source, tmp_path, [{"how": "socket"}, {"how": "http"}])
    for result in results:
        assert "network access is not allowed in a python grader" in error_of(result)
    with pytest.raises(TimeoutError):
        listener.accept()


def test_writes_outside_the_temp_dir_are_refused_inside_allowed(tmp_path: Path) -> None:
    outside = tmp_path / "escaped.txt"
    source = f"""
import os, pathlib, shutil

def grade(sample, item):
    how = item["how"]
    if how == "inside":
        pathlib.Path("notes.txt").write_text("scratch is writable")
        return len(open("notes.txt").read())
    if how == "open":
        open({str(outside)!r}, "w").write("x")
    if how == "os.open":
        os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)
    if how == "relative":
        os.chdir("..")
        open("escaped.txt", "w").write("x")
    if how == "copy":
        shutil.copy("notes.txt", {str(outside)!r})
    if how == "remove":
        os.remove({str(tmp_path / "keep.txt")!r})
    return 1
"""
    (tmp_path / "keep.txt").write_text("precious")
    hows = ["inside", "open", "os.open", "relative", "copy", "remove"]
    inside, *escapes = run(source, tmp_path, [{"how": how} for how in hows])
    assert (inside.score, inside.error) == (19.0, None)
    for how, result in zip(hows[1:], escapes, strict=True):
        assert "PermissionError" in error_of(result), how
    assert not outside.exists()
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]  # the worker's temp dir is gone too


def test_reading_outside_the_interpreter_and_temp_dir_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t")
    source = f"def grade(sample, item):\n    return len(open({str(secret)!r}).read())\n"
    (result,) = run(source, tmp_path, [{}])
    assert "PermissionError: reading" in error_of(result)


@pytest.mark.usefixtures("no_new_processes")
def test_an_endless_loop_times_out_and_the_next_sample_is_graded(tmp_path: Path) -> None:
    source = "def grade(sample, item):\n    while item['loop']:\n        pass\n    return 1\n"
    started = time.monotonic()
    first, looping, after = run(
        source, tmp_path, [{"loop": False}, {"loop": True}, {"loop": False}], timeout_seconds=1
    )
    assert time.monotonic() - started < 6
    assert error_of(looping) == "python grader timed out after 1s"
    assert (first.score, after.score) == (1.0, 1.0)


def test_a_memory_bomb_is_a_memory_error(tmp_path: Path) -> None:
    source = (
        "def grade(sample, item):\n    if item['bomb']:\n        data = bytearray(1 << 30)\n    return 1\n"
    )
    bomb, fine = run(source, tmp_path, [{"bomb": True}, {"bomb": False}], memory_mib=128)
    assert error_of(bomb) == "python grader raised MemoryError (line 3)"
    assert (fine.score, fine.error) == (1.0, None)


@pytest.mark.parametrize(
    "attack",
    [
        "while True:\n            os.fork()",
        "import subprocess; subprocess.run(['sleep', '30'])",
        "os.system('sleep 30 &')",
        "os.posix_spawn('/bin/sleep', ['sleep', '30'], {})",
        "os.execv('/bin/sleep', ['sleep', '30'])",
        "os.kill(os.getppid(), signal.SIGKILL)",
    ],
)
@pytest.mark.usefixtures("no_new_processes")
def test_process_creation_and_signals_are_refused(tmp_path: Path, attack: str) -> None:
    source = f"import os, signal\n\ndef grade(sample, item):\n    if item['attack']:\n        {attack}\n"
    source += "    return 1\n"
    attacked, fine = run(source, tmp_path, [{"attack": True}, {"attack": False}])
    assert "PermissionError" in error_of(attacked)
    assert "is not allowed in a python grader" in error_of(attacked)
    assert (fine.score, fine.error) == (1.0, None)


def test_a_worker_that_dies_is_reported_and_replaced(tmp_path: Path) -> None:
    source = "import os\n\ndef grade(sample, item):\n    if item['die']:\n        os._exit(7)\n    return 2\n"
    results = run(source, tmp_path, [{"die": False}, {"die": True}, {"die": False}])
    assert [r.score for r in results] == [2.0, 0.0, 2.0]
    assert error_of(results[1]) == "python grader worker exited with status 7"


def test_audit_hook_escape_hatches_are_closed(tmp_path: Path) -> None:
    source = """
import ctypes, gc, resource, sys

def grade(sample, item):
    how = item["how"]
    if how == "ctypes":
        ctypes.CDLL(None).system(b"true")
    if how == "dlopen":
        ctypes.CDLL("libc.so.6")
    if how == "rlimit":
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    if how == "gc":
        gc.get_objects()
    if how == "native":
        open("evil.cpython-311-x86_64-linux-gnu.so", "wb").write(b"ELF")
    if how == "code":
        c = grade.__code__
        type(c)(c.co_argcount, c.co_posonlyargcount, c.co_kwonlyargcount, c.co_nlocals, c.co_stacksize,
                c.co_flags, c.co_code, c.co_consts, c.co_names, c.co_varnames, c.co_filename, c.co_name,
                c.co_qualname, c.co_firstlineno, c.co_linetable, c.co_exceptiontable)
    return 1
"""
    hows = ["ctypes", "dlopen", "rlimit", "gc", "native", "code"]
    for how, result in zip(hows, run(source, tmp_path, [{"how": h} for h in hows]), strict=True):
        assert "is not allowed in a python grader" in error_of(result), how


@pytest.mark.usefixtures("no_new_processes")
def test_kernel_layers_hold_without_the_audit_hook(tmp_path: Path, listener: socket.socket) -> None:
    """Landlock and seccomp, where the kernel has them, refuse the same escapes on their own."""
    port = listener.getsockname()[1]
    outside = tmp_path / "escaped.txt"
    source = f"""
import os, socket

def grade(sample, item):
    how = item["how"]
    if how == "connect":
        socket.create_connection(("127.0.0.1", {port}), timeout=2)
    if how == "write":
        open({str(outside)!r}, "w").write("x")
    if how == "fork":
        os.fork()
    if how == "exec":
        os.execv("/bin/true", ["true"])
    if how == "kill":
        os.kill(os.getppid(), 0)
    return 1
"""
    sandbox = Sandbox(source, Limits(timeout_seconds=5, memory_mib=256), tmp_path, audit_hook=False)
    hows = ["connect", "write", "fork", "exec", "kill"]
    outcomes = sandbox.run([({}, {"how": how}) for how in hows])
    if not {"landlock-fs", "seccomp"} <= set(sandbox.layers):
        pytest.skip(f"Landlock or seccomp is unavailable here (installed: {list(sandbox.layers)})")
    for how, outcome in zip(hows, outcomes, strict=True):
        assert outcome.error is not None, how
        assert "raised PermissionError" in outcome.error, how
    assert not outside.exists()
    with pytest.raises(TimeoutError):
        listener.accept()


@pytest.mark.usefixtures("no_new_processes")
def test_the_parent_is_untouched_and_a_fresh_batch_works(tmp_path: Path) -> None:
    source = (
        "import os\n\ndef grade(sample, item):\n    os.environ['LEAK'] = 'x'\n    return len(os.environ)\n"
    )
    before = (os.getcwd(), dict(os.environ))
    with python_grader(source, tmp_path) as grader:
        first = grader.grade([sample_from_text("")], [{}])
        second = grader.grade([sample_from_text("")], [{}])
    assert (os.getcwd(), dict(os.environ)) == before
    assert first[0].error is None
    assert first[0].score <= 4  # the worker's environment is nearly empty, not a copy of the parent's
    assert second[0].score == first[0].score  # each batch starts from a fresh worker


@pytest.mark.usefixtures("no_new_processes")
def test_a_source_that_hangs_while_loading_fails_the_batch_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_module, "STARTUP_SECONDS", 0.5)
    source = "while True:\n    pass\n\ndef grade(sample, item):\n    return 1\n"
    sandbox = Sandbox(source, Limits(timeout_seconds=1, memory_mib=256), tmp_path)
    started = time.monotonic()
    outcomes = sandbox.run([({}, {})] * 3)
    assert [o.error for o in outcomes] == ["python grader timed out after 1s while loading the source"] * 3
    assert time.monotonic() - started < 3  # one worker waited for, not one per sample
