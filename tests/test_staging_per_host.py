"""Each host has a staging area of its own (issue 30): luigid takes a step as done wherever it ran,
so with many hosts on one luigid a month's next step may be given to a host that lacks its staging
input. The invariant: a step given to any host finishes there, making again (on that host, in its
own process) exactly the staging inputs it lacks and nothing else; an input all hosts share (the
lake) that is missing fails the step by name. One place: DatasetTask.inputs_here."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import luigi
import luigi.worker
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import IngestMonth, IngestRange, IngestZones, LakeFile, ToParquet, catalog
from pipeline.lake import lake_path
from pipeline.warehouses.duckdb_views import ExposeDuckDB

from conftest import LUIGI, ROOT, configured, own_workspace, workspace_flags
from mirror import month
from servers import MirrorHandler, _ThreadingServer

# The months the test's "other host" makes first, and their rows (the samples').
MONTHS = {("green", "2019-01"): None, ("yellow", "2020-07"): None}


def given_to_this_host(task: luigi.Task) -> tuple[str, str, list[str]]:
    """``task`` run as luigi's worker runs a task luigid gives it (its TaskProcess, with the worker
    settings the pipeline's luigi.cfg gives), in this process: (status, luigi's explanation, the
    status messages the visualiser was sent)."""
    results: queue.Queue = queue.Queue()
    messages: list[str] = []
    reporter = SimpleNamespace(
        update_tracking_url=lambda url: None,
        update_status_message=messages.append,
        update_progress_percentage=lambda percentage: None,
        decrease_running_resources=lambda resources: None,
        scheduler_messages=queue.Queue(),
    )
    config = luigi.worker.worker()
    luigi.worker.TaskProcess(task, "this-host", results, reporter, check_unfulfilled_deps=config.check_unfulfilled_deps).run()
    _, status, explanation, _, _ = results.get_nowait()
    return status, explanation, messages


def staging_files(staging: Path) -> dict[str, float]:
    return {str(p.relative_to(staging)): p.stat().st_mtime for p in staging.rglob("*") if p.is_file() and ".tmp" not in p.parts}


@pytest.fixture(scope="module")
def other_host(tmp_path_factory, http_server):
    """The staging area another host left: every month of MONTHS downloaded and converted."""
    work = tmp_path_factory.mktemp("other-host")
    with own_workspace(work, f"{http_server}/releases"):
        tasks = [ToParquet(service=s, month=month(m)) for s, m in MONTHS]
        assert luigi.build(tasks, local_scheduler=True, log_level="WARNING")
        rows = {key: pq.ParquetFile(t.output().path).metadata.num_rows for key, t in zip(MONTHS, tasks)}
    return work / "staging", rows


STEPS = {"ToParquet": ToParquet, "LakeFile": LakeFile, "ExposeDuckDB": ExposeDuckDB}
# Each step's chain of staging inputs, nearest first, and what it reads from the lake.
STAGED = {"ToParquet": ["download"], "LakeFile": ["parquet", "download"], "ExposeDuckDB": []}
# The staging area's folders, by the input they hold.
AREAS = {"raw": "download", "parquet": "parquet"}


@given(
    step=st.sampled_from(sorted(STEPS)),
    dataset=st.sampled_from(sorted(MONTHS)),
    here=st.sets(st.sampled_from(["download", "parquet"])),
    lake_file_here=st.booleans(),
)
def test_a_step_given_to_a_host_without_its_staging_inputs_makes_exactly_those_again_there(
    other_host, http_server, step, dataset, here, lake_file_here, caplog
):
    made_elsewhere, rows = other_host
    service, text = dataset
    with tempfile.TemporaryDirectory() as tmp:
        staging, lake = Path(tmp) / "staging", Path(tmp) / "lake"
        # This host has some of the other host's staging files (``here``); nothing of the rest.
        for area in here:
            for path in (made_elsewhere / ("raw" if area == "download" else area) / service).glob(f"*{text}*"):
                (staging / path.relative_to(made_elsewhere)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staging / path.relative_to(made_elsewhere))
        settings = {
            ("core", "no_configure_logging"): "true",
            ("source", "base_url"): f"{http_server}/releases",
            ("lake", "root"): str(lake),
            ("ingest", "staging"): str(staging),
            ("ingest", "sinks"): "duckdb",
            ("duckdb", "path"): str(Path(tmp) / "warehouse.duckdb"),
        }
        with configured(settings):
            luigi.task_register.Register.clear_instance_cache()
            if step == "ExposeDuckDB" and lake_file_here:
                assert luigi.build([LakeFile(service=service, month=month(text))], local_scheduler=True, log_level="WARNING")
            before = staging_files(staging)
            task = STEPS[step](service=service, month=month(text))
            caplog.clear()
            caplog.set_level(logging.INFO, logger="pipeline")
            status, explanation, messages = given_to_this_host(task)

            if step == "ExposeDuckDB" and not lake_file_here:
                # Shared inputs are never made by a step: it fails, naming what is missing.
                lake_file = lake_path(task.svc, task.month)
                assert status == "FAILED"
                assert (
                    f"{service} {text}: unfulfilled dependency at run time: LakeFile(service={service}, month={text}) ({lake_file})"
                    in explanation
                )
                assert not task.complete()
                return
            assert status == "DONE", explanation
            assert task.complete()
            # Exactly the missing staging inputs were made again, nearest first; nothing else was touched.
            chain = STAGED[step]
            remade = chain[: next((i for i, area in enumerate(chain) if area in here), len(chain))]
            after = staging_files(staging)
            own = {
                str(Path(t.path).relative_to(staging)) for t in luigi.task.flatten(task.output()) if str(t.path).startswith(str(staging))
            }
            assert {k: v for k, v in after.items() if k in before and k not in own} == {k: v for k, v in before.items() if k not in own}
            made = {AREAS[k.split(os.sep)[0]] for k in set(after) - (set(before) - own)}
            assert made == set(remade) | ({"parquet"} if step == "ToParquet" else set())
            again = [r.getMessage() for r in caplog.records if "making it again here" in r.getMessage()]
            assert len(again) == len(remade), again
            # The visualiser shows the remade steps' progress on the step luigid gave this host.
            shown = {area for area, said in (("download", "downloaded"), ("parquet", "converted")) if any(said in m for m in messages)}
            assert shown == set(remade) | ({"parquet"} if step == "ToParquet" else set()), messages
            if step == "LakeFile":
                assert LakeFile(service=service, month=month(text)).output().record().rows == rows[dataset]


def test_luigis_own_check_at_run_time_is_left_to_the_steps():
    """The pipeline's settings turn luigi's run-time check of inputs off: it cannot tell this
    host's staging from what all hosts share (the steps check instead, above)."""
    assert luigi.worker.worker().check_unfulfilled_deps is False


