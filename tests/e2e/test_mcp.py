"""The MCP server (issue 8): the official `mcp` Python client against `silo mcp` (stdio,
a subprocess pointed at the session's server) and against `silo serve`'s `/mcp`
endpoint (streamable HTTP, with the API key as X-API-Key). Each test runs on both
transports where it can: list the tools, run code, commands and file operations in the
session's own sandbox (created on first use, killed when the session ends), work in a
sandbox the client names (left running), and get clear tool errors for bad input."""

import contextlib
import json
import signal
import subprocess
import time

import httpx
import httpx2
import pytest
from e2b import Sandbox
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.server_only

TOOLS = {
    "create_sandbox",
    "run_code",
    "run_command",
    "read_file",
    "write_file",
    "list_files",
    "kill_sandbox",
}
UNKNOWN_ID = "i0000000000000000000"


@contextlib.asynccontextmanager
async def connect(silo, transport):
    """An MCP client session with silo over `transport`."""
    if transport == "stdio":
        params = StdioServerParameters(
            command=silo.bin,
            args=["mcp"],
            env={"E2B_API_URL": silo.url, "E2B_API_KEY": silo.api_key},
        )
        async with Client(params) as client:
            yield client
    else:
        http = httpx2.AsyncClient(
            headers={"X-API-Key": silo.api_key},
            timeout=httpx2.Timeout(30, read=300),
        )
        async with http, Client(streamable_http_client(f"{silo.url}/mcp", http_client=http)) as client:
            yield client


def text(result) -> str:
    return "".join(block.text for block in result.content if block.type == "text")


async def call(client, tool, **args) -> str:
    """The tool's text; fails the test if the tool reported an error."""
    result = await client.call_tool(tool, args)
    assert not result.is_error, text(result)
    return text(result)


async def call_failing(client, tool, **args) -> str:
    """The tool's error text; fails the test if the tool did not report an error."""
    result = await client.call_tool(tool, args)
    assert result.is_error, f"{tool} {args} did not fail: {text(result)}"
    return text(result)


def mcp_sandboxes(silo) -> set:
    """Running sandboxes the MCP server created for its sessions."""
    status, body, _ = silo.api("GET", "/v2/sandboxes?state=running,paused")
    assert status == 200, body
    return {s["sandboxID"] for s in body if s.get("metadata", {}).get("createdBy") == "silo mcp"}


def wait_gone(silo, ids, seconds=30):
    deadline = time.monotonic() + seconds
    while mcp_sandboxes(silo) & ids:
        assert time.monotonic() < deadline, f"sandboxes {mcp_sandboxes(silo) & ids} outlived their session"
        time.sleep(0.2)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_lists_the_tools_and_runs_print_6_times_7(silo, transport):
    before = mcp_sandboxes(silo)
    async with connect(silo, transport) as client:
        tools = await client.list_tools()
        assert TOOLS <= {tool.name for tool in tools.tools}
        run_code = next(tool for tool in tools.tools if tool.name == "run_code")
        assert "code" in run_code.input_schema["required"]

        assert "42" in await call(client, "run_code", code="print(6*7)")

        # One sandbox for the session, stateful between calls.
        ours = mcp_sandboxes(silo) - before
        assert len(ours) == 1
        await call(client, "run_code", code="x = 41")
        assert "[result]\n42" in await call(client, "run_code", code="x + 1")
        assert mcp_sandboxes(silo) - before == ours
    # The session ended: its sandbox goes with it.
    wait_gone(silo, ours)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_files_and_commands_in_the_session_sandbox(silo, transport):
    async with connect(silo, transport) as client:
        written = await call(client, "write_file", path="notes/hello.txt", content="héllo\nworld\n")
        assert "/home/user/notes/hello.txt" in written
        assert await call(client, "read_file", path="notes/hello.txt") == "héllo\nworld\n"
        listing = await call(client, "list_files", path="notes")
        assert "file\t13\t/home/user/notes/hello.txt" in listing

        out = await call(client, "run_command", command="wc -l < notes/hello.txt; echo oops >&2; exit 3")
        assert out.startswith("exit code 3\n"), out
        assert "[stdout]\n2\n" in out and "[stderr]\noops\n" in out

        # A file written by code is read by the file tools: one sandbox behind them all.
        await call(client, "run_code", code="open('from_code.txt', 'w').write('made by python')")
        assert await call(client, "read_file", path="/home/user/from_code.txt") == "made by python"

        # A command that outlives its timeout is stopped, and the tool says how it ended.
        out = await call(client, "run_command", command="sleep 30", timeout_seconds=1)
        assert out == "exit code -1 (killed: it ran past its 1 s timeout)\n"


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_bad_input_is_a_clear_tool_error_not_a_crash(silo, transport):
    async with connect(silo, transport) as client:
        err = await call_failing(client, "run_code", code="1", sandbox_id=UNKNOWN_ID)
        assert f"sandbox {UNKNOWN_ID} not found" in err
        err = await call_failing(client, "run_command", command="true", sandbox_id="nope")
        assert "bad sandbox_id" in err and "sandbox id" in err
        err = await call_failing(client, "kill_sandbox", sandbox_id=UNKNOWN_ID)
        assert "not found" in err
        err = await call_failing(client, "create_sandbox", template="no-such-template")
        assert 'cannot create a sandbox from template "no-such-template"' in err

        err = await call_failing(client, "read_file", path="/no/such/file.txt")
        assert "/no/such/file.txt" in err and "404" in err
        err = await call_failing(client, "list_files", path="/no/such/dir")
        assert "/no/such/dir" in err
        err = await call_failing(client, "read_file", path="/home")
        assert "/home" in err

        # Arguments that do not fit the tool's schema.
        err = await call_failing(client, "run_code", language="python")
        assert "missing field `code`" in err

        # A Python exception is the code's result, not a failure of the tool.
        out = await call(client, "run_code", code="1/0")
        assert "[error]" in out and "ZeroDivisionError" in out

        assert "42" in await call(client, "run_code", code="print(6*7)")


