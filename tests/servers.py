"""Real servers the tests (and the benchmarks) start and stop themselves, on 127.0.0.1 only.

A plain module rather than fixtures, so that bench/ can start the same throwaway Postgres.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path:
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("no Postgres server binaries (pg_ctl): install postgresql (see .ci/run)")
    return Path(found[-1]).parent


@contextlib.contextmanager
def postgres_server(password: str) -> Iterator[dict]:
    """A throwaway Postgres cluster on a free 127.0.0.1 port, with password (scram) authentication
    over TCP, so clients must bring the password the way users do (PGPASSWORD).

    initdb and pg_ctl refuse to run as root: as root they run as the `postgres` user."""
    bindir = _pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="pgtest-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    if prefix:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
                             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                             "--locale=C.UTF-8", "--no-sync"], check=True, stdout=subprocess.DEVNULL)
    pwfile.unlink()
    # Durability off: a test server, thrown away afterwards. Same for every benchmark approach.
    opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "pg.log"),
                             "-w", "-t", "60", "start"], check=True, stdout=subprocess.DEVNULL)
    try:
        yield {"host": "127.0.0.1", "port": port, "user": "postgres", "database": "postgres",
               "password": password, "log": base / "pg.log"}
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of a server. A client connection that sends more than
    ``cut_after`` bytes is dropped on both sides at that point, the way a network failure or a
    killed server cuts a load in the middle. Smaller connections pass untouched."""

    def __init__(self, target_port: int, cut_after: int):
        self.target_port, self.cut_after = target_port, cut_after
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, self.cut_after), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: Optional[int]) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()
