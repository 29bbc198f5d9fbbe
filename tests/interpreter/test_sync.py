"""The synchronous SDK client against the interpreter and real kernels."""

import os
import uuid

import pytest
from e2b import NotFoundException, SandboxException, TimeoutException

from conftest import GLOBAL_ENVS, needs_kernel


def test_state_persists(sandbox):
    sandbox.run_code("x = 1")
    assert sandbox.run_code("x + 1").text == "2"


def test_execution_count_increments(sandbox):
    first = sandbox.run_code("1").execution_count
    assert sandbox.run_code("2").execution_count == first + 1


def test_history_reads_back_although_written_in_batches(sandbox):
    sandbox.run_code("history_probe_a = 1")
    sandbox.run_code("history_probe_b = 2")
    shown = sandbox.run_code("%history -l 3")
    assert "history_probe_a = 1" in "".join(shown.logs.stdout)
    assert "history_probe_b = 2" in "".join(shown.logs.stdout)
    assert sandbox.run_code("_ih[-3]").text == "history_probe_b = 2"
    assert sandbox.run_code("get_ipython().history_manager.db_cache_size").text == "100"


def test_string_result_loses_its_quotes(sandbox):
    assert sandbox.run_code("'abc'").text == "abc"


def test_matplotlib_figure_is_png_with_chart(sandbox):
    execution = sandbox.run_code(
        """
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [4, 5, 6], label="up")
plt.title("rising")
plt.show()
"""
    )
    assert execution.error is None, execution.error
    images = [r for r in execution.results if r.png]
    assert len(images) == 1
    assert not images[0].is_main_result
    assert images[0].png.startswith("iVBOR")  # base64 of the PNG signature
    chart = images[0].chart
    assert chart is not None
    assert chart.type == "line"
    assert chart.title == "rising"
    assert chart.elements[0].label == "up"
    assert chart.elements[0].points == [(1.0, 4.0), (2.0, 5.0), (3.0, 6.0)]


def test_dataframe_is_html_and_data(sandbox):
    execution = sandbox.run_code(
        """
import pandas as pd
pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
"""
    )
    result = execution.results[0]
    assert result.is_main_result
    assert "<table" in result.html
    assert result.data == {"a": [1, 2, 3], "b": ["x", "y", "z"]}


def test_display_calls_are_not_main_results(sandbox):
    execution = sandbox.run_code(
        """
from IPython.display import display, Markdown, HTML
display(Markdown("# title"))
display(HTML("<p>hi</p>"))
42
"""
    )
    assert [r.is_main_result for r in execution.results] == [False, False, True]
    assert execution.results[0].markdown == "# title"
    assert execution.results[1].html == "<p>hi</p>"
    assert execution.text == "42"


def test_zero_division_is_an_error_with_traceback(sandbox):
    errors = []
    execution = sandbox.run_code("1 / 0", on_error=errors.append)
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    assert "ZeroDivisionError" in execution.error.traceback
    assert "\n" in execution.error.traceback
    assert errors == [execution.error]
    assert execution.results == []


def test_stdout_and_stderr_keep_their_order(sandbox):
    seen = []
    execution = sandbox.run_code(
        """
import sys
print("out 1", flush=True)
print("err 1", file=sys.stderr, flush=True)
print("out 2", flush=True)
""",
        on_stdout=lambda m: seen.append(("out", m.line)),
        on_stderr=lambda m: seen.append(("err", m.line)),
    )
    assert seen == [("out", "out 1\n"), ("err", "err 1\n"), ("out", "out 2\n")]
    assert execution.logs.stdout == ["out 1\n", "out 2\n"]
    assert execution.logs.stderr == ["err 1\n"]


def test_output_written_without_a_flush_arrives_before_the_result(sandbox):
    # The kernel skips the flushes that would find nothing written (python_setup.py); what
    # a cell wrote without flushing must still come, whole and before its result.
    assert sandbox.run_code("import sys; type(sys.stdout).flush.__name__").text == (
        "flush_if_written"
    )
    # Nor does it sleep before its reply: the interpreter reads on to `idle` anyway.
    assert sandbox.run_code("get_ipython().kernel._execute_sleep").text == "0.0"
    seen = []
    execution = sandbox.run_code(
        'import sys\nprint("a", end="")\nsys.stderr.write("b")\nsys.stdout.flush()\n'
        'print("c")\n"done"',
        on_stdout=lambda m: seen.append(m.line),
        on_stderr=lambda m: seen.append(m.line),
        on_result=lambda r: seen.append(r.text),
    )
    assert execution.logs.stdout == ["a", "c\n"]
    assert execution.logs.stderr == ["b"]
    assert seen[-1] == "done" and sorted(seen[:-1]) == ["a", "b", "c\n"]