class _Gate(MirrorHandler):
    """The mirror, holding every answer until the test opens ``gate``."""

    gate = threading.Event()

    def do_GET(self):
        self.gate.wait(60)
        return super().do_GET()


@contextlib.contextmanager
def gated_mirror(root: Path):
    _Gate.gate.clear()
    server = _ThreadingServer(("127.0.0.1", 0), lambda *a, **kw: _Gate(*a, directory=str(root), **kw))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/releases"
    finally:
        _Gate.gate.set()
        server.shutdown()
        server.server_close()


def _tasks(scheduler: dict) -> dict[str, str]:
    """luigid's task list: name and parameters -> status."""
    found = {}
    for status in ("RUNNING", "PENDING", "DONE", "FAILED"):
        query = urllib.parse.urlencode({"data": json.dumps({"status": status})})
        with urllib.request.urlopen(f"http://127.0.0.1:{scheduler['port']}/api/task_list?{query}", timeout=5) as answer:
            for task in json.load(answer)["response"].values():
                found[task["name"]] = status
    return found


def _wait_for(what, condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)


def test_a_month_started_on_one_host_is_finished_by_another_with_its_own_staging(tmp_path, mirror, mirror_files, luigid):
    """Host A downloads a month while host B asks luigid for the whole month with a staging area of
    its own: luigid hands B the conversion of A's download. B converts it anyway (downloading it
    again, on its own disk) and puts it in the lake. (Before: `Unfulfilled dependency at
    run time: Download_...`, exit 30.)"""
    scheduler = ["--scheduler-port", str(luigid["port"])]
    with gated_mirror(mirror) as source:
        hosts = {name: [f for f in workspace_flags(tmp_path / name, source) if f != "--local-scheduler"] for name in "ab"}
        # Both hosts are one deployment: one lake and one warehouse (the staging areas are each host's own).
        for name in "ab":
            hosts[name][hosts[name].index("--lake-root") + 1] = str(tmp_path / "lake")
            hosts[name][hosts[name].index("--duckdb-path") + 1] = str(tmp_path / "warehouse.duckdb")
        month_ = ["--service", "green", "--month", "2019-01"]
        a = subprocess.Popen(
            [*LUIGI, "Download", *month_, *hosts["a"], *scheduler], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        _wait_for("host A's download to run", lambda: _tasks(luigid).get("Download") == "RUNNING")
        b = subprocess.Popen(
            [*LUIGI, "IngestMonth", *month_, *hosts["b"], *scheduler, "--worker-keep-alive", "--worker-wait-interval", "0.2"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        _wait_for("host B to ask for the month", lambda: "LakeFile" in _tasks(luigid))
        _Gate.gate.set()
        out_a, out_b = (p.communicate(timeout=120)[0].decode() for p in (a, b))
    assert a.returncode == 0, out_a[-3000:]
    # 10: the download was "being run by another worker" when B asked ([retcode] already_running).
    assert b.returncode in (0, 10), out_b[-3000:]
    assert "is not on this host (made on another, or removed); making it again here" in out_b
    lake_file = tmp_path / "lake" / "green" / "month=2019-01" / "green_tripdata_2019-01.parquet"
    sample = mirror_files["green/green_tripdata_2019-01.csv.gz"]
    assert pq.ParquetFile(lake_file).metadata.num_rows == len(sample.splitlines()) - 1
    assert (tmp_path / "b" / "staging" / "raw" / "green" / "green_tripdata_2019-01.csv.gz").is_file()
    assert all(status == "DONE" for status in _tasks(luigid).values()), _tasks(luigid)


FLOWS = {
    "IngestMonth": (lambda: IngestMonth(service="green", month=month("2020-02")), ("green", "2020-02")),
    "IngestZones": (lambda: IngestZones(), ("zones", None)),
    "IngestRange": (lambda: IngestRange(services="yellow,green", first=month("2020-01"), last=month("2020-03")), ("yellow", "2020-02")),
}


@pytest.mark.parametrize("flow", FLOWS)
def test_a_flow_whose_step_ended_without_its_output_is_not_marked_done(range_source, run, flow):
    """luigi's run-time check is off, and a WrapperTask's run() does nothing: a flow checks that
    everything it requires is complete before it ends (dataset_task.Flow), so a step that ended
    without its output (here: its lake file gone) fails the flow, naming what is missing."""
    make, (service, m) = FLOWS[flow]
    assert not run(make()).every_failure
    svc = catalog.SERVICES[service]
    lake_file = Path(lake_path(svc, month(m) if m else None))
    lake_file.unlink()
    luigi.task_register.Register.clear_instance_cache()

    status, explanation, _ = given_to_this_host(make())

    assert status == "FAILED" and not make().complete()
    assert "unfulfilled dependenc" in explanation and (str(lake_file) in explanation or "IngestMonth" in explanation), explanation
