"""Trust in the source, by class (issue 26 #5, #6, #12, #13, #17; issue 27 item 3): each with its
invariant, the concrete case that broke it, and generated cases against the real HTTP server (and
a real luigid where the scheduler's copy of an error matters)."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pipeline import Download, IngestZones, ToParquet, catalog, download, settings
from pipeline.download import CutShort, SourceError, TooBig, TooLong

from conftest import ROOT, cli, configured, set_source
from mirror import month
from servers import free_port

DATA = ROOT / "tests" / "data" / "tlc"
LOOKUPS = ("taxi_zone_lookup.csv", "taxi+_zone_lookup.2024-07.csv")


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


# --- Done means proven whole: a text file sent without a length ends in its line end (#5) -----


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_the_real_zone_lookups_end_in_their_line_end(lookup):
    """The rule's premise: the text files the TLC publishes, the zone lookups, end in CRLF (so
    do its metadata files, and every sample that holds whole rows but yellow 2020-07's, which
    someone saved in an editor: tests/data/tlc/SOURCES.md)."""
    assert (DATA / lookup).read_bytes().endswith(b"\r\n")


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_a_zone_lookup_cut_at_any_byte_of_its_last_rows_is_refused_with_nothing_done(workspace, mirror, http_server, lookup):
    """Every cut from the start of the third-last row to the last byte, served with no
    Content-Length: refused, nothing marked done, nothing left in staging."""
    body = (DATA / lookup).read_bytes()
    folder = f"lookup-{LOOKUPS.index(lookup)}"
    (mirror / "releases" / folder / "misc").mkdir(parents=True, exist_ok=True)
    (mirror / "releases" / folder / "misc" / "taxi_zone_lookup.csv").write_bytes(body)
    third_last = body.rstrip(b"\r\n").rsplit(b"\n", 3)[0]
    refused = 0
    with configured({("source", "attempts"): "1"}):
        for cut in range(len(third_last) + 1, len(body)):
            set_source(f"{http_server}/cutat/{cut}/{folder}")
            task = Download(service="zones")
            with pytest.raises((SourceError, catalog.SchemaMismatch)):
                task.run()
            assert not task.complete(), cut
            refused += 1
        assert files_under(workspace / "staging") == []
        set_source(f"{http_server}/cutat/{len(body)}/{folder}")  # the whole file, still with no length
        Download(service="zones").run()
    assert refused == len(body) - len(third_last) - 1 > 90  # three rows of about 35 bytes


def test_a_zone_lookup_cut_inside_its_last_value_never_reaches_the_lake(workspace, run, http_server, mirror_files):
    """The case reported: cut inside the last row's "N/A", the last row was stored as 'N'."""
    body = mirror_files["misc/taxi_zone_lookup.csv"]
    cut = body.rindex(b'"N/A"') + 2  # ... ,"N
    set_source(f"{http_server}/cutat/{cut}")

    error = run(IngestZones()).failures["Download"]

    assert isinstance(error, CutShort) and error.size == cut and error.announced == 0
    assert str(error) == (
        f"zones ({http_server}/cutat/{cut}/misc/taxi_zone_lookup.csv): the transfer ended inside a line after {cut:,} bytes, "
        "and the server sent no Content-Length that would tell a whole file: cut short (gave up after 3 tries)"
    )
    assert not IngestZones().complete()
    assert files_under(workspace / "staging") == [] and files_under(workspace / "lake") == []


# --- Every wait and every input is bounded (#6, issue 27 item 3) --------------------------------


GREEN = "green/green_tripdata_2019-01.csv.gz"


