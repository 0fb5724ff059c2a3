"""Bad input gets a clear error and loses nothing: the step fails with a message that says what
and where, no output is left that looks complete, and a re-run against good input finishes."""

import os
import re
import signal
import time
from pathlib import Path

import pytest

from pipeline import Download, IngestMonth, ToParquet, catalog
from pipeline.convert import ConversionError
from pipeline.download import MonthNotPublished, SourceError

from conftest import cli, cli_popen, configured, set_source, workspace_flags
from mirror import month
from servers import MirrorHandler


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def assert_nothing_complete(workspace, *tasks):
    for task in tasks:
        assert not task.complete(), task
    assert files_under(workspace / "staging") == []  # no partial file left behind either
    assert files_under(workspace / "lake") == []


def test_unpublished_month_is_a_clear_404_not_retried(workspace, run, http_server):
    task = Download(service="yellow", month=month("2021-08"))
    MirrorHandler.hits.clear()
    result = run(task)
    assert MirrorHandler.hits == {"/releases/yellow/yellow_tripdata_2021-08.csv.gz": 1}  # asked once, with 3 tries allowed
    error = result.failures["Download"]
    assert isinstance(error, MonthNotPublished)
    assert str(error) == (f"yellow 2021-08 ({http_server}/releases/yellow/yellow_tripdata_2021-08.csv.gz): not published (HTTP 404)")
    assert_nothing_complete(workspace, task)


@pytest.mark.parametrize(
    "route,service,text,message",
    [
        ("html", "yellow", "2021-01", "got an HTML/XML page, not the data file"),
        # the first 24,610 bytes of the real green 2019-10 release asset, served whole with 200
        ("broken", "green", "2019-10", "truncated or corrupt gzip (Compressed file ended before the end-of-stream marker was reached)"),
        ("broken", "yellow", "2021-01", "header has column(s) the yellow catalog does not know: 'pickup_location_id'"),
        (
            "broken",
            "yellow",
            "2021-03",
            "header lacks required yellow column(s) VendorID, tpep_dropoff_datetime, "
            "passenger_count, trip_distance, RatecodeID, store_and_fwd_flag, PULocationID, DOLocationID, payment_type, "
            "fare_amount, extra, mta_tax, tip_amount, tolls_amount, total_amount",
        ),
        ("broken", "green", "2019-01", "0 data rows; a whole green file has at least 1, so this one is cut short or empty"),
        ("down", "green", "2019-01", "server error HTTP 503 (gave up after 3 tries)"),
        ("short", "yellow", "2021-01", "IncompleteRead"),
    ],
    ids=["html-page", "truncated-gzip", "changed-header", "missing-columns", "header-only", "server-down", "connection-dropped"],
)
def test_bad_download_fails_naming_month_and_url_and_leaves_nothing(workspace, run, http_server, route, service, text, message):
    set_source(f"{http_server}/{route}")
    url = f"{http_server}/{route}/{catalog.RELEASES.path(catalog.SERVICES[service], month(text))}"
    task = IngestMonth(service=service, month=month(text))
    error = run(task).failures["Download"]
    assert isinstance(error, (SourceError, catalog.SchemaMismatch))
    assert str(error).startswith(f"{service} {text} ({url}): ")
    assert message in str(error)
    assert_nothing_complete(workspace, task, Download(service=service, month=month(text)))


def test_a_download_that_trickles_fails_clearly_after_its_tries_instead_of_hanging(workspace, run, http_server):
    set_source(f"{http_server}/trickle")
    url = f"{http_server}/trickle/green/green_tripdata_2019-01.csv.gz"
    started = time.monotonic()
    with configured({("source", "timeout"): "1", ("source", "min_rate_kib"): "1"}):
        error = run(Download(service="green", month=month("2019-01"))).failures["Download"]

    assert time.monotonic() - started < 15  # the file would take 60 s at this pace, and 3 tries more
    assert re.fullmatch(
        rf"green 2019-01 \({re.escape(url)}\): too slow: \d+ bytes in the last 1 s, below "
        r"\[source\] min_rate_kib \(1 KiB/s\) \(gave up after 3 tries\)",
        str(error),
    ), str(error)
    assert files_under(workspace / "staging") == []


def test_a_valid_file_whose_first_chunk_is_shorter_than_its_magic_is_accepted(workspace, run, http_server):
    set_source(f"{http_server}/dribble")
    assert not run(IngestMonth(service="green", month=month("2019-01"))).failures


