"""Every command the README, the pages under docs/ and config/ show runs as written, and the
README stays a front door: short, the install, the tests and the demo first, its links whole.

Each runs word for word, through bash, in a project folder of its own (a copy of luigi.cfg,
config/ and samples/, named by NYC_TLC_HOME, so that what it writes stays there), with the
venv's commands first on PATH as `. .venv/bin/activate` puts them. What no test can reach is
swapped for the test's own, by one settings profile the `luigi` on that PATH appends to
LUIGI_CONFIG_PATH: the public source becomes a file:// mirror of real sample rows, the course's
Postgres the test server, a GCS bucket and BigQuery the emulators. The samples profile runs
with nothing swapped: it needs no network by design. The commands that are not run are listed
with the reason; a test checks that this file and the docs name the same commands. The README's
pipeline commands run once more on the samples profile alone, as a new user tries them first.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import luigi
import pytest

from conftest import ROOT
from mirror import data_rows
from servers import _wait_http

VENV_BIN = Path(sys.executable).parent

# The pipeline's commands, by the environment they need.
LOCAL = [
    "luigi --module pipeline IngestMonth --service yellow --month 2021-01 --local-scheduler",
    "luigi --module pipeline IngestZones --local-scheduler",
    "luigi --module pipeline IngestRange --services yellow,green,zones --first 2019-01 --last 2021-07 --local-scheduler",
    "python -c \"import duckdb; print(duckdb.connect('data/warehouse.duckdb', read_only=True).sql('SELECT month, "
    "count(*), avg(total_amount) FROM yellow_tripdata GROUP BY month ORDER BY month'))\"",
    "luigi --module pipeline Reingest --services yellow --first 2021-01 --last 2021-01 --local-scheduler",
    "luigi --module pipeline Republished --services yellow,green,zones --first 2019-01 --last 2021-07 --local-scheduler",
    "LUIGI_CONFIG_PATH=config/local.cfg luigi --module pipeline IngestMonth --service green --month 2019-10 --local-scheduler",
    "LUIGI_CONFIG_PATH=config/local.cfg luigi --module pipeline IngestMonth --service yellow --month 2021-01 --local-scheduler",
    "luigi --module pipeline IngestMonth --service yellow --month 2023-03 --source-kind tlc --local-scheduler",
    "luigi --module pipeline IngestMonth --service yellow --month 2009-01 --source-kind tlc --local-scheduler",
    "python -m pipeline.report --services yellow,green,zones --first 2019-01 --last 2021-07 --verify --png data/coverage.png",
]
# The README's pipeline commands, each of which also runs as written with
# LUIGI_CONFIG_PATH=config/samples.cfg exported and nothing swapped: the samples hold one month of
# each service, so the README's backfill starts at yellow's one month.
README_ON_SAMPLES = [
    "luigi --module pipeline IngestMonth --service yellow --month 2021-01 --local-scheduler",
    "luigi --module pipeline IngestZones --local-scheduler",
    "luigi --module pipeline IngestRange --services yellow,zones --first 2021-01 --last 2021-07 --local-scheduler",
    "luigi --module pipeline Reingest --services yellow --first 2021-01 --last 2021-01 --local-scheduler",
]
SAMPLES = [
    "LUIGI_CONFIG_PATH=config/samples.cfg luigi --module pipeline IngestMonth --service yellow --month 2021-01 --local-scheduler",
    "python -c \"import duckdb; print(duckdb.connect('data/samples/warehouse.duckdb', read_only=True).sql('SELECT month, "
    "count(*), round(avg(total_amount), 2) FROM yellow_tripdata GROUP BY month ORDER BY month'))\"",
    "LUIGI_CONFIG_PATH=config/samples.cfg luigi --module pipeline IngestZones --local-scheduler",
]
POSTGRES = [
    "LUIGI_CONFIG_PATH=config/postgres.cfg luigi --module pipeline IngestMonth --service yellow --month 2021-01 --local-scheduler",
    "LUIGI_CONFIG_PATH=config/postgres.cfg:config/local.cfg luigi --module pipeline IngestZones --local-scheduler",
]
GCP = [
    "LUIGI_CONFIG_PATH=config/gcp.cfg luigi --module pipeline IngestMonth --service yellow --month 2021-01 --local-scheduler",
]
LUIGID = [
    "mkdir -p data/luigid && LUIGI_CONFIG_PATH=config/luigid.cfg python -m pipeline.luigid "
    "--address 127.0.0.1 --port 8082 --logdir data/luigid",
    "luigi --module pipeline IngestMonth --service yellow --month 2021-01 --scheduler-host localhost",
    "cd $REPO && mkdir -p data/logs && LUIGI_CONFIG_PATH=config/cron.cfg .venv/bin/luigi --module pipeline IngestRecent "
    '>> data/logs/cron.log 2>&1 || echo "nyc-tlc-luigi: IngestRecent exited $?"',
]
BENCH_HELP = [
    "python bench/zone_lookup.py",
    "python bench/backfill_decision.py",
    "python bench/whole_history.py",
    "python bench/projection.py",
    "python bench/parquet_step.py",
    "python bench/parquet_step.py --rows 7667792",
    "python bench/parquet_step.py --source tlc --rows 7667792",
    "python bench/parquet_step.py --source tlc --service fhvhv --rows 20000000",
    "python bench/postgres_load.py",
    "python bench/postgres_load.py --rows 7667792 --skip pandas",
    "python bench/postgres_parallel.py --connections 1,2,4 --repeat 3",
    "python bench/fork_stress.py --rounds 3 --workers 4",
]
NOT_RUN = {
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]'": ".ci/run runs the README's two commands as written",
    ".venv/bin/pytest": ".ci/run runs the README's two commands as written",
    ". .venv/bin/activate": "the test puts the venv's commands first on PATH, which is what it does",
    "export PGPASSWORD=root": "the test's server has a password of its own, given in PGPASSWORD the same way",
    "psql -c 'SELECT source_month, count(*), avg(total_amount) FROM yellow_tripdata GROUP BY 1'": (
        "a client of the user's own server; the Postgres tests read the tables with psycopg2"
    ),
    "gcloud auth application-default login": "needs a Google account; the GCS tests use the emulators' credentials",
    "export GOOGLE_APPLICATION_CREDENTIALS=/path/to/service-account.json": "needs a Google service account",
    "pip install -e '.[scheduler]'": "the test extra already installs what the scheduler extra adds",
    ".venv/bin/ruff check .": ".ci/run runs it before the tests, as written",
    "luigi --module pipeline IngestRange --services yellow,green,fhv,fhvhv,zones --first 2009-01 --last 2024-05 --source-kind tlc": (
        "the whole history: bench/whole_history.py runs it, through a real luigid, on a mirror of every file the TLC lists"
    ),
    ".venv/bin/ruff format --check .": ".ci/run runs it before the tests, as written",
    ".venv/bin/mypy": ".ci/run runs it after ruff, as written",
    "HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_content_trust.py tests/test_source_trust.py tests/test_warehouse_trust.py "
    "tests/test_flow_trust.py": "the same tests as the README's test command, with more generated cases",
    **{command: "a benchmark takes minutes; each one's --help is run here" for command in BENCH_HELP},
    **dict.fromkeys(
        [
            "docker build -t REGION-docker.pkg.dev/YOUR-PROJECT/nyc-tlc/nyc-tlc-luigi:0.1.0 .",
            "docker push REGION-docker.pkg.dev/YOUR-PROJECT/nyc-tlc/nyc-tlc-luigi:0.1.0",
            "gcloud iam service-accounts add-iam-policy-binding tlc-worker@YOUR-PROJECT.iam.gserviceaccount.com --role "
            'roles/iam.workloadIdentityUser --member "serviceAccount:YOUR-PROJECT.svc.id.goog[nyc-tlc/tlc-worker]"',
            "kubectl apply -f deploy/kubernetes/namespace.yaml",
            "kubectl create secret generic tlc-postgres --namespace nyc-tlc --from-file=password=secrets/postgres-password.txt",
            "kubectl create configmap tlc-config --namespace nyc-tlc --from-file=config/",
            "kubectl apply -k deploy/kubernetes",
            "kubectl port-forward --namespace nyc-tlc service/luigid 8082:8082",
            "kubectl wait --namespace nyc-tlc --for=condition=complete job/tlc-backfill --timeout=3h",
            "kubectl create configmap tlc-config --namespace nyc-tlc --from-file=config/ --dry-run=client -o yaml | kubectl apply -f -",
        ],
        "needs a registry, a Kubernetes cluster and a Google project; tests/test_kubernetes.py validates the manifests offline, "
        "checks that these name the Secret, ConfigMap and folder the manifests use, and starts luigid as its pod does",
    ),
    'curl -G http://127.0.0.1:8082/api/update_resource --data-urlencode \'data={"resource": "postgres", "amount": 4}\'': (
        "tests/test_kubernetes.py makes the same call to luigid started as its pod starts it"
    ),
}
COMMAND = re.compile(
    r"((?:[A-Z_]+=\S+ )*(?:luigi|luigid|python3?|mkdir|cd|\.venv/bin/\S+|\.|export|psql|gcloud|pip|kubectl|docker|curl)(?: .*)?)$"
)
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
INSTALL, TESTS = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]'", ".venv/bin/pytest"


def without_comment(command: str) -> str:
    return re.split(r"\s{2,}#", command)[0].strip()


def commands_in(page: Path) -> set[str]:
    """The shell commands in a markdown page's code blocks (indented by four spaces), without
    their trailing comments."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("    ") and not line.startswith("     ") and (match := COMMAND.match(line[4:])):
            found.add(without_comment(match[1]))
    return found


