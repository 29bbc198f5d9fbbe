"""Files through the SDK: read/write (text, bytes, large, gzip, metadata), listing,
directories, rename, remove, info, and hostile paths and bodies."""

import gzip
import io
import os

import pytest
from e2b import FileType, NotFoundException, Sandbox
from e2b.exceptions import FileNotFoundException, InvalidArgumentException


def test_write_read_text(sandbox: Sandbox, unique):
    info = sandbox.files.write(f"{unique}.txt", "héllo\n")
    assert info.name == f"{unique}.txt"
    assert info.path.endswith(f"/{unique}.txt")
    assert sandbox.files.read(f"{unique}.txt") == "héllo\n"


def test_write_read_bytes_with_parents(sandbox: Sandbox, unique):
    data = bytes(range(256)) * 4
    sandbox.files.write(f"{unique}/a/b/c.bin", data)
    assert sandbox.files.read(f"{unique}/a/b/c.bin", format="bytes") == data


def test_fifty_mib_round_trip(sandbox: Sandbox, unique):
    data = os.urandom(50 * 1024 * 1024)
    sandbox.files.write(f"{unique}.bin", data)
    back = sandbox.files.read(f"{unique}.bin", format="bytes")
    assert len(back) == len(data)
    assert back == data


def test_file_like_and_gzip_upload(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}-stream.txt", io.BytesIO(b"from a stream"))
    assert sandbox.files.read(f"{unique}-stream.txt") == "from a stream"
    sandbox.files.write(f"{unique}-gz.txt", "zipped " * 1000, gzip=True)
    assert sandbox.files.read(f"{unique}-gz.txt", gzip=True) == "zipped " * 1000


def test_overwrite_keeps_file_whole_and_owned(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}.txt", "first version, longer")
    sandbox.files.write(f"{unique}.txt", "second")
    assert sandbox.files.read(f"{unique}.txt") == "second"
    info = sandbox.files.get_info(f"{unique}.txt")
    assert info.owner == "user"
    # No temp files left next to it.
    names = [e.name for e in sandbox.files.list(".")]
    assert not [n for n in names if n.startswith(".silo-upload-")]


def test_write_files_several(sandbox: Sandbox, unique):
    from e2b.sandbox.filesystem.filesystem import WriteEntry

    infos = sandbox.files.write_files(
        [WriteEntry(path=f"{unique}/1.txt", data="one"), WriteEntry(path=f"{unique}/2.txt", data="two")]
    )
    assert sorted(i.name for i in infos) == ["1.txt", "2.txt"]
    assert sandbox.files.read(f"{unique}/2.txt") == "two"