@given(
    rate=st.integers(50_000, 2_000_000),
    deadline=st.floats(0.3, 1.0),
    max_kib=st.integers(16, 1024),
    announced=st.booleans(),
)
def test_an_endless_or_oversized_body_ends_within_the_deadline_naming_the_setting(
    workspace, http_server, rate, deadline, max_kib, announced
):
    size = max_kib * 1024 * 2 if announced else 0  # announced: twice the cap, in its Content-Length
    limits = {
        ("source", "deadline"): str(deadline),
        ("source", "max_size_mib"): str(max_kib / 1024),
        ("source", "timeout"): "1",
        ("source", "min_rate_kib"): "1",
        ("source", "attempts"): "2",
    }
    started = time.monotonic()
    with configured(limits), pytest.raises((TooBig, TooLong)) as error:
        download.fetch_file(f"{http_server}/flood/{rate}/{size}/{GREEN}", str(workspace / "out"), "here")
    took = time.monotonic() - started

    assert took < deadline + 1.5  # a read waits at most [source] timeout (1 s) past the deadline
    fills = max_kib * 1024 / rate  # seconds until the cap is reached
    if announced:
        assert isinstance(error.value, TooBig) and error.value.announced and error.value.size == size
        assert str(error.value).startswith(f"here: {size:,} bytes announced: over [source] max_size_mib")
    elif fills < deadline / 2:
        assert isinstance(error.value, TooBig) and not error.value.announced
    elif fills > deadline * 2:
        assert isinstance(error.value, TooLong) and error.value.deadline == deadline
    if isinstance(error.value, TooBig):
        assert str(error.value).endswith("if the source really publishes a file this big, raise it (--source-max-size-mib)")
    else:
        assert str(error.value).endswith(f"over [source] deadline ({deadline:g} s); for a slow link, raise it (--source-deadline)")


def test_an_endless_trickle_just_above_the_minimum_rate_ends_at_the_deadline(workspace, run, http_server, caplog, monkeypatch):
    """The case reported: 12 KB/s against min_rate_kib 8 never ended. Meanwhile it talks."""
    monkeypatch.setattr(download, "TALK_SECONDS", 0.3)
    set_source(f"{http_server}/flood/12000/0")
    started = time.monotonic()
    with configured({("source", "deadline"): "2", ("source", "min_rate_kib"): "8", ("source", "timeout"): "1"}):
        with caplog.at_level(logging.INFO, logger="pipeline.download"):
            error = run(Download(service="green", month=month("2019-01"))).failures["Download"]

    assert time.monotonic() - started < 4
    assert isinstance(error, TooLong) and 20_000 < error.received < 40_000
    assert str(error).startswith(f"green 2019-01 ({http_server}/flood/12000/0/{GREEN}): not done after 2 s (")
    talk = [r.getMessage() for r in caplog.records if "still downloading" in r.getMessage()]
    assert len(talk) >= 4 and talk[-1].endswith("(it gives up after [source] deadline, 2 s)")
    assert "bytes so far" in talk[-1] and " 0 bytes so far" not in talk[-1]
    assert not Download(service="green", month=month("2019-01")).complete()
    assert files_under(workspace / "staging") == []


def test_a_source_that_never_answers_talks_then_names_the_setting_to_wait_longer(workspace, run, http_server, caplog, monkeypatch):
    monkeypatch.setattr(download, "TALK_SECONDS", 0.3)
    set_source(f"{http_server}/silent")
    with configured({("source", "timeout"): "1", ("source", "attempts"): "2"}):
        with caplog.at_level(logging.INFO, logger="pipeline.download"):
            error = run(Download(service="green", month=month("2019-01"))).failures["Download"]

    assert str(error).startswith(f"green 2019-01 ({http_server}/silent/{GREEN}): ReadTimeout: ")
    assert str(error).endswith(
        "no answer within [source] timeout (1 s); to wait longer, raise it (--source-timeout) (gave up after 2 tries)"
    )
    talk = [r.getMessage() for r in caplog.records if "still downloading: 0 bytes so far" in r.getMessage()]
    assert len(talk) >= 3


def test_by_default_a_dead_source_ends_a_run_in_about_two_minutes():
    """Issue 27: a source that accepts and never answers took 331 s (5 tries of 60 s); each
    try waits [source] timeout, and the backoff doubles between them."""
    cfg = settings.source()
    dead = cfg.attempts * cfg.timeout + sum(cfg.backoff * 2**i for i in range(cfg.attempts - 1))
    assert 90 <= dead <= 150
    assert download.TALK_SECONDS <= 30
    assert cfg.deadline >= 3600 and cfg.max_size_mib * 2**20 >= 6 * 583 * 2**20  # the biggest month, 611 MB, over a slow link


