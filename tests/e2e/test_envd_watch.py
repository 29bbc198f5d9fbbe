"""Directory watching: the sync SDK polls watchers, the async SDK streams WatchDir."""

import asyncio

import pytest
from e2b import AsyncSandbox, FilesystemEventType, NotFoundException, Sandbox, SandboxException


def test_watch_write_reports_create_chmod_write(sandbox: Sandbox, unique):
    sandbox.files.make_dir(unique)
    handle = sandbox.files.watch_dir(unique)
    sandbox.files.write(f"{unique}/f.txt", "watched")
    events = handle.get_new_events()
    assert [(e.type, e.name) for e in events] == [
        (FilesystemEventType.CREATE, "f.txt"),
        (FilesystemEventType.CHMOD, "f.txt"),
        (FilesystemEventType.WRITE, "f.txt"),
    ]
    handle.stop()


def test_watch_rename_remove_and_entries(sandbox: Sandbox, unique):
    sandbox.files.make_dir(unique)
    sandbox.files.write(f"{unique}/a.txt", "a")
    handle = sandbox.files.watch_dir(unique, include_entry=True)
    sandbox.files.rename(f"{unique}/a.txt", f"{unique}/b.txt")
    sandbox.files.remove(f"{unique}/b.txt")
    sandbox.files.write(f"{unique}/c.txt", "c")
    events = handle.get_new_events()
    kinds = [(e.type, e.name) for e in events]
    assert (FilesystemEventType.RENAME, "a.txt") in kinds
    assert (FilesystemEventType.CREATE, "b.txt") in kinds
    assert (FilesystemEventType.REMOVE, "b.txt") in kinds
    created = [e for e in events if e.name == "c.txt" and e.type == FilesystemEventType.CREATE]
    assert created and created[0].entry is not None and created[0].entry.size == 1
    handle.stop()


def test_watch_recursive_picks_up_new_dirs(sandbox: Sandbox, unique):
    sandbox.files.make_dir(unique)
    handle = sandbox.files.watch_dir(unique, recursive=True)
    sandbox.files.make_dir(f"{unique}/nested")
    sandbox.files.write(f"{unique}/nested/f.txt", "x")
    events = handle.get_new_events()
    assert (FilesystemEventType.CREATE, "nested") in [(e.type, e.name) for e in events]
    assert (FilesystemEventType.WRITE, "nested/f.txt") in [(e.type, e.name) for e in events]
    handle.stop()


def test_watch_through_a_symlink_to_a_directory(sandbox: Sandbox, unique):
    sandbox.files.make_dir(f"{unique}/real")
    sandbox.commands.run(f"ln -s real {unique}/link")
    handle = sandbox.files.watch_dir(f"{unique}/link")
    sandbox.files.write(f"{unique}/real/f.txt", "x")
    events = handle.get_new_events()
    assert (FilesystemEventType.WRITE, "f.txt") in [(e.type, e.name) for e in events]
    handle.stop()


def test_watch_missing_dir_and_file(sandbox: Sandbox, unique):
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir(f"{unique}-missing")
    sandbox.files.write(f"{unique}.txt", "x")
    with pytest.raises(SandboxException):
        sandbox.files.watch_dir(f"{unique}.txt")


@pytest.mark.asyncio
async def test_async_watch_dir_streams(async_sandbox: AsyncSandbox, unique):
    await async_sandbox.files.make_dir(unique)
    got = []
    seen = asyncio.Event()

    def on_event(e):
        got.append((e.type, e.name))
        if e.type == FilesystemEventType.WRITE:
            seen.set()

    handle = await async_sandbox.files.watch_dir(unique, on_event=on_event, recursive=True)
    await async_sandbox.files.write(f"{unique}/async.txt", "hello")
    await asyncio.wait_for(seen.wait(), timeout=10)
    await handle.stop()
    assert (FilesystemEventType.CREATE, "async.txt") in got


@pytest.mark.asyncio
async def test_async_commands_and_files(async_sandbox: AsyncSandbox, unique):
    await async_sandbox.files.write(f"{unique}.txt", "async")
    assert await async_sandbox.files.read(f"{unique}.txt") == "async"
    r = await async_sandbox.commands.run("echo async-run")
    assert r.stdout == "async-run\n"