def commands_in_docs() -> set[str]:
    """The shell commands in the README's and the docs pages' code blocks, in the profiles'
    usage comments and in the crontab."""
    found = [command for page in (README, *PAGES) for command in commands_in(page)]
    for path in [*(ROOT / "config").glob("*.cfg"), ROOT / "config" / "crontab"]:
        for line in path.read_text().splitlines():
            text = line.removeprefix("#   ") if line.startswith("#   ") else line.partition("  ")[2] if line[:1].isdigit() else ""
            if match := COMMAND.match(text):
                found.append(match[1])
    return {without_comment(command) for command in found}


def test_the_docs_name_exactly_the_commands_run_here_or_listed_as_not_run():
    here = {*LOCAL, *README_ON_SAMPLES, *SAMPLES, *POSTGRES, *GCP, *LUIGID, *NOT_RUN}
    assert commands_in_docs() == here


def test_every_readme_command_runs_on_the_samples_profile_or_is_listed_as_not_run():
    on_samples = {*README_ON_SAMPLES, *SAMPLES, *LUIGID[:2]}  # luigid and its worker: the luigid test

    assert commands_in(README) - set(NOT_RUN) <= on_samples


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    first = "\n".join(lines[:60])

    assert len(lines) <= 300
    assert INSTALL in first and f"    {TESTS} " in first and SAMPLES[0] in first and SAMPLES[1] in first