def test_shell_requests_are_read_on_the_main_thread(sandbox):
    # silo starts ipykernel through its own launcher (kernel/ipykernel_launcher.py), which
    # drops ipykernel 7's shell-channel thread. What leans on the main thread still works:
    # a top-level await, an interrupt (test_timeout_interrupts_and_next_call_works), and
    # importing a module from the working directory.
    threads = sandbox.run_code("import threading; [t.name for t in threading.enumerate()]")
    assert "MainThread" in threads.text and "Shell channel" not in threads.text
    assert sandbox.run_code("import asyncio\nawait asyncio.sleep(0.01)\n42").text == "42"
    module = f"silo_cwd_{uuid.uuid4().hex}"
    sandbox.run_code(f"open('{module}.py', 'w').write('X = 7')")
    try:
        assert sandbox.run_code(
            f"import importlib; importlib.invalidate_caches(); import {module}; {module}.X"
        ).text == "7"
    finally:
        sandbox.run_code(f"import os; os.remove('{module}.py')")


def test_stdout_callback_fires_while_code_still_runs(sandbox, touch):
    # The code waits for a file that only the stdout callback creates: if output were
    # buffered until the end, the callback would come too late and the code would give up.
    flag = f"/tmp/silo-stream-{uuid.uuid4()}"
    lines = []

    def on_stdout(msg):
        lines.append(msg.line)
        if msg.line == "waiting\n":
            touch(flag)

    execution = sandbox.run_code(
        f"""
import os, time
print("waiting", flush=True)
for _ in range(200):
    if os.path.exists({flag!r}):
        print("released")
        break
    time.sleep(0.05)
else:
    print("gave up")
""",
        on_stdout=on_stdout,
    )
    sandbox.run_code(f"import os; os.unlink({flag!r})")  # where the code runs
    assert execution.logs.stdout == ["waiting\n", "released\n"]


def test_the_main_thread_sends_its_own_iopub_messages_and_threads_still_stream(sandbox, touch):
    # silo's launcher has the main thread send its IOPub messages itself (ADR 0020); output
    # of other threads still goes through ipykernel's IOPub thread, so a thread printing
    # while the main thread is busy is seen while it runs.
    assert sandbox.run_code("type(get_ipython().kernel.iopub_thread).__module__").text == (
        "__main__"
    )
    flag = f"/tmp/silo-thread-{uuid.uuid4()}"

    def on_stdout(msg):
        if msg.line == "from a thread\n":
            touch(flag)

    execution = sandbox.run_code(
        f"""
import os, threading, time
threading.Thread(target=lambda: print("from a thread", flush=True)).start()
for _ in range(200):
    if os.path.exists({flag!r}):
        break
    time.sleep(0.05)
"released" if os.path.exists({flag!r}) else "gave up"
""",
        on_stdout=on_stdout,
    )
    sandbox.run_code(f"import os; os.unlink({flag!r})")
    assert execution.text == "released"
    assert execution.logs.stdout == ["from a thread\n"]
    # Output the IOPub thread flushes by its timer (0.2 s after the write) while the cell
    # ends still comes before the result and `idle`.
    for pause in ("0.19", "0.2", "0.21", "0.25"):
        seen = []
        execution = sandbox.run_code(
            f'import time\nprint("late", end="")\ntime.sleep({pause})\n"end"',
            on_stdout=lambda m: seen.append(m.line),
            on_result=lambda r: seen.append(r.text),
        )
        assert seen == ["late", "end"], (pause, seen)


def test_timeout_interrupts_and_next_call_works(sandbox):
    with pytest.raises(TimeoutException):
        sandbox.run_code("while True:\n    pass", timeout=2)
    execution = sandbox.run_code("1 + 1", timeout=30)
    assert execution.error is None
    assert execution.text == "2"


def test_contexts_do_not_share_variables(sandbox):
    a = sandbox.create_code_context()
    b = sandbox.create_code_context()
    try:
        sandbox.run_code("shared = 'a'", context=a)
        execution = sandbox.run_code("shared", context=b)
        assert execution.error.name == "NameError"
        assert sandbox.run_code("shared", context=a).text == "a"
        ids = {c.id for c in sandbox.list_code_contexts()}
        assert {a.id, b.id} <= ids
    finally:
        sandbox.remove_code_context(a)
        sandbox.remove_code_context(b)
    ids = {c.id for c in sandbox.list_code_contexts()}
    assert a.id not in ids and b.id not in ids