def test_zones_from_a_server_that_compresses_on_the_fly_arrive_as_published(workspace, run, http_server, mirror_files):
    from pipeline import IngestZones

    set_source(f"{http_server}/onthefly")
    assert not run(IngestZones()).failures
    raw = workspace / "staging" / "raw" / "zones" / "taxi_zone_lookup.csv"
    assert raw.read_bytes() == mirror_files["misc/taxi_zone_lookup.csv"]


def test_a_zone_lookup_cut_short_without_a_length_is_refused(workspace, run, http_server):
    from pipeline import IngestZones

    set_source(f"{http_server}/cut")
    error = run(IngestZones()).failures["Download"]
    assert str(error) == (
        f"zones ({http_server}/cut/misc/taxi_zone_lookup.csv): 262 data rows; a whole zones "
        "file has at least 265, so this one is cut short or empty"
    )
    assert not IngestZones().complete()
    assert files_under(workspace / "staging") == []


def test_a_redirect_loop_names_the_url(workspace, run, http_server):
    set_source(f"{http_server}/loop")
    error = run(Download(service="green", month=month("2019-01"))).failures["Download"]
    assert str(error).startswith(f"green 2019-01 ({http_server}/loop/green/green_tripdata_2019-01.csv.gz): too many redirects")


def test_no_tries_at_all_is_refused_as_a_setting(workspace, run):
    """Refused wherever the setting is first read: here before the step can even be scheduled (on
    the command line, before any task: tests/test_front_door.py)."""
    with configured({("source", "attempts"): "0"}):
        result = run(Download(service="green", month=month("2019-01")), broken_ok=True)
    (error,) = [e for _, e in result.broken]
    assert str(error) == "[source] attempts: 0 is below 1, the least it can be"
    assert not result.started


def test_server_errors_are_retried_then_succeed(workspace, run, http_server):
    set_source(f"{http_server}/flaky")
    result = run(Download(service="fhvhv", month=month("2021-06")))
    assert result.failures == {}
    assert Download(service="fhvhv", month=month("2021-06")).complete()


def test_fractional_integer_code_fails_conversion_naming_column_row_and_file(workspace, run, http_server):
    set_source(f"{http_server}/broken")
    task = ToParquet(service="yellow", month=month("2021-02"))
    error = run(task).failures["ToParquet"]
    assert isinstance(error, ConversionError)
    assert "yellow 2021-02 (" in str(error) and "yellow_tripdata_2021-02.csv.gz" in str(error)
    assert "column passenger_count, data row 2: value 1.5 is not a whole number that fits int64" in str(error)
    assert not task.complete()
    assert Download(service="yellow", month=month("2021-02")).complete()  # the download itself was fine
    assert files_under(workspace / "staging" / "parquet") == []


def test_killed_mid_download_leaves_nothing_complete_and_rerun_finishes(workspace, http_server):
    flags = workspace_flags(workspace, f"{http_server}/slow")
    raw_dir = workspace / "staging" / "raw" / "yellow"
    temp_area = workspace / "staging" / ".tmp"
    proc = cli_popen("Download", "--service", "yellow", "--month", "2021-01", *flags)
    try:
        deadline = time.monotonic() + 20
        while not any(p.stat().st_size > 0 for p in temp_area.glob("yellow_tripdata_2021-01.csv.gz.*")):
            assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert not Download(service="yellow", month=month("2021-01")).complete()
    assert files_under(raw_dir) == []
    (left,) = temp_area.glob("yellow_tripdata_2021-01.csv.gz.*")  # the killed run's partial file
    an_hour_ago = time.time() - 3600
    os.utime(left, (an_hour_ago, an_hour_ago))
    in_progress = temp_area / "green_tripdata_2019-01.csv.gz.1-0a0b0c0d"  # another run's, being written
    in_progress.write_bytes(b"partial")
    # What an earlier version left beside its output (luigi's own temporary names).
    legacy = raw_dir / "yellow_tripdata_2021-01.csv.gz-luigi-tmp-0000000001"
    raw_dir.mkdir(parents=True)
    legacy.write_bytes(b"partial")
    os.utime(legacy, (an_hour_ago, an_hour_ago))

    done = cli("IngestMonth", "--service", "yellow", "--month", "2021-01", *workspace_flags(workspace, f"{http_server}/releases"))
    assert done.returncode == 0, done.stderr
    assert Download(service="yellow", month=month("2021-01")).complete()
    assert IngestMonth(service="yellow", month=month("2021-01")).complete()
    assert not left.exists() and not legacy.exists() and in_progress.exists()  # stale ones swept, the live one left
    assert f"removed {left}, left by a run that was killed" in done.stderr
    assert files_under(raw_dir) == ["yellow_tripdata_2021-01.csv.gz", "yellow_tripdata_2021-01.csv.gz.json"]