def test_missing_file(sandbox: Sandbox, unique):
    with pytest.raises(FileNotFoundException):
        sandbox.files.read(f"{unique}-missing.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.get_info(f"{unique}-missing.txt")


def test_exists(sandbox: Sandbox, unique):
    assert not sandbox.files.exists(unique)
    sandbox.files.write(unique, "x")
    assert sandbox.files.exists(unique)


def test_list_with_depth(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}/top.txt", "t")
    sandbox.files.write(f"{unique}/sub/inner.txt", "i")
    sandbox.files.write(f"{unique}/sub/deeper/deep.txt", "d")
    one = {e.name for e in sandbox.files.list(unique)}
    assert one == {"top.txt", "sub"}
    two = {e.path.split(f"{unique}/", 1)[1] for e in sandbox.files.list(unique, depth=2)}
    assert two == {"top.txt", "sub", "sub/inner.txt", "sub/deeper"}
    kinds = {e.name: e.type for e in sandbox.files.list(unique)}
    assert kinds == {"top.txt": FileType.FILE, "sub": FileType.DIR}


def test_make_dir_twice(sandbox: Sandbox, unique):
    assert sandbox.files.make_dir(f"{unique}/x/y")
    assert not sandbox.files.make_dir(f"{unique}/x/y")
    assert sandbox.files.get_info(f"{unique}/x").type == FileType.DIR


def test_make_dir_onto_a_file_is_invalid(sandbox: Sandbox, unique):
    sandbox.files.write(unique, "x")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir(unique)


def test_rename(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}/a.txt", "moved")
    info = sandbox.files.rename(f"{unique}/a.txt", f"{unique}/new/b.txt")
    assert info.name == "b.txt"
    assert sandbox.files.read(f"{unique}/new/b.txt") == "moved"
    assert not sandbox.files.exists(f"{unique}/a.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.rename(f"{unique}/nope", f"{unique}/nope2")


def test_rename_across_filesystems(sandbox: Sandbox, unique):
    # /tmp is a mount of its own in the sandbox; rename(2) cannot cross it.
    sandbox.files.write(f"/tmp/{unique}/d/f.txt", "across")
    sandbox.commands.run(f"chmod 750 /tmp/{unique}/d && ln -s f.txt /tmp/{unique}/d/link")
    info = sandbox.files.rename(f"/tmp/{unique}", f"{unique}-moved")
    assert info.type == FileType.DIR
    assert sandbox.files.read(f"{unique}-moved/d/link") == "across"
    assert sandbox.files.get_info(f"{unique}-moved/d/link").type == FileType.SYMLINK
    assert sandbox.files.get_info(f"{unique}-moved/d").mode == 0o750
    assert sandbox.files.get_info(f"{unique}-moved/d/f.txt").owner == "user"
    assert not sandbox.files.exists(f"/tmp/{unique}")
    sandbox.files.write(f"/tmp/{unique}.txt", "file")
    sandbox.files.rename(f"/tmp/{unique}.txt", f"{unique}.txt")
    assert sandbox.files.read(f"{unique}.txt") == "file"
    assert not sandbox.files.exists(f"/tmp/{unique}.txt")


def test_remove(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}/d/f.txt", "x")
    sandbox.files.remove(f"{unique}/d/f.txt")
    assert not sandbox.files.exists(f"{unique}/d/f.txt")
    sandbox.files.remove(unique)
    assert not sandbox.files.exists(unique)
    sandbox.files.remove(unique)  # already gone: fine


def test_get_info(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}.txt", "test")
    info = sandbox.files.get_info(f"{unique}.txt")
    home = sandbox.commands.run("pwd").stdout.strip()
    assert info.name == f"{unique}.txt"
    assert info.path == f"{home}/{unique}.txt"
    assert info.type == FileType.FILE
    assert info.size == 4
    assert info.mode == 0o644
    assert info.permissions == "-rw-r--r--"
    assert (info.owner, info.group) == ("user", "user")
    assert info.modified_time is not None
    sandbox.files.make_dir(unique)
    d = sandbox.files.get_info(unique)
    assert (d.type, d.size, d.mode, d.permissions) == (FileType.DIR, 0, 0o755, "drwxr-xr-x")


def test_symlink_info(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}/target.txt", "t")
    sandbox.commands.run(f"ln -s target.txt {unique}/link")
    info = sandbox.files.get_info(f"{unique}/link")
    # The SDK reports the link itself (envd sends the target's type plus isSymlink).
    assert info.type == FileType.SYMLINK
    assert info.symlink_target.endswith(f"{unique}/target.txt")


def test_write_through_symlink_updates_its_target(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}/target.txt", "old")
    sandbox.commands.run(f"ln -s target.txt {unique}/link")
    sandbox.files.write(f"{unique}/link", "new")
    assert sandbox.files.read(f"{unique}/target.txt") == "new"
    assert sandbox.files.get_info(f"{unique}/link").type == FileType.SYMLINK


def test_write_to_dev_null_keeps_the_device(sandbox: Sandbox):
    sandbox.files.write("/dev/null", "x")
    r = sandbox.commands.run("stat -c '%F %U' /dev/null")
    assert r.stdout.strip() == "character special file root"


def test_metadata(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}.txt", "m", metadata={"owner": "alice", "purpose": "test"})
    info = sandbox.files.get_info(f"{unique}.txt")
    assert info.metadata == {"owner": "alice", "purpose": "test"}


def test_metadata_too_large_is_refused_and_keeps_the_file(sandbox: Sandbox, unique):
    sandbox.files.write(f"{unique}.txt", "previous")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.write(f"{unique}.txt", "new", metadata={"k": "v" * 5000})
    assert sandbox.files.read(f"{unique}.txt") == "previous"


def test_long_metadata_value_is_read_whole(sandbox: Sandbox, unique):
    # Set inside the sandbox, where no upload limit applies: longer than the first read.
    path = sandbox.files.write(f"{unique}.txt", "x").path
    sandbox.commands.run(
        f"python3 -c \"import os; os.setxattr('{path}', 'user.e2b.long', b'v' * 5000)\""
    )
    assert sandbox.files.get_info(path).metadata == {"long": "v" * 5000}


def test_metadata_of_a_file_written_in_place_is_replaced_and_non_utf8_skipped(sandbox: Sandbox, unique):
    # A hard-linked file is written in place, so it keeps its xattrs: an upload replaces
    # the set, as envd's does.
    path = sandbox.files.write(f"{unique}.txt", "a", metadata={"old": "1"}).path
    sandbox.commands.run(f"ln {path} {path}.link")
    sandbox.commands.run(
        f"python3 -c \"import os; os.setxattr('{path}', 'user.e2b.bin', b'\\\\xff')\""
    )
    assert sandbox.files.get_info(path).metadata == {"old": "1"}
    sandbox.files.write(f"{unique}.txt", "b", metadata={"new": "2"})
    assert sandbox.files.get_info(f"{path}.link").metadata == {"new": "2"}


def test_tilde_and_dotdot_paths(sandbox: Sandbox, unique):
    sandbox.files.write(f"~/{unique}/a.txt", "tilde")
    assert sandbox.files.read(f"{unique}/x/../a.txt") == "tilde"
    home = sandbox.commands.run("pwd").stdout.strip()
    # Climbing above / stays at /.
    depth = home.count("/")
    assert sandbox.files.read("../" * (depth + 3) + home.lstrip("/") + f"/{unique}/a.txt") == "tilde"


def test_another_users_home_is_refused(sandbox: Sandbox):
    # As envd: `~name` is not expanded, nor taken as a relative name.
    with pytest.raises(InvalidArgumentException):
        sandbox.files.get_info("~root")


def test_empty_path_is_the_default_workdir(sandbox: Sandbox, envd, unique):
    sandbox.files.write(f"/tmp/{unique}/f.txt", "x")
    assert envd.post("/init", json={"defaultWorkdir": f"/tmp/{unique}"}).status_code == 204
    r = envd.post("/filesystem.Filesystem/ListDir", json={"path": ""})
    assert r.status_code == 200, r.text
    assert [e["path"] for e in r.json()["entries"]] == [f"/tmp/{unique}/f.txt"]


def test_read_directory_is_invalid(sandbox: Sandbox, unique):
    sandbox.files.make_dir(unique)
    with pytest.raises(InvalidArgumentException):
        sandbox.files.read(unique)


def test_write_onto_directory_is_invalid(sandbox: Sandbox, unique):
    sandbox.files.make_dir(unique)
    with pytest.raises(InvalidArgumentException):
        sandbox.files.write(unique, "x")


def test_raw_download_gzip_and_errors(sandbox: Sandbox, envd, unique):
    sandbox.files.write(f"{unique}.txt", "abc" * 100)
    r = envd.get("/files", params={"path": f"{unique}.txt"}, headers={"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert r.text == "abc" * 100  # httpx decodes it
    # Larger than the sample the decision is made on, and than a chunk once compressed:
    # the sample's gzip and the rest's are one stream.
    lines = "".join(f"line {i}\n" for i in range(300_000))
    sandbox.files.write(f"{unique}-lines.txt", lines)
    r = envd.get("/files", params={"path": f"{unique}-lines.txt"}, headers={"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert r.text == lines
    # What would not shrink by half comes as it is, with its length (compressing random
    # data costs more than it saves).
    noise = os.urandom(200_000)
    sandbox.files.write(f"{unique}.bin", noise)
    r = envd.get("/files", params={"path": f"{unique}.bin"}, headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in r.headers
    assert (r.headers["content-length"], r.content) == (str(len(noise)), noise)
    r = envd.get("/files", params={"path": f"{unique}-nope"})
    assert r.status_code == 404
    assert r.json()["code"] == 404
    r = envd.get("/files", params={"path": "x", "username": "nobody-here"})
    assert r.status_code == 401


def test_read_pseudo_files(sandbox: Sandbox):
    # Their stat says nothing of what they hold: 0 bytes (Linux's sysfs says 4096).
    assert len(sandbox.files.read("/proc/loadavg").split()) == 5
    online = sandbox.commands.run("cat /sys/devices/system/cpu/online").stdout
    assert online
    assert sandbox.files.read("/sys/devices/system/cpu/online") == online


def test_raw_upload_octet_stream_gzip_and_bad_gzip(envd, unique):
    body = gzip.compress(b"raw gz")
    r = envd.post("/files",
        params={"path": f"{unique}.txt"},
        content=body,
        headers={"content-type": "application/octet-stream", "content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    assert r.json()[0]["type"] == "file"
    assert envd.get("/files", params={"path": f"{unique}.txt"}).content == b"raw gz"
    r = envd.post("/files",
        params={"path": f"{unique}-bad.txt"},
        content=b"not gzip at all",
        headers={"content-type": "application/octet-stream", "content-encoding": "gzip"},
    )
    assert r.status_code == 400
    # A failed upload leaves nothing behind.
    assert envd.get("/files", params={"path": f"{unique}-bad.txt"}).status_code == 404


def test_raw_multipart_takes_file_parts_once_each(envd, unique):
    # A form field before the file is not what `?path=` names.
    r = envd.post("/files",
        params={"path": f"{unique}.txt"},
        data={"note": "a form field"},
        files=[("file", ("ignored-name", b"the file"))],
    )
    assert r.status_code == 200, r.text
    assert [e["name"] for e in r.json()] == [f"{unique}.txt"]
    assert envd.get("/files", params={"path": f"{unique}.txt"}).content == b"the file"
    # Two files to one path: envd refuses the request (after writing the first).
    r = envd.post("/files",
        files=[("file", (f"{unique}-2.txt", b"first")), ("file", (f"{unique}-2.txt", b"second"))],
    )
    assert r.status_code == 400
    assert envd.get("/files", params={"path": f"{unique}-2.txt"}).content == b"first"
    # No `file` part: envd writes nothing and answers an empty list.
    r = envd.post("/files",
        params={"path": f"{unique}-3.txt"},
        files=[("note", (None, "a form field only"))],
    )
    assert r.status_code == 200, r.text
    assert r.json() == []
    assert envd.get("/files", params={"path": f"{unique}-3.txt"}).status_code == 404


def test_raw_nul_in_path_is_rejected(envd):
    r = envd.post("/filesystem.Filesystem/Stat",
        json={"path": "a\u0000b"},
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"