def test_context_has_language_and_cwd(sandbox):
    ctx = sandbox.create_code_context(cwd="/tmp")
    try:
        assert ctx.language == "python"
        assert ctx.cwd == "/tmp"
        assert sandbox.run_code("import os; os.getcwd()", context=ctx).text == "/tmp"
    finally:
        sandbox.remove_code_context(ctx)


def test_restart_clears_state(sandbox):
    ctx = sandbox.create_code_context()
    try:
        sandbox.run_code("kept = 1", context=ctx)
        sandbox.restart_code_context(ctx)
        assert sandbox.run_code("kept", context=ctx).error.name == "NameError"
    finally:
        sandbox.remove_code_context(ctx)


def test_env_vars_apply_to_one_execution(sandbox):
    code = "import os; print(os.environ.get('SILO_CALL_VAR', 'unset'))"
    value = "it's \"set\"\\ here"
    assert sandbox.run_code(code, envs={"SILO_CALL_VAR": value}).logs.stdout == [value + "\n"]
    assert sandbox.run_code(code).logs.stdout == ["unset\n"]


def test_global_env_vars_and_overrides(sandbox):
    get = "import os; os.environ.get({!r})"
    assert sandbox.run_code(get.format("SILO_GLOBAL_VAR")).text == GLOBAL_ENVS["SILO_GLOBAL_VAR"]
    overridden = sandbox.run_code(get.format("SILO_OVERRIDDEN"), envs={"SILO_OVERRIDDEN": "mine"})
    assert overridden.text == "mine"
    # Back to the global value afterwards, not removed.
    assert sandbox.run_code(get.format("SILO_OVERRIDDEN")).text == "global-value"


def test_kernel_death_is_reported_until_restart(sandbox):
    ctx = sandbox.create_code_context()
    try:
        dying = sandbox.run_code("import os; os._exit(1)", context=ctx)
        assert dying.error.name == "KernelDied"
        assert "restart" in dying.error.value.lower()
        after = sandbox.run_code("1", context=ctx)
        assert after.error.name == "KernelDied"
        sandbox.restart_code_context(ctx)
        assert sandbox.run_code("1 + 2", context=ctx).text == "3"
        killed = sandbox.run_code("import os; os.kill(os.getpid(), 9)", context=ctx)
        assert killed.error.name == "KernelDied"
    finally:
        sandbox.remove_code_context(ctx)


def test_unknown_language_lists_available(sandbox):
    with pytest.raises(SandboxException) as err:
        sandbox.run_code("1", language="cobol")
    assert "400" in str(err.value)
    assert "python" in str(err.value)


def test_unknown_context_is_not_found(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.restart_code_context("no-such-context")
    with pytest.raises(NotFoundException):
        sandbox.remove_code_context("no-such-context")


def test_raw_request_errors(raw):
    body = {"code": "1", "context_id": "nope", "language": None, "env_vars": None}
    r = raw.post("/execute", json=body)
    assert r.status_code == 404
    body["language"] = "python"
    r = raw.post("/execute", json=body)
    assert r.status_code == 400
    assert "both" in r.text
    r = raw.post("/execute", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_raw_stream_shape(raw):
    body = {"code": "print('a')\n7", "context_id": None, "language": None, "env_vars": None}
    with raw.stream("POST", "/execute", json=body) as r:
        lines = [line for line in r.iter_lines()]
    types = [__import__("json").loads(line)["type"] for line in lines]
    assert all(lines), "no blank lines"
    assert types[0] == "number_of_executions"
    assert types[-1] == "end_of_execution"
    assert types[1:-1] == ["stdout", "result"]


@needs_kernel("bash")
def test_bash(sandbox):
    execution = sandbox.run_code("echo hello; X=5; echo $((X * 2))", language="bash")
    assert execution.logs.stdout and "hello" in "".join(execution.logs.stdout)
    assert "10" in "".join(execution.logs.stdout)
    persisted = sandbox.run_code("echo $X", language="bash")
    assert "5" in "".join(persisted.logs.stdout)
    with_env = sandbox.run_code("echo $SILO_BASH_VAR", language="bash", envs={"SILO_BASH_VAR": "b'v"})
    assert "b'v" in "".join(with_env.logs.stdout)
    without = sandbox.run_code("echo \"[$SILO_BASH_VAR]\"", language="bash")
    assert "[]" in "".join(without.logs.stdout)