def test_ci_runs_the_readme_install_and_test_commands_as_written():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()

    assert INSTALL in ci and TESTS in ci and {INSTALL, TESTS} <= commands_in(README)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = (line.lstrip("#").strip() for line in page.read_text().splitlines() if re.match(r"#{1,6} ", line))
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: page.name)
def test_every_link_to_a_file_resolves_to_it_and_its_heading(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), f"{page.name}: {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: page.name)
def test_no_page_keeps_a_dated_remeasurement(page):
    """A figure in the docs is current or it goes (bench/HISTORY.md keeps the earlier ones)."""
    stale = re.compile(r"measured again\b|earlier the same day|in a later session|earlier sessions?\b", re.IGNORECASE)

    assert not [line for line in page.read_text().splitlines() if stale.search(line)]


@pytest.fixture
def project(tmp_path, mirror):
    """A project folder of its own, a venv-like bin/ whose `luigi` appends the test's profile,
    and the file:// mirror that profile points at (the releases' and the TLC's layouts)."""
    home = tmp_path / "project"
    home.mkdir()
    shutil.copy(ROOT / "luigi.cfg", home)
    for folder in ("config", "samples"):
        shutil.copytree(ROOT / folder, home / folder)
    source = tmp_path / "mirror"
    for tree in ("course", "releases", "tlc"):  # the real samples over the course's months
        shutil.copytree(mirror / tree, source, dirs_exist_ok=True)
    bin_ = home / ".venv" / "bin"
    bin_.mkdir(parents=True)
    for name in ("python", "luigid"):
        (bin_ / name).write_text(f'#!/bin/sh\nexec "{VENV_BIN / name}" "$@"\n')
    (bin_ / "luigi").write_text(
        "#!/bin/sh\n# the command as written, with the test's servers named by one more profile\n"
        'LUIGI_CONFIG_PATH="${LUIGI_CONFIG_PATH:+$LUIGI_CONFIG_PATH:}$TEST_PROFILE" '
        f'exec "{VENV_BIN / "luigi"}" "$@"\n'
    )
    for script in bin_.iterdir():
        script.chmod(0o755)
    return {"home": home, "source": source, "profile": tmp_path / "test-servers.cfg"}


