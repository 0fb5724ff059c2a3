"""The compose stack, run for real: built, brought up, backfilled, restarted, taken down and up.

Run by `.ci/compose` (it installs podman, builds the images and sets COMPOSE_STACK, COMPOSE,
COMPOSE_FILE, DOCKER_HOST); skipped otherwise. The tests run in file order, on one stack that the
first brings up from empty volumes: each step is what a user does next. The stack's source is the
mirror service serving samples/ (docker-compose.offline.yaml), so the expected rows are the samples'.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(not os.environ.get("COMPOSE_STACK"), reason="the compose stack runs under .ci/compose only")

SAMPLES = ROOT / "samples"
BUCKET = "nyc-tlc"
LUIGID = "http://127.0.0.1:8082"
GCS = "http://127.0.0.1:4443"


def sample_rows(rel: str) -> int:
    """Data rows of a sample file (gzipped csv, header first)."""
    return sum(1 for line in gzip.decompress((SAMPLES / rel).read_bytes()).splitlines()[1:] if line.strip())


def compose(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([os.environ["COMPOSE"], *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"compose {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True, timeout=600).stdout


def container(service: str) -> str:
    return compose("ps", "-q", service).stdout.split()[0]


def worker_exit_code() -> int:
    """Waits for the backfill worker `up` started, and returns its exit code."""
    return int(podman("wait", container("worker")).strip())


def worker_log() -> str:
    return compose("logs", "--no-color", "worker").stdout


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def lake_objects() -> list[str]:
    """Every object name in the lake's bucket, in the GCS container."""
    listing = json.loads(get(f"{GCS}/storage/v1/b/{BUCKET}/o"))
    return sorted(item["name"] for item in listing.get("items", []))


def password() -> str:
    return (ROOT / "secrets" / "postgres-password.txt").read_text()


def warehouse(sql: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=5432, user="root", dbname="ny_taxi", password=password(), connect_timeout=10) as conn:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()


def months_in_postgres(table: str) -> dict[str, int]:
    """Rows per source month the table holds, and the marker table agrees on each."""
    held = {f"{m:%Y-%m}": n for m, n in warehouse(f"SELECT source_month, count(*) FROM {table} GROUP BY 1")}
    service = table.removesuffix("_tripdata")
    marked = {m: n for m, n in warehouse(f"SELECT month, rows FROM _ingested WHERE service = '{service}'")}
    assert marked == held, (marked, held)
    return held


def size_in_bytes(text: str) -> float:
    """podman's sizes: '123.4MB', '1.2GB', '900kB'."""
    units = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "B": 1}
    unit = next(u for u in units if text.endswith(u))
    return float(text.removesuffix(unit)) * units[unit]


def tasks_done() -> dict:
    query = urllib.parse.quote(json.dumps({"status": "DONE"}))
    return json.loads(get(f"{LUIGID}/api/task_list?data={query}"))["response"]


@pytest.fixture(scope="module")
def stack():
    """The stack from empty volumes: `up`, and the worker's backfill to its end."""
    compose("down", "--volumes")
    started = time.monotonic()
    compose("up", "-d")
    code = worker_exit_code()
    print(f"\nup to backfilled: {time.monotonic() - started:.0f} s")
    yield code
    print("\n" + podman("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}"))
    # The ports (8082 above all, which the docs' luigid uses in the suite) are free again; the
    # volumes stay for a look (`.ci/compose down` removes them).
    compose("down")


def test_the_backfill_exits_0(stack):
    assert stack == 0, worker_log()[-3000:]


def test_the_lake_holds_each_month_once(stack):
    assert lake_objects() == ["lake/green/month=2019-10/green_tripdata_2019-10.parquet", "lake/zones/taxi_zone_lookup.parquet"]


def test_postgres_holds_each_months_rows_once(stack):
    assert months_in_postgres("green_tripdata") == {"2019-10": sample_rows("green/green_tripdata_2019-10.csv.gz")}
    assert warehouse("SELECT count(*) FROM taxi_zone_lookup") == [(265,)]


def test_the_visualiser_answers_and_lists_the_tasks_done(stack):
    assert b"luigi" in get(f"{LUIGID}/").lower()
    done = [(task["name"], task["params"].get("service"), task["params"].get("month")) for task in tasks_done().values()]
    assert {("IngestMonth", "green", "2019-10"), ("IngestZones", None, None)} <= set(done), done
    assert [name for name, _, _ in done].count("IngestRange") == 1, done


def test_a_second_up_runs_nothing(stack):
    before = worker_log()
    compose("up", "-d")
    assert worker_exit_code() == 0
    second = worker_log()[len(before) :]
    assert "Did not run any tasks" in second, second[-3000:]
    assert " running " not in second
    assert lake_objects() == ["lake/green/month=2019-10/green_tripdata_2019-10.parquet", "lake/zones/taxi_zone_lookup.parquet"]


