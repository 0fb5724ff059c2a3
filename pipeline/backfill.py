"""Backfills: many months of many services in one command, decided in a handful of calls.

    luigi --module pipeline IngestRange --services yellow,green,zones --first 2019-01 --last 2021-07

luigi's RangeMonthly, as it comes, surprises people running a backfill: it silently looks only
13 months back (`months_back`), schedules at most 50 tasks (`task_limit`), checks every month
one by one, and a month the source has not published yet fails the whole run. Here:
- IngestRange takes an explicit, inclusive first and last month and opens those clamps to cover
  exactly that range;
- PublishedMonths (a RangeMonthly) decides what is missing with IngestMonth.bulk_complete, which
  asks each kind of output once for all months (pipeline/completion.py);
- months at the end of the range that the source does not have yet (404) are left out with a
  warning, so "backfill up to this month" ends cleanly where the data ends. A missing month in
  the middle of the range is still an error: that is a gap, not the future;
- months before a service began at the source (catalog: each source's first month of each
  service, e.g. the TLC's green from 2014-01) are left out with a line in the log, so that the
  whole history is one command: --first 2009-01 for every service.

Reingest runs months again on purpose (luigi itself has no "force"):

    luigi --module pipeline Reingest --services yellow --first 2021-01 --last 2021-01
"""

from __future__ import annotations

import bisect
import concurrent.futures
import datetime
import json
import logging
import os
from typing import Optional

import luigi
from dateutil.relativedelta import relativedelta
from luigi.tools.range import RangeMonthly

from pipeline import catalog, luigi_internals, settings
from pipeline.convert import ToParquet
from pipeline.dataset_task import Flow, remove
from pipeline.download import Download, DownloadRecord, published, source_url
from pipeline.flows import IngestMonth, IngestZones
from pipeline.lake import LakeRecord
from pipeline.lake_file import LakeFile
from pipeline.params import Moment, Month, Services, ThisMonth, UsageError
from pipeline.scheduling import Scheduled

logger = logging.getLogger("pipeline.backfill")


class PublishedMonths(Flow, Scheduled, RangeMonthly):
    """RangeMonthly over a DatasetTask-shaped `of` (service and month parameters): missing months
    decided in bulk, the months after the source's last left out.

    The invariant: a month the source has published is never called "not published yet". Only
    the months after the last one the source has published, or the last one done, are "not yet";
    a missing month before either is a gap, and stays in the run, so that its download fails
    naming it. Nothing is assumed about the order the source publishes in: it may have holes."""

    def missing_datetimes(self, finite_datetimes):
        of = self.of
        months = [self.datetime_to_parameter(d) for d in finite_datetimes]
        done = set(luigi_internals.bulk_complete(of, lambda **kw: of(**self.of_params, **kw), months))
        missing = [d for d, m in zip(finite_datetimes, months) if m not in done]
        tail = [d for d in missing if not done or self.datetime_to_parameter(d) > max(done)]
        svc = catalog.SERVICES[self.of_params["service"]]
        kept = last_published(svc, [self.datetime_to_parameter(d) for d in tail]) + 1
        if kept < len(tail):
            first, last = tail[kept].strftime("%Y-%m"), tail[-1].strftime("%Y-%m")
            logger.warning(
                "%s %s: not published at the source yet (%d month(s)); the range ends before it",
                svc.name,
                first if first == last else f"{first}..{last}",
                len(tail) - kept,
            )
        return missing[: len(missing) - len(tail) + kept]


# How many months are asked at once when looking for the source's last month (body-less GETs).
PROBES_AT_ONCE = 8


def last_published(svc: catalog.Service, months: list[datetime.date]) -> int:
    """The index of the last of ``months`` (oldest first) that the source publishes, or -1.

    The current month and later cost no request (a month is published after it ends), so a range
    into 2099 costs what the months before this one cost. Those are asked from the newest back,
    PROBES_AT_ONCE at a time, until one is published: every month after it was asked and is not
    there. A source may skip a month, so nothing between two answers is guessed."""
    this_month = datetime.date.today().replace(day=1)
    end = bisect.bisect_left(months, this_month)  # months[end:] are not over yet
    with concurrent.futures.ThreadPoolExecutor(PROBES_AT_ONCE) as pool:
        while end > 0:
            batch = range(max(0, end - PROBES_AT_ONCE), end)
            answers = list(pool.map(lambda i: published(source_url(svc, months[i])) is not None, batch))
            found = [i for i, yes in zip(batch, answers) if yes]
            if found:
                return found[-1]
            end = batch.start
    return -1


def months_between(a: datetime.date, b: datetime.date) -> int:
    return (b.year - a.year) * 12 + b.month - a.month