async def test_a_named_sandbox_is_used_and_left_running(silo):
    sbx = Sandbox.create("base", timeout=120)
    try:
        before = mcp_sandboxes(silo)
        async with connect(silo, "http") as client:
            out = await call(client, "run_command", command="echo hi > /tmp/mark; cat /tmp/mark", sandbox_id=sbx.sandbox_id)
            assert out == "exit code 0\n[stdout]\nhi\n"
            assert await call(client, "read_file", path="/tmp/mark", sandbox_id=sbx.sandbox_id) == "hi\n"
            # base has no code interpreter: the error says which template it needs.
            err = await call_failing(client, "run_code", code="1", sandbox_id=sbx.sandbox_id)
            assert "code-interpreter" in err
            # Naming a sandbox creates none for the session.
            assert mcp_sandboxes(silo) == before
        assert sbx.is_running()
        assert sbx.files.read("/tmp/mark") == "hi\n"

        # kill_sandbox kills a sandbox the client names.
        async with connect(silo, "stdio") as client:
            assert sbx.sandbox_id in await call(client, "kill_sandbox", sandbox_id=sbx.sandbox_id)
        assert not sbx.is_running()
    finally:
        sbx.kill()


async def test_create_and_kill_the_session_sandbox(silo):
    before = mcp_sandboxes(silo)
    async with connect(silo, "stdio") as client:
        created = await call(client, "create_sandbox", template="base")
        ours = mcp_sandboxes(silo) - before
        assert len(ours) == 1 and next(iter(ours)) in created
        out = await call(client, "run_command", command="python3 -c 'print(6*7)'")
        assert "[stdout]\n42\n" in out

        assert next(iter(ours)) in await call(client, "kill_sandbox")
        assert mcp_sandboxes(silo) - before == set()
        # The next call starts a new session sandbox (code-interpreter by default).
        assert "42" in await call(client, "run_code", code="6*7")
        ours = mcp_sandboxes(silo) - before
        assert len(ours) == 1
    wait_gone(silo, ours)


def test_silo_mcp_killed_with_sigterm_kills_its_sandbox(silo):
    """The stdio server ends on SIGTERM too (what a client does when stdin is not
    enough), and kills the session's sandbox before it exits."""
    before = mcp_sandboxes(silo)
    # The with block closes the pipes and reaps the process, whatever happens.
    with subprocess.Popen(
        [silo.bin, "mcp", "--api-url", silo.url, "--api-key", silo.api_key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            def rpc(id, method, params):
                proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": params}) + "\n")
                proc.stdin.flush()
                return json.loads(proc.stdout.readline())

            init = rpc(1, "initialize", {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"},
            })
            assert init["result"]["protocolVersion"] == "2025-11-25"
            proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
            answer = rpc(2, "tools/call", {"name": "run_command", "arguments": {"command": "echo up"}})
            assert answer["result"]["content"][0]["text"] == "exit code 0\n[stdout]\nup\n"
            ours = mcp_sandboxes(silo) - before
            assert len(ours) == 1

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            assert not mcp_sandboxes(silo) & ours
        finally:
            if proc.poll() is None:
                proc.kill()


def test_the_http_endpoint_wants_the_api_key(silo):
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    resp = httpx.post(f"{silo.url}/mcp", json=body, headers=headers)
    assert resp.status_code == 401
    resp = httpx.post(f"{silo.url}/mcp", json=body, headers={**headers, "X-API-Key": "e2b_" + "0" * 40})
    assert resp.status_code == 401