def test_a_run_cut_between_the_data_file_and_its_record_finishes_on_the_next_run(workspace, run):
    task = Download(service="green", month=month("2019-01"))
    assert not run(task).failures
    record = task.output()["meta"]
    os.remove(record.path)  # the state a kill between Download's two renames leaves
    assert not task.complete()

    again = run(Download(service="green", month=month("2019-01")))

    assert not again.failures and task.complete()
    assert files_under(workspace / "staging") == ["raw/green/green_tripdata_2019-01.csv.gz", "raw/green/green_tripdata_2019-01.csv.gz.json"]


def lake_readers_rows(lake: Path, service: str) -> tuple[int, int]:
    """The rows a service's lake folder holds, as pyarrow's dataset and DuckDB's glob read it."""
    import duckdb
    import pyarrow.dataset as ds

    pyarrow_rows = ds.dataset(lake / service, partitioning="hive").count_rows()
    with duckdb.connect() as con:
        duck_rows = con.execute("SELECT count(*) FROM read_parquet(?, hive_partitioning = true)", [str(lake / service / "**")]).fetchone()[
            0
        ]
    return pyarrow_rows, duck_rows


def test_the_loser_of_a_race_to_the_same_lake_file_succeeds_and_readers_count_the_month_once(workspace, run):
    from pipeline import LakeFile

    assert not run(LakeFile(service="green", month=month("2019-01"))).failures
    rows = lake_readers_rows(workspace / "lake", "green")

    class LakeFileCheckedBeforeTheWinnerFinished(LakeFile):
        """Two overlapping commands both found the lake file missing; this one writes it when
        the other has already finished."""

        def complete(self):
            return False

    assert not run(LakeFileCheckedBeforeTheWinnerFinished(service="green", month=month("2019-01"))).failures

    assert lake_readers_rows(workspace / "lake", "green") == rows
    assert files_under(workspace / "lake" / "green") == ["month=2019-01/green_tripdata_2019-01.parquet"]


def test_what_a_killed_lake_copy_left_is_never_read_and_is_swept_by_the_next_run_in_that_lake(workspace, run):
    from pipeline import LakeFile

    assert not run(LakeFile(service="green", month=month("2019-01"))).failures
    rows = lake_readers_rows(workspace / "lake", "green")
    temp_area = workspace / "lake" / ".tmp"
    killed = temp_area / "green_tripdata_2019-10.parquet.4242-deadbeef"  # a copy cut midway
    killed.write_bytes((workspace / "lake" / "green" / "month=2019-01" / "green_tripdata_2019-01.parquet").read_bytes()[:999])
    an_hour_ago = time.time() - 3600
    os.utime(killed, (an_hour_ago, an_hour_ago))
    assert lake_readers_rows(workspace / "lake", "green") == rows  # not where readers look

    assert not run(LakeFile(service="yellow", month=month("2021-01"))).failures  # another month, another service

    assert not killed.exists()


def test_cli_failed_run_exits_non_zero_with_the_message(workspace, http_server):
    out = cli("IngestMonth", "--service", "yellow", "--month", "2021-08", *workspace_flags(workspace, f"{http_server}/releases"))
    assert out.returncode == 30  # [retcode] task_failed in luigi.cfg
    assert "yellow 2021-08 (" in out.stderr and "not published (HTTP 404)" in out.stderr


def test_cli_main_command_then_a_second_run_runs_nothing(workspace, http_server):
    import duckdb

    flags = workspace_flags(workspace, f"{http_server}/releases")
    first = cli("IngestMonth", "--service", "yellow", "--month", "2021-01", *flags)
    assert first.returncode == 0, first.stderr
    assert "yellow 2021-01: downloading" in first.stderr and "wrote 22,792 rows" in first.stderr
    with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM yellow_tripdata").fetchone()[0] == 22792
    second = cli("IngestMonth", "--service", "yellow", "--month", "2021-01", *flags)
    assert second.returncode == 0
    assert "Did not run any tasks" in second.stderr
    assert "1 complete ones were encountered" in second.stderr