def test_the_published_probe_never_reads_an_endless_redirect_body(workspace, http_server, mirror):
    """requests reads a redirect's body to its end before it follows it: an endless one hung."""
    answer: dict = {}
    probe = threading.Thread(
        target=lambda: answer.update(found=download.published(f"{http_server}/redirect302/20000/{GREEN}")), daemon=True
    )
    probe.start()
    probe.join(10)
    assert not probe.is_alive(), "still reading the redirect's endless body"
    assert answer["found"]["size"] == str((mirror / "releases" / GREEN).stat().st_size)


def test_the_published_probe_is_bounded_by_the_deadline(workspace, http_server):
    started = time.monotonic()
    with configured({("source", "timeout"): "1", ("source", "attempts"): "10", ("source", "deadline"): "1.5"}):
        with pytest.raises(TooLong) as error:
            download.published(f"{http_server}/silent/{GREEN}")
    assert time.monotonic() - started < 4  # ten tries of 1 s and their backoff would take 10 s and more
    assert "over [source] deadline (1.5 s)" in str(error.value)


# --- Nothing outside its roots: an unknown lake scheme is refused before anything runs (#12) ---


@given(
    scheme=st.from_regex(r"[A-Za-z][A-Za-z0-9+.-]{0,11}", fullmatch=True).filter(lambda s: s not in settings.BUCKET_SCHEMES),
    rest=st.text(max_size=20),
)
def test_a_lake_root_with_any_other_scheme_is_refused_by_name(scheme, rest):
    value = f"{scheme}://{rest}"
    why = settings.lake_root_problem(value)
    assert why and f"{scheme}://" in why or scheme.lower() == "file"
    with configured({("lake", "root"): value}), pytest.raises(settings.LakeRootError) as error:
        settings.lake()
    assert str(error.value).startswith(f"[lake] root {value!r}: ") and error.value.value == value


@given(bucket=st.from_regex(r"[a-z0-9][a-z0-9._-]{2,20}", fullmatch=True), prefix=st.from_regex(r"[a-z0-9/_-]{0,20}", fullmatch=True))
def test_a_gs_lake_and_a_local_folder_are_accepted(bucket, prefix):
    assert settings.lake_root_problem(f"gs://{bucket}/{prefix}") is None
    assert settings.lake_root_problem(f"data/{bucket}/{prefix}") is None