class MonthRange(Scheduled):
    """The parameters of a command over services and an inclusive range of months (a mixin:
    luigi finds parameters on every base class)."""

    services = Services(default=",".join(catalog.TRIP_SERVICES), description="Comma-separated: yellow, green, fhv, fhvhv, zones")
    first = Month(description="YYYY-MM: the first month, included")
    last = Month(description="YYYY-MM: the last month, included")

    task_family: str

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.first > self.last:
            raise UsageError(f"{self.task_family}: --first {self.first:%Y-%m} is after --last {self.last:%Y-%m}")

    def service_names(self) -> list[str]:
        try:
            return Services.names(self.services)
        except UsageError as e:
            raise UsageError(f"{self.task_family} {e}") from None

    def first_of(self, name: str) -> datetime.date:
        """Where the range starts for service ``name``: --first, or the first month the source
        publishes of it when that is later (the months before are not a gap)."""
        begins = catalog.SOURCES[settings.source().kind].first_months.get(name, self.first)
        if begins > self.first:
            shown = f"{self.first:%Y-%m}" + (
                f"..{begins - relativedelta(months=1):%Y-%m}" if begins - relativedelta(months=1) > self.first else ""
            )
            logger.info("%s: the %s source publishes it from %s; %s are left out", name, settings.source().kind, f"{begins:%Y-%m}", shown)
            return begins
        return self.first

    def months(self, name: str) -> list[datetime.date]:
        first = self.first_of(name)
        return [first + relativedelta(months=n) for n in range(months_between(first, self.last) + 1)]

    def datasets(self) -> list[dict]:
        """The parameters of each dataset file asked for: service and month (none for zones)."""
        return [
            {"service": name} if name == "zones" else {"service": name, "month": m}
            for name in self.service_names()
            for m in (self.months(name) if name != "zones" else [None])
        ]

    def _receipt(self, what: str) -> luigi.LocalTarget:
        """A file of this request's own, for what it must remember across luigi's restarts of
        run() after dynamic dependencies."""
        return luigi.LocalTarget(os.path.join(settings.ingest().staging, self.task_family.lower(), f"{self.task_id}.{what}"))


class IngestRange(Flow, MonthRange, luigi.WrapperTask):
    """Ingest every month from --first to --last, both included, of each service in --services
    (and the zone lookup when `zones` is listed). Months already done cost nothing; months not
    published yet at the end of the range are left out with a warning."""

    def requires(self):
        today = datetime.date.today().replace(day=1)
        for name in self.service_names():
            if name == "zones":
                yield IngestZones()
                continue
            first = self.first_of(name)
            if first > self.last:
                continue
            yield PublishedMonths(
                of=IngestMonth,
                of_params={"service": name},
                param_name="month",
                start=first,
                stop=self.last + relativedelta(months=1),
                # RangeMonthly counts these from today; cover exactly [first, last].
                months_back=max(0, months_between(first, today)),
                months_forward=max(0, months_between(today, self.last)) + 1,
                task_limit=months_between(first, self.last) + 1,
            )


class Reingest(MonthRange, luigi.Task):
    """Ingest months again on purpose, replacing each output only when its new version is ready:
    1. the month is downloaded and converted again in the staging area, which no warehouse
       reads: if the source is down or the file is bad, nothing else has changed;
    2. then the lake file and every configured warehouse are made from that new file, each
       replacing its month in one step (the lake file by an atomic rename or object overwrite,
       Postgres by swapping the month's partition with its marker in one transaction, the native
       BigQuery table by a write-truncate load of the month's partition, DuckDB and the BigQuery
       external tables by their marker row; their views read the lake). Each output counts as done only
       when it records the new file's sha256 and holds the lake file's rows (counted in the
       warehouse where a count costs nothing), so until then every sink keeps the old month, a sink
       that lost rows is loaded again even when the source is unchanged, and a failed run can
       simply be run again.

    It leaves nothing behind: it is complete when every file was downloaded after it was asked
    for and every sink agrees with it."""

    requested = Moment(description="When the re-ingest was asked for (default: now): each request is its own task")

    def fresh(self, params: dict) -> bool:
        """Whether the dataset's staging download was made after this request."""
        meta = Download(**params).output()["meta"]
        return meta.exists() and datetime.datetime.fromtimestamp(os.stat(meta.path).st_mtime) > self.requested

    def complete(self) -> bool:
        return all(self.fresh(params) and ingest_task(params).complete() for params in self.datasets())

    def run(self):
        datasets = self.datasets()
        # run() starts over after each batch of dynamic dependencies: only what was made before
        # the request is forgotten, so the files made anew for it stay.
        staging = settings.ingest().staging
        for params in datasets:
            if self.fresh(params):
                continue
            download = Download(**params)
            for target in [*luigi.task.flatten(download.output()), ToParquet(**params).output()]:
                if target.exists():
                    logger.info("%s: forgetting the staging file %s", download.label, target.path)
                    remove(target, staging)
        self.tell(
            f"downloading and converting {len(datasets)} file(s) again; the lake and the "
            "warehouses keep the old ones until the new ones are whole"
        )
        yield [ToParquet(**params) for params in datasets]
        flows = [ingest_task(params) for params in datasets]
        for flow in flows:
            for step in flow.requires():
                if step.complete():
                    logger.info("%s: %s already has this file, its rows whole; left as it is", step.label, step.task_family)
                else:
                    logger.info("%s: %s replaces its month with this file", step.label, step.task_family)
        self.tell(f"replacing {len(datasets)} file(s) in the lake and the warehouses")
        yield flows


