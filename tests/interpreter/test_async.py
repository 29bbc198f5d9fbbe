"""The asynchronous SDK client against the interpreter and real kernels."""

import asyncio

import pytest
from e2b import TimeoutException

from conftest import needs_kernel


@pytest.mark.asyncio
async def test_state_persists(async_sandbox):
    await async_sandbox.run_code("z = 20")
    assert (await async_sandbox.run_code("z + 1")).text == "21"


@pytest.mark.asyncio
async def test_async_callbacks_and_results(async_sandbox):
    outs, results = [], []

    async def on_stdout(msg):
        outs.append(msg.line)

    execution = await async_sandbox.run_code(
        "print('one'); print('two'); 3 * 3",
        on_stdout=on_stdout,
        on_result=results.append,
    )
    assert outs == ["one\ntwo\n"] or outs == ["one\n", "two\n"]
    assert [r.text for r in results] == ["9"]
    assert execution.text == "9"


@pytest.mark.asyncio
async def test_error(async_sandbox):
    execution = await async_sandbox.run_code("raise ValueError('bad')")
    assert execution.error.name == "ValueError"
    assert execution.error.value == "bad"


@pytest.mark.asyncio
async def test_timeout_then_works(async_sandbox):
    with pytest.raises(TimeoutException):
        await async_sandbox.run_code("import time\nwhile True: time.sleep(0.1)", timeout=2)
    assert (await async_sandbox.run_code("'still here'", timeout=30)).text == "still here"


@pytest.mark.asyncio
async def test_contexts_and_restart(async_sandbox):
    ctx = await async_sandbox.create_code_context()
    other = await async_sandbox.create_code_context()
    try:
        await async_sandbox.run_code("v = 'mine'", context=ctx)
        assert (await async_sandbox.run_code("v", context=other)).error.name == "NameError"
        await async_sandbox.restart_code_context(ctx)
        assert (await async_sandbox.run_code("v", context=ctx)).error.name == "NameError"
        listed = {c.id for c in await async_sandbox.list_code_contexts()}
        assert {ctx.id, other.id} <= listed
    finally:
        await async_sandbox.remove_code_context(ctx)
        await async_sandbox.remove_code_context(other)


@pytest.mark.asyncio
async def test_parallel_executions_in_two_contexts(async_sandbox):
    a = await async_sandbox.create_code_context()
    b = await async_sandbox.create_code_context()
    try:
        ra, rb = await asyncio.gather(
            async_sandbox.run_code("import time; time.sleep(0.5); 'a'", context=a),
            async_sandbox.run_code("import time; time.sleep(0.5); 'b'", context=b),
        )
        assert (ra.text, rb.text) == ("a", "b")
    finally:
        await async_sandbox.remove_code_context(a)
        await async_sandbox.remove_code_context(b)


@pytest.mark.asyncio
async def test_env_vars(async_sandbox):
    code = "import os; os.environ.get('SILO_ASYNC_VAR', 'unset')"
    assert (await async_sandbox.run_code(code, envs={"SILO_ASYNC_VAR": "v"})).text == "v"
    assert (await async_sandbox.run_code(code)).text == "unset"


@needs_kernel("bash")
@pytest.mark.asyncio
async def test_bash(async_sandbox):
    execution = await async_sandbox.run_code("echo async-bash", language="bash")
    assert "async-bash" in "".join(execution.logs.stdout)