@pytest.mark.parametrize(
    "how,value,message",
    [
        (
            "flag",
            "hdfs://nn/lake",
            "hdfs:// is not a lake this pipeline writes; a lake is a local folder, gs://bucket/prefix, s3://bucket/prefix or az://container/prefix",
        ),
        (
            "profile",
            "abfss://container@account/lake",
            "abfss:// is not a lake this pipeline writes; a lake is a local folder, gs://bucket/prefix, s3://bucket/prefix or az://container/prefix",
        ),
        ("flag", "file:///tmp/lake", "a local lake is given as its folder (/tmp/lake), not as a file:// URL"),
        # A replica lake ([lake] replicas), one of several: each is checked as the root is.
        (
            "replicas flag",
            "hdfs://nn/lake",
            "hdfs:// is not a lake this pipeline writes; a lake is a local folder, gs://bucket/prefix, s3://bucket/prefix or az://container/prefix",
        ),
        ("replicas profile", "gs:///lake", "a gs:// lake needs its bucket: gs://bucket/prefix"),
    ],
)
def test_an_unknown_lake_scheme_ends_the_command_in_one_line_creating_nothing(tmp_path, how, value, message):
    args = ["IngestZones", "--local-scheduler", "--ingest-staging", str(tmp_path / "staging")]
    env = {}
    setting, value_set = ("replicas", f"replica,{value}") if how.startswith("replicas") else ("root", value)
    if how.endswith("flag"):
        args += [f"--lake-{setting}", value_set]
    else:
        (tmp_path / "lake.cfg").write_text(f"[lake]\n{setting} = {value_set}\n")
        env["LUIGI_CONFIG_PATH"] = str(tmp_path / "lake.cfg")

    out = cli(*args, env=env, cwd=tmp_path)

    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert lines[-1].endswith(f"{value!r}: {message}"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert files_under(tmp_path) == ["lake.cfg"] if how.endswith("profile") else files_under(tmp_path) == []


# --- One scrubber for secrets (#13) ------------------------------------------------------------

SPECIAL = "@:/?#%&=+ !$'()*,;[]~"
secret = st.text(alphabet=st.sampled_from("abcXYZ019" + SPECIAL), min_size=3, max_size=10).map(lambda s: f"Qz{s}7k")


def _base(http_server: str, failing: str, credentials: str) -> tuple[str, str, str]:
    """The base URL with ``credentials`` for a way of failing, and the month asked for."""
    host = http_server.removeprefix("http://")
    return {
        "bad-port": (f"http://{credentials}@127.0.0.1:99999/releases", "2019-01"),
        "no-host": (f"http://{credentials}@/releases", "2019-01"),
        "not-published": (f"http://{credentials}@{host}/releases", "2031-01"),
        "server-error": (f"http://{credentials}@{host}/down", "2019-01"),
        "refused": (f"http://{credentials}@127.0.0.1:{free_port()}/releases", "2019-01"),
    }[failing]


def _explanations(scheduler: str) -> list[str]:
    def api(name: str, data: dict) -> dict:
        query = urllib.parse.quote(json.dumps(data))
        with urllib.request.urlopen(f"{scheduler}/api/{name}?data={query}", timeout=10) as answer:
            return json.load(answer)["response"]

    failed = api("task_list", {"status": "FAILED", "upstream_status": ""})
    return [api("fetch_error", {"task_id": task_id})["error"] for task_id in failed]


@example(user="Qz u@s:r/7k", password="Qz%p#a?ss&=7k", token="", token_alone=False, failing="bad-port")
@example(user="", password="", token="Qz[t]o~k'en!7k", token_alone=True, failing="no-host")
@hypothesis_settings(max_examples=5)  # each case is a luigi command of its own (about 3 s), against its own luigid
@given(
    user=secret,
    password=secret,
    token=secret,
    token_alone=st.booleans(),
    failing=st.sampled_from(["bad-port", "no-host", "not-published", "server-error", "refused"]),
)
def test_no_secret_of_the_base_url_leaves_a_failed_download_by_any_way(
    tmp_path_factory, http_server, user, password, token, token_alone, failing
):
    from servers import luigid

    work = tmp_path_factory.mktemp("secret")
    q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731  (as a user writes them in a URL)
    credentials = q(token) if token_alone else f"{q(user)}:{q(password)}"
    base, asked = _base(http_server, failing, credentials)
    (work / "luigid").mkdir()
    with luigid(work / "luigid", work / "luigid") as scheduler:
        out = cli(
            "Download",
            "--service",
            "green",
            "--month",
            asked,
            "--scheduler-host",
            "127.0.0.1",
            "--scheduler-port",
            str(scheduler["port"]),
            "--source-base-url",
            base,
            "--source-attempts",
            "2",
            "--source-backoff",
            "0.05",
            "--source-timeout",
            "5",
            "--lake-root",
            str(work / "lake"),
            "--ingest-staging",
            str(work / "staging"),
            "--duckdb-path",
            str(work / "warehouse.duckdb"),
        )
        explanations = _explanations(scheduler["url"])

    assert out.returncode == 30, out.stderr[-3000:]
    assert len(explanations) == 1 and "Runtime error" in explanations[0]
    records = [p.read_bytes().decode("latin-1") for p in work.rglob("*") if p.is_file() and "luigid" not in p.parts]
    secrets = [token] if token_alone else [user, password]
    for text in [out.stdout, out.stderr, *explanations, *records]:
        for s in secrets:
            assert s not in text and q(s) not in text, (failing, s, text[-3000:])


@pytest.mark.parametrize(
    "text,shown",
    [
        (
            "Failed to parse: http://tlc-user:s3cret-Tok3n@127.0.0.1:99999/releases/x",
            "Failed to parse: http://***@127.0.0.1:99999/releases/x",
        ),
        ("Invalid URL 'http://a:p%40ss@:80/x': No host supplied", "Invalid URL 'http://***@:80/x': No host supplied"),
        ("nothing secret at http://example.org/a?b=c", "nothing secret at http://example.org/a?b=c"),
    ],
)
def test_any_url_user_part_is_scrubbed_from_any_text(text, shown):
    from pipeline.redaction import scrub

    assert scrub(text) == shown


def test_a_configured_secret_is_scrubbed_from_any_log_line_and_traceback(workspace, monkeypatch, caplog):
    """Whatever logs it, at any level, in its message or its traceback."""
    monkeypatch.setenv("PGPASSWORD", "pg-Pa55word")
    set_source("http://tlc-user:s3cret%%2FTok3n@127.0.0.1:1/releases?sig=Signature123")  # %% as in a settings file
    log = logging.getLogger("some.library")
    with caplog.at_level(logging.INFO):
        log.info("connecting with %s and %s", "s3cret/Tok3n", "pg-Pa55word")
        try:
            raise RuntimeError("auth failed for tlc-user with s3cret%2FTok3n, Signature123")
        except RuntimeError:
            log.exception("it failed")
    text = caplog.text
    assert "connecting with *** and ***" in text and "it failed" in text and "RuntimeError: auth failed for *** with ***, ***" in text
    for s in ("s3cret", "Tok3n", "pg-Pa55word", "Signature123", "tlc-user"):
        assert s not in text


# --- A BOM, CRLF, LF or CR-only: the same rows (#17) -------------------------------------------

SAMPLES = {
    "green_tripdata_2019-01.head.csv": "2019-01",
    "fhvhv_tripdata_2021-06.head.csv": "2021-06",
    "yellow_tripdata_2020-07.head.csv": "2020-07",
}


def _converted(workspace: Path, mirror: Path, http_server: str, sample: str, folder: str, content: bytes):
    """Download and convert ``content`` as the month of ``sample``, served gzipped from the mirror:
    the header the Download recorded, and the rows ToParquet wrote (without its footer's record)."""
    service, asked = sample.split("_")[0], month(SAMPLES[sample])
    name = catalog.RELEASES.path(catalog.SERVICES[service], asked)
    (mirror / "releases" / folder / name).parent.mkdir(parents=True, exist_ok=True)
    (mirror / "releases" / folder / name).write_bytes(gzip.compress(content))
    set_source(f"{http_server}/releases/{folder}")
    for done in (workspace / "staging").rglob("*"):
        if done.is_file():
            done.unlink()
    fetched, converted = Download(service=service, month=asked), ToParquet(service=service, month=asked)
    fetched.run()
    converted.run()
    header = json.loads(Path(fetched.output()["meta"].path).read_text())["header"]
    return header, pq.read_table(converted.output().path).replace_schema_metadata(None)


_AS_PUBLISHED: dict = {}


@given(
    sample=st.sampled_from(sorted(SAMPLES)), bom=st.booleans(), line_end=st.sampled_from([b"\r\n", b"\n", b"\r"]), last_end=st.booleans()
)
def test_a_bom_and_every_line_end_convert_to_the_same_rows(workspace, mirror, http_server, sample, bom, line_end, last_end):
    """A real sample, with or without a BOM, its lines ended in CRLF, LF or CR alone, the last
    one or not: the same header recorded and the same rows written as the sample as published."""
    lf = (DATA / sample).read_bytes().replace(b"\r\n", b"\n").rstrip(b"\n") + b"\n"
    if sample not in _AS_PUBLISHED:
        _AS_PUBLISHED[sample] = _converted(workspace, mirror, http_server, sample, f"lf-{sample}", lf)
    variant = (b"\xef\xbb\xbf" if bom else b"") + lf.replace(b"\n", line_end)
    variant = variant if last_end else variant.removesuffix(line_end)

    header, rows = _converted(workspace, mirror, http_server, sample, f"v-{sample}-{bom:d}{line_end.hex()}{last_end:d}", variant)

    assert header == _AS_PUBLISHED[sample][0] == lf.split(b"\n", 1)[0].decode()
    assert rows.num_rows == lf.count(b"\n") - 1 and rows.equals(_AS_PUBLISHED[sample][1])


def test_a_bom_before_the_header_is_accepted(workspace, run, http_server, mirror):
    """The case reported: refused as the unknown column '\\ufeffVendorID'."""
    lf = (DATA / "green_tripdata_2019-01.head.csv").read_bytes()
    header, rows = _converted(workspace, mirror, http_server, "green_tripdata_2019-01.head.csv", "bom", b"\xef\xbb\xbf" + lf)
    assert header.startswith("VendorID,") and rows.num_rows == lf.count(b"\n") - 1