def ingest_task(params: dict) -> luigi.Task:
    """The flow that puts the dataset file just downloaded into the lake and the warehouses,
    pinned to it, the warehouses' rows counted."""
    sha256 = DownloadRecord.read(Download(**params).output()["meta"].path).sha256
    if params["service"] == "zones":
        return IngestZones(source_sha256=sha256, recount=True)
    return IngestMonth(service=params["service"], month=params["month"], source_sha256=sha256, recount=True)


class Republished(MonthRange, luigi.Task):
    """Report the months in the lake whose file the source has changed since they were ingested:
    one request per month and no download (the size, ETag and Last-Modified the source states
    now, against those the lake file recorded at download). With --reingest, ingest exactly
    those months again."""

    reingest = luigi.BoolParameter(description="Ingest the changed months again (Reingest, month by month)")
    requested = Moment(description="When the check was asked for (default: now): each request is its own task")

    def output(self):
        return self._receipt("report")

    def changes(self) -> list[dict]:
        """Each month in the lake whose published file differs, with why."""
        found = []
        for params in self.datasets():
            target = LakeFile(**params).output()
            if not target.exists():
                continue
            svc = catalog.SERVICES[params["service"]]
            label = Download(**params).label
            why = difference(target.record(), published(source_url(svc, params.get("month"))))
            if why:
                logger.warning("%s: %s since it was ingested", label, why)
                found.append(
                    {"service": svc.name, "month": catalog.month_str(params["month"]) if svc.monthly else "", "label": label, "why": why}
                )
        return found

    def reingest_of(self, change: dict) -> Reingest:
        # The zones have no month; a Reingest of them takes any.
        month = datetime.date.fromisoformat(change["month"] + "-01") if change["month"] else self.first
        return Reingest(services=change["service"], first=month, last=month, requested=self.requested)

    def run(self):
        # Checked once: after a Reingest the source and the lake agree again, so run()'s restart
        # after the dynamic dependencies reads what was found before them.
        found = self._receipt("changes")
        if not found.exists():
            changes = self.changes()
            with found.open("w") as f:
                json.dump(changes, f)
        with found.open() as f:
            changes = json.load(f)
        changed = [c for c in changes if "no longer published" not in c["why"]]
        if self.reingest and changed:
            self.tell(f"{len(changed)} month(s) changed at the source; ingesting them again")
            yield [self.reingest_of(change) for change in changed]
        lines = [f"{c['label']}: {c['why']}" for c in changes] or ["no month in the lake has changed at the source"]
        with self.output().open("w") as f:
            f.write("\n".join(lines) + "\n")
        logger.info("%s", "; ".join(lines))
        found.remove()


def difference(record: LakeRecord, now: Optional[dict[str, str]]) -> str:
    """Why the file published now is not the one a lake file was made from ("" if it is)."""
    if now is None:
        return "no longer published (HTTP 404)"
    then = {"size": record.source_size, "etag": record.source_etag, "last_modified": record.source_last_modified}
    # Compared where both sides know the value: older lake files recorded only the size.
    changed = [
        f"{name} {then[name]} -> {now[name]}"
        for name in ("size", "etag", "last_modified")
        if then[name] and now[name] and then[name] != now[name]
    ]
    return "republished: " + ", ".join(changed) if changed else ""


class IngestRecent(Flow, Scheduled, luigi.WrapperTask):
    """The newest months of each service and the zone lookup: what cron runs once a month. The
    TLC publishes a month about two months after it ends, so the window looks back `--months`
    months from `--until` and ingests what is published and not yet done (months already done
    cost nothing; months not published yet are left out)."""

    services = Services(default=",".join(catalog.SERVICES), description="Comma-separated services, zones included")
    months = luigi.IntParameter(default=4, description="How many months back from --until to look")
    until = ThisMonth(description="YYYY-MM: the newest month to look for (default: this month, when the command runs)")

    def requires(self):
        return IngestRange(services=self.services, first=self.until - relativedelta(months=max(1, self.months) - 1), last=self.until)