def run_as_written(project: dict, command: str, settings: dict | None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``command`` in bash in the project folder; ``settings`` ({section: {key: value}}) make the
    test's profile (None: no profile, the command's own settings only)."""
    if settings is not None:
        project["profile"].write_text(
            "".join(f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items()) for section, keys in settings.items())
        )
    home = project["home"]
    outer = {key: value for key, value in os.environ.items() if key != "LUIGI_CONFIG_PATH"}  # only the command's own
    env = {
        **outer,
        "NYC_TLC_HOME": str(home),
        "PATH": f"{home / '.venv' / 'bin'}:{os.environ['PATH']}",
        "TEST_PROFILE": str(project["profile"]) if settings is not None else "",
        **(env or {}),
    }
    return subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True, text=True, timeout=300)


def mirror_source(project: dict) -> dict:
    return {"source": {"base_url": project["source"].as_uri(), "attempts": "2", "backoff": "0.05"}}


def ok(out: subprocess.CompletedProcess, command: str) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
    return out


def test_the_local_commands(project, mirror_files):
    settings = mirror_source(project)

    outs = {command: ok(run_as_written(project, command, settings), command) for command in LOCAL}

    home = project["home"]
    yellow_rows = data_rows(mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"])
    query = outs[LOCAL[3]].stdout
    assert "2021-01" in query and str(yellow_rows) in query and "2019-03" in query  # the backfill's months
    with duckdb.connect(str(home / "data" / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT month) FROM green_tripdata").fetchone()[0] == 31
        assert con.execute("SELECT count(*) FROM taxi_zone_lookup").fetchone()[0] == 265
    assert "yellow 2021-01: downloading" in outs[LOCAL[4]].stderr  # Reingest fetched it again
    assert "no month in the lake has changed at the source" in outs[LOCAL[5]].stderr
    assert "Did not run any tasks" in outs[LOCAL[7]].stderr  # local.cfg over a month already done
    assert (home / "data" / "lake" / "yellow" / "month=2023-03").is_dir()
    assert (home / "data" / "lake" / "yellow" / "month=2009-01").is_dir() and (home / "data" / "lake" / "zone_shapes").is_dir()
    assert "63 month(s): 63 ok, 0 missing, 0 differs, 0 nowhere" in outs[LOCAL[10]].stdout  # 31 x 2 and the zones
    assert (home / "data" / "coverage.png").read_bytes()[:4] == b"\x89PNG"


def test_the_samples_commands_need_nothing_swapped(project):
    outs = {command: ok(run_as_written(project, command, None), command) for command in SAMPLES}

    assert "2021-01" in outs[SAMPLES[1]].stdout and "22792" in outs[SAMPLES[1]].stdout
    assert (project["home"] / "data" / "samples" / "lake" / "zones" / "taxi_zone_lookup.parquet").is_file()
    assert not (project["home"] / "data" / "lake").exists()  # apart from real data


def test_the_readme_commands_on_the_samples_profile_alone(project):
    samples = {"LUIGI_CONFIG_PATH": "config/samples.cfg"}  # as `export LUIGI_CONFIG_PATH=config/samples.cfg`

    outs = {command: ok(run_as_written(project, command, None, samples), command) for command in README_ON_SAMPLES}

    assert "yellow 2021-02..2021-07: not published at the source yet" in outs[README_ON_SAMPLES[2]].stderr
    assert "yellow 2021-01: downloading" in outs[README_ON_SAMPLES[3]].stderr  # Reingest fetched it again
    with duckdb.connect(str(project["home"] / "data" / "samples" / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM yellow_tripdata").fetchone()[0] == 22792
        assert con.execute("SELECT count(*) FROM taxi_zone_lookup").fetchone()[0] == 265
    assert not (project["home"] / "data" / "lake").exists()  # nothing went to the real data's place


def test_the_postgres_commands(project, pg, mirror_files):
    server = pg.server
    settings = {
        **mirror_source(project),
        "postgres": {
            "host": server["host"],
            "port": server["port"],
            "user": server["user"],
            "database": server["database"],
            "schema": pg.schema,
        },
    }

    for command in POSTGRES:
        ok(run_as_written(project, command, settings, {"PGPASSWORD": server["password"]}), command)

    assert pg.count("yellow_tripdata", "2021-01") == data_rows(mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"])
    assert pg.count("taxi_zone_lookup") == 265


def test_the_gcp_command(project, bigquery, gcs, gcs_server, mirror_files):
    from pipeline.warehouses.bigquery import client

    settings = {
        **mirror_source(project),
        "lake": {"root": gcs.lake},
        "gcs": {"project": "test"},
        "bigquery": {"project": "test", "dataset": "docs_gcp"},
    }
    env = {"STORAGE_EMULATOR_HOST": gcs_server["url"], "BIGQUERY_EMULATOR_HOST": bigquery.url}

    ok(run_as_written(project, GCP[0], settings, env), GCP[0])

    assert "lake/yellow/month=2021-01/yellow_tripdata_2021-01.parquet" in gcs.objects()
    luigi.task_register.Register.clear_instance_cache()  # settings as the fixture set them
    markers = client().list_rows("test.docs_gcp._ingested")  # the emulator, as the fixture points it
    assert [(row["service"], row["month"]) for row in markers] == [("yellow", "2021-01")]


def test_luigid_a_month_reported_to_it_and_the_crontab_line(project):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8082)) == 0:
            pytest.fail("port 8082, which the docs' luigid and cron profile use, is taken by another program")
    home = project["home"]
    env = {**os.environ, "PATH": f"{home / '.venv' / 'bin'}:{os.environ['PATH']}"}
    env.pop("LUIGI_CONFIG_PATH", None)
    # Its own process group, so that stopping it stops luigid and not only the shell.
    luigid = subprocess.Popen(
        ["bash", "-c", LUIGID[0]], cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_http("http://127.0.0.1:8082/api/task_list", luigid, 30, "luigid")
        settings = mirror_source(project)
        ok(run_as_written(project, LUIGID[1], None, {"LUIGI_CONFIG_PATH": "config/samples.cfg"}), LUIGID[1])  # the README's
        cron = run_as_written(project, LUIGID[2], settings, {"REPO": str(home)})
    finally:
        os.killpg(luigid.pid, signal.SIGTERM)
        luigid.wait(timeout=30)

    assert cron.returncode == 0 and cron.stdout == "", cron.stdout  # the || echo stays silent
    log = (home / "data" / "logs" / "cron.log").read_text()
    assert "not published at the source yet" in log and "This progress looks :)" in log
    assert (home / "data" / "luigid" / "task-history.db").is_file()


@pytest.mark.parametrize("command", sorted({c.split(" --")[0] for c in BENCH_HELP}))
def test_each_benchmark_answers_help_without_running(command):
    out = subprocess.run([sys.executable, *command.split()[1:], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert out.returncode == 0 and out.stdout.startswith("usage: ")


def test_the_shipped_samples_are_the_real_samples_bytes(mirror_files):
    import gzip

    shipped = {str(p.relative_to(ROOT / "samples")): p.read_bytes() for p in (ROOT / "samples").rglob("*") if p.suffix in (".gz", ".csv")}

    assert set(shipped) <= set(mirror_files) and len(shipped) == 5
    for rel, content in shipped.items():  # the tests' mirror is built from tests/data/tlc (SOURCES.md)
        assert (gzip.decompress(content) if rel.endswith(".gz") else content) == mirror_files[rel], rel
