"""The translated-file store (service/files.py `Store`) on a real server process with a store of
its own (TMPDIR made in the test): bounded in bytes (503 + Retry-After when full, nothing
partial left, uploads work again after expiry), expired by a timer with no traffic, stores of
dead processes swept at start-up, a folder removed from outside made anew, downloads racing
expiry never a 500, and download links never built from the Host header."""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import httpx
import pytest

from tests.server import running_server

TTL_S = 2.0
PREFIX = "transerve-files-"  # each process's store folder in TMPDIR (files.STORE_PREFIX)


def _docx_with_image(image_bytes: int) -> bytes:
    """A .docx of one paragraph ("1") and a PNG carrying `image_bytes` random bytes: stored
    whole, almost no model work (the review's way to fill the store)."""
    import docx

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    png += chunk(b"blOb", os.urandom(image_bytes)) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")
    document = docx.Document()
    document.add_paragraph("1")
    document.add_picture(io.BytesIO(png))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


BIG = _docx_with_image(400_000)  # ~437 KB stored: two fit in a 1 MB store, a third does not


@pytest.fixture(scope="module")
def tmpdir_(tmp_path_factory):
    return tmp_path_factory.mktemp("store-tmp")


@pytest.fixture(scope="module")
def live_store(tmpdir_):
    """A store another live process holds (here: this one, with its lock): never swept."""
    folder = tmpdir_ / (PREFIX + "live")
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield folder
    os.close(fd)


@pytest.fixture(scope="module")
def server(model_dir, tmpdir_, live_store):
    orphan = tmpdir_ / (PREFIX + "killed") / "tokentokentokentoken"
    orphan.mkdir(parents=True)
    (orphan / "letter.txt").write_text("a translated letter of a process killed with -9")
    env = {
        "TMPDIR": str(tmpdir_),
        "TRANSERVE_FILE_STORE_MB": "1",
        "TRANSERVE_FILE_TTL_S": str(TTL_S),
        "TRANSERVE_MAX_FILE_JOBS": "4",
    }
    with running_server(model_dir, env=env) as s:
        s.tmp = tmpdir_  # type: ignore[attr-defined]
        yield s