def test_cli_help_lists_the_parameters_and_help_all_the_settings():
    out = cli("IngestMonth", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    # In the catalog's order, every run (luigi's own ChoiceParameter lists a set).
    assert "--service SERVICE The TLC trip service. Choices: yellow, green, fhv, fhvhv" in text
    assert "--month MONTH YYYY-MM: the month of the published file." in text
    out = cli("IngestMonth", "--help-all")
    assert out.returncode == 0
    for flag in ("--source-base-url", "--source-attempts", "--lake-root", "--duckdb-path", "--ingest-sinks"):
        assert flag in out.stdout


def test_credentials_in_the_base_url_are_never_logged_or_recorded(workspace, http_server):
    secret_base = http_server.replace("http://", "http://tlc-user:s3cret-Tok3n@") + "/releases"
    flags = workspace_flags(workspace, secret_base)

    done = cli("IngestMonth", "--service", "green", "--month", "2019-01", *flags)
    failed = cli("IngestMonth", "--service", "green", "--month", "2031-01", *flags)  # 404

    assert done.returncode == 0, done.stderr[-2000:]
    redacted = http_server.replace("http://", "http://***@")
    assert f"green 2019-01: downloading {redacted}/releases/green/green_tripdata_2019-01.csv.gz" in done.stderr
    assert failed.returncode == 30
    assert f"green 2031-01 ({redacted}/releases/green/green_tripdata_2031-01.csv.gz): not published (HTTP 404)" in failed.stderr
    written = [p for p in workspace.rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" for p in written) and any(p.suffix == ".parquet" for p in written)
    for text in [done.stdout, done.stderr, failed.stdout, failed.stderr] + [p.read_bytes().decode("latin-1") for p in written]:
        assert "s3cret-Tok3n" not in text and "tlc-user" not in text


def test_a_signed_query_string_is_redacted_and_the_file_still_recognised(workspace, run, http_server):
    from pipeline.download import fetch
    from pipeline.redaction import redact

    url = f"{http_server}/releases/green/green_tripdata_2019-01.csv.gz?X-Signature=abc123secret"
    assert redact(url) == f"{http_server}/releases/green/green_tripdata_2019-01.csv.gz?***"
    record = fetch(url, str(workspace / "green.csv.gz"), catalog.SERVICES["green"], "green 2019-01")
    assert record.url == redact(url)


def test_an_unreachable_source_says_how_to_use_a_mirror_or_the_samples(workspace, run):
    from servers import free_port

    set_source(f"http://127.0.0.1:{free_port()}/releases")  # nothing listens there

    error = run(Download(service="yellow", month=month("2021-01"))).failures["Download"]

    assert isinstance(error, SourceError) and str(error).startswith("yellow 2021-01 (http://127.0.0.1:")
    assert "ConnectionError" in str(error) and str(error).endswith(
        "Is the network up? A mirror is set with [source] base_url (--source-base-url); offline, "
        "LUIGI_CONFIG_PATH=config/samples.cfg runs on the samples the repo ships (gave up after 3 tries)"
    )


@pytest.mark.parametrize(
    "name,body,message",
    [
        # What CDNs and storage answer in place of a file, each way it starts.
        ("a.csv.gz", b"<!DOCTYPE html><html><body>Not Found</body></html>", "got an HTML/XML page"),
        ("a.csv.gz", b"\r\n  <html><head><title>403</title></head></html>", "got an HTML/XML page"),
        ("a.parquet", b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code></Error>', "got an HTML/XML page"),
        ("a.parquet", b"<head><title>502 Bad Gateway</title></head>", "got an HTML/XML page"),
        ("a.zip", b"<BODY>maintenance</BODY>", "got an HTML/XML page"),
        ("a.csv.gz", b"VendorID,tpep_pickup_datetime\r\n1,2021-01-01\r\n", "not a gzip file"),
        ("a.parquet", b"PK\x03\x04" + b"\0" * 600, "not a Parquet file"),
        ("a.zip", b"PAR1" + b"\0" * 600, "not a zip file"),
    ],
    ids=[
        "doctype",
        "html-after-blank-lines",
        "s3-xml-error",
        "head",
        "body-upper-case",
        "csv-not-gzip",
        "zip-not-parquet",
        "parquet-not-zip",
    ],
)
def test_a_body_that_is_not_the_file_is_refused_by_how_it_starts(workspace, tmp_path, name, body, message):
    from pipeline.download import fetch_file

    (tmp_path / name).write_bytes(body)

    with pytest.raises(SourceError) as error:
        fetch_file((tmp_path / name).as_uri(), str(tmp_path / "out"), "here")

    shown = 80 if message.startswith("got an HTML") else 40
    tail = "; it starts " + repr(body[:shown])
    if message.startswith("got an HTML"):
        assert str(error.value) == f"here: got an HTML/XML page, not the data file (a wrong URL or an error page){tail}"
    else:
        assert str(error.value) == f"here: {message}{tail}"


def test_an_unreachable_signed_url_is_named_without_its_signature_or_password(workspace, run):
    """The HTTP client's own error quotes what it was asked; what it quotes is scrubbed too."""
    from pipeline.download import fetch_file

    from servers import free_port

    base = f"http://tlc-user:s3cret-Tok3n@127.0.0.1:{free_port()}"  # nothing listens there
    url = f"{base}/releases/yellow/yellow_tripdata_2021-01.csv.gz?X-Signature=abc123secret"

    with configured({("source", "attempts"): "1"}), pytest.raises(SourceError) as error:
        fetch_file(url, str(workspace / "out"), "here")

    message = str(error.value)
    assert "ConnectionError" in message and "/releases/yellow/yellow_tripdata_2021-01.csv.gz?***" in message
    assert "abc123secret" not in message and "s3cret-Tok3n" not in message and "tlc-user" not in message


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "the file is empty"),
        (b"\r\n\r\n  \r\n", "the file is empty"),
        (b"VendorID," * 8000, "no complete header line in the first 64 KiB"),
        ("VendorID,tpep_pickup_datetime,caf\u00e9\r\n".encode("latin-1"), "header is not UTF-8 text: 'utf-8' codec can't decode byte 0xe9"),
    ],
    ids=["empty", "blank-lines", "no-line-end", "latin-1-header"],
)
def test_a_file_without_a_readable_header_is_refused_saying_so(tmp_path, content, message):
    import gzip

    from pipeline.download import fetch

    (tmp_path / "yellow.csv.gz").write_bytes(gzip.compress(content))

    with pytest.raises(SourceError) as error:
        fetch((tmp_path / "yellow.csv.gz").as_uri(), str(tmp_path / "out"), catalog.SERVICES["yellow"], "here")

    assert str(error.value).startswith(f"here: {message}")