def test_the_readmes_run_of_one_month(stack):
    """`docker compose run --rm worker IngestMonth ...`, as the README gives it."""
    compose("run", "--rm", "worker", "IngestMonth", "--service", "fhv", "--month", "2019-01")
    assert "lake/fhv/month=2019-01/fhv_tripdata_2019-01.parquet" in lake_objects()
    assert months_in_postgres("fhv_tripdata") == {"2019-01": sample_rows("fhv/fhv_tripdata_2019-01.csv.gz")}


def test_a_postgres_restart_during_the_load_ends_with_each_month_once(stack):
    """Postgres restarted while the worker loads yellow 2021-01: the worker's retries, or else a
    re-run, end with the month once. So that the restart cannot come after the load's end, a
    session of the test holds the marker table (SHARE: readers pass, the load's marker row waits)
    until the restart ends it."""
    import psycopg2

    holder = psycopg2.connect(host="127.0.0.1", port=5432, user="root", dbname="ny_taxi", password=password())
    holder.cursor().execute("LOCK TABLE _ingested IN SHARE MODE")
    command = [os.environ["COMPOSE"], "run", "--rm", "worker", "IngestMonth", "--service", "yellow", "--month", "2021-01"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"bytes": 0}
    sampling = threading.Event()

    def sample_memory():  # the worker's memory, as podman stats shows it, every half second
        while not sampling.wait(0.5):
            stats = subprocess.run(
                ["podman", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}"], capture_output=True, text=True
            )
            for name, usage in (line.split(" ", 1) for line in stats.stdout.splitlines() if " " in line):
                if "worker_run" in name:
                    peak["bytes"] = max(peak["bytes"], size_in_bytes(usage.split(" / ")[0]))

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    output, restarted = [], False
    for line in run.stdout:
        output.append(line)
        if not restarted and "loading" in line and "into the postgres warehouse" in line:
            time.sleep(2)  # into the load: its rows copied, its marker waiting for the lock
            with holder.cursor() as cur:
                cur.execute("SELECT count(*) FROM _ingested WHERE service = 'yellow'")
                assert cur.fetchone() == (0,)
            compose("restart", "postgres")
            restarted = True
    first = run.wait(timeout=600)
    sampling.set()
    holder.close()
    print(f"\nfirst run, postgres restarted during its load: exit {first}; worker's peak memory {peak['bytes'] / 1e6:.0f} MB")
    assert restarted, "".join(output)[-3000:]
    if first != 0:
        print("".join(output[-12:]))
        # The README's answer to a failed run: run it again; it redoes only what is missing.
        compose("run", "--rm", "worker", "IngestMonth", "--service", "yellow", "--month", "2021-01")
    assert months_in_postgres("yellow_tripdata") == {"2021-01": sample_rows("yellow/yellow_tripdata_2021-01.csv.gz")}
    assert lake_objects().count("lake/yellow/month=2021-01/yellow_tripdata_2021-01.parquet") == 1


def test_down_then_up_keeps_the_volumes_data_and_the_luigid_history(stack):
    held = {table: months_in_postgres(table) for table in ("green_tripdata", "fhv_tripdata", "yellow_tripdata")}
    objects = lake_objects()
    history = get(f"{LUIGID}/history/by_name/IngestMonth")
    assert b"2019-10" in history and b"2021-01" in history
    compose("down")
    compose("up", "-d")
    assert worker_exit_code() == 0
    assert " running " not in worker_log()  # the backfill found everything done
    assert lake_objects() == objects
    assert {table: months_in_postgres(table) for table in held} == held
    after = get(f"{LUIGID}/history/by_name/IngestMonth")
    assert b"2019-10" in after and b"2021-01" in after


def test_the_password_never_shows(stack):
    secret = password()
    assert len(secret) >= 8
    query = urllib.parse.quote(json.dumps({}))
    seen = {
        "compose config": compose("config").stdout,
        "the logs": compose("logs", "--no-color").stdout,
        "luigid's tasks": get(f"{LUIGID}/api/task_list?data={query}").decode(),
        "luigid's history": get(f"{LUIGID}/history").decode(),
        "the containers' settings": podman("inspect", *compose("ps", "-q").stdout.split()),
    }
    assert [where for where, text in seen.items() if secret in text] == []


def test_the_images_run_as_a_non_root_user_and_luigid_listens_on_localhost(stack):
    for service in ("luigid", "gcs", "mirror"):
        assert compose("exec", "-T", service, "id", "-u").stdout.strip() != "0", service
    # Postgres's entrypoint starts as root to read the secret, as the official image's does; the
    # server runs as postgres.
    assert compose("exec", "-T", "postgres", "stat", "-c", "%U", "/proc/1").stdout.strip() == "postgres"
    assert compose("port", "luigid", "8082").stdout.strip() == "127.0.0.1:8082"
    sizes = podman("images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}")
    print("\n" + sizes)