def upload(server, name: str, data: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(
        server.base + "/translate_file",
        data={"source": "de", "target": "en"},
        files={"file": (name, data, "application/octet-stream")},
        headers=headers,
        timeout=60,
    )


def own_store(server) -> Path:
    """The server's store folder (the one that is neither the live nor a swept one)."""
    (folder,) = [p for p in server.tmp.glob(PREFIX + "*") if not p.name.endswith(("live", "killed"))]
    return folder


def stored(server) -> list[Path]:
    return sorted(p for p in own_store(server).rglob("*") if p.is_file())


def wait_empty(server, timeout: float = TTL_S + 3) -> None:
    deadline = time.monotonic() + timeout
    while stored(server) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_start_up_sweeps_stores_of_dead_processes_and_keeps_live_ones(server, live_store):
    # no file request has been made: the server's import swept the killed process's store
    assert not (server.tmp / (PREFIX + "killed")).exists()
    assert live_store.is_dir()
    assert "removed 1 file store(s) left by ended processes" in "".join(server.lines)


def test_a_full_store_answers_503_with_retry_after_leaves_nothing_and_recovers_after_expiry(server):
    first, second = upload(server, "a.docx", BIG), upload(server, "b.docx", BIG)
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    before = stored(server)
    assert len(before) == 2
    full = upload(server, "c.docx", BIG)
    assert full.status_code == 503 and full.json()["error"] == "file store full, retry later"
    assert 1 <= int(full.headers["retry-after"]) <= TTL_S + 1
    assert stored(server) == before  # nothing of the refused file, no empty folder
    assert len(list(own_store(server).iterdir())) == 2
    assert all(httpx.get(r.json()["translatedFileUrl"]).status_code == 200 for r in (first, second))
    time.sleep(float(full.headers["retry-after"]) + 1.2)  # the timer has removed the two
    again = upload(server, "c.docx", BIG)
    assert again.status_code == 200, again.text


def test_files_expire_on_a_timer_without_traffic(server):
    wait_empty(server)
    r = upload(server, "notes.txt", b"der hund")
    assert r.status_code == 200 and len(stored(server)) == 1
    time.sleep(TTL_S + 1.5)  # no request meanwhile
    assert stored(server) == []
    assert httpx.get(r.json()["translatedFileUrl"]).status_code == 404


def test_downloads_racing_expiry_are_whole_or_404_never_500(server):
    wait_empty(server)
    r = upload(server, "race.docx", BIG)
    url = r.json()["translatedFileUrl"]
    whole = httpx.get(url).content
    codes: list[int | str] = []
    with httpx.Client(timeout=10) as c:
        deadline = time.monotonic() + TTL_S + 3
        while time.monotonic() < deadline:
            try:
                got = c.get(url)
            except httpx.HTTPError as e:  # a dropped connection, a cut body
                codes.append(type(e).__name__)
                continue
            codes.append(got.status_code if got.status_code != 200 or got.content == whole else "cut")
            if got.status_code == 404:
                break
    assert set(codes) <= {200, 404} and codes[-1] == 404, codes


def test_a_store_folder_removed_from_outside_is_made_anew(server):
    wait_empty(server)
    first = upload(server, "one.txt", b"der hund")
    assert first.status_code == 200
    shutil.rmtree(own_store(server))
    time.sleep(1.5)  # the timer's next tick makes it anew, with no request
    assert own_store(server).is_dir()
    assert httpx.get(first.json()["translatedFileUrl"]).status_code == 404  # its files went with it
    second = upload(server, "two.txt", b"der hund")
    assert second.status_code == 200
    assert httpx.get(second.json()["translatedFileUrl"]).status_code == 200


def test_the_download_link_is_never_built_from_a_forged_host(server):
    r = upload(server, "notes.txt", b"der hund", headers={"Host": "evil.example"})
    url = r.json()["translatedFileUrl"]
    assert url.startswith(server.base + "/download_file/") and "evil" not in url
    # X-Forwarded-Host counts only from a trusted proxy (none here)
    r = upload(server, "notes.txt", b"der hund", headers={"X-Forwarded-Host": "evil.example"})
    assert r.json()["translatedFileUrl"].startswith(server.base + "/download_file/")


def test_the_download_link_starts_with_the_public_url_or_a_trusted_proxys_host(model_dir):
    env = {"TRANSERVE_PUBLIC_URL": "https://mt.example.org/base/"}
    with running_server(model_dir, env=env) as s:
        r = upload(s, "notes.txt", b"der hund", headers={"Host": "evil.example"})
        assert r.json()["translatedFileUrl"].startswith("https://mt.example.org/base/download_file/")
    with running_server(model_dir, env={"TRANSERVE_TRUSTED_PROXIES": "127.0.0.1"}) as s:
        proxied = {"Host": "evil.example", "X-Forwarded-Host": "mt.example.org", "X-Forwarded-Proto": "https"}
        url = upload(s, "notes.txt", b"der hund", headers=proxied).json()["translatedFileUrl"]
        assert url.startswith("https://mt.example.org/download_file/")


def test_a_download_whose_file_goes_between_lookup_and_answer_is_whole(client, monkeypatch):
    """In-process, deterministic: expiry removes the folder right after the route found the file."""
    from service.routes import translate as routes

    r = client.post(
        "/translate_file",
        data={"source": "de", "target": "en"},
        files={"file": ("notes.txt", b"der hund\nein mann", "text/plain")},
    )
    url = r.json()["translatedFileUrl"].removeprefix("http://testserver")
    whole = client.get(url).content
    real = client.app.state.service.files
    lookup = getattr(real, "open", None) or real.get  # the old store answered a path

    class Expiring:
        def __getattr__(self, name):
            return getattr(real, name)

        def open(self, token, name):
            found = lookup(token, name)
            shutil.rmtree(real.root / token)  # expiry wins the race right here
            return found

        get = open

    monkeypatch.setattr(routes, "store", lambda state: Expiring())
    got = client.get(url)
    assert got.status_code == 200 and got.content == whole
    monkeypatch.undo()
    assert client.get(url).status_code == 404