def test_a_zone_lookup_whose_last_row_has_no_line_end_counts_it(workspace, tmp_path, mirror_files):
    """The 265th zone without a final newline is a whole lookup, not one cut short at 264."""
    from pipeline.download import fetch

    lookup = mirror_files["misc/taxi_zone_lookup.csv"].rstrip(b"\r\n")
    (tmp_path / "taxi_zone_lookup.csv").write_bytes(lookup)

    record = fetch((tmp_path / "taxi_zone_lookup.csv").as_uri(), str(tmp_path / "out"), catalog.SERVICES["zones"], "here")

    assert record.size == len(lookup) and record.header.startswith('"LocationID"')
    with pytest.raises(catalog.SchemaMismatch, match="264 data rows; a whole zones file has at least 265"):
        (tmp_path / "cut.csv").write_bytes(lookup.rsplit(b"\n", 1)[0])
        fetch((tmp_path / "cut.csv").as_uri(), str(tmp_path / "out2"), catalog.SERVICES["zones"], "here")


@pytest.mark.parametrize(
    "url,shown",
    [
        ("https://ghp_token123@example.org/f.csv.gz", "https://***@example.org/f.csv.gz"),  # a token as the user name alone
        ("https://:pw@example.org/f.csv.gz", "https://***@example.org/f.csv.gz"),
        ("https://u:pw@example.org/f.csv.gz?sig=1", "https://***@example.org/f.csv.gz?***"),
        ("https://example.org/f.csv.gz", "https://example.org/f.csv.gz"),
    ],
)
def test_a_url_is_shown_without_any_secret_it_carries(url, shown):
    from pipeline.redaction import redact

    assert redact(url) == shown
