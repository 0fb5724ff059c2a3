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
  the middle of the range is still an error: that is a gap, not the future.

Reingest runs months again on purpose (luigi itself has no "force"):

    luigi --module pipeline Reingest --services yellow --first 2021-01 --last 2021-01
"""

from __future__ import annotations

import bisect
import datetime
import logging
import os

import luigi
from dateutil.relativedelta import relativedelta
from luigi.tools.range import RangeMonthly

from pipeline import catalog, settings
from pipeline.download import is_published, source_url
from pipeline.flows import IngestMonth, IngestZones

logger = logging.getLogger("pipeline.backfill")


class PublishedMonths(RangeMonthly):
    """RangeMonthly over a DatasetTask-shaped `of` (service and month parameters): missing months
    decided in bulk, the unpublished tail of the range left out."""

    def missing_datetimes(self, finite_datetimes):
        of = self.of
        months = [self.datetime_to_parameter(d) for d in finite_datetimes]
        done = set(of.bulk_complete.__func__(lambda **kw: of(**self.of_params, **kw), months))
        missing = [d for d, m in zip(finite_datetimes, months) if m not in done]
        # Only months after the last one done can be "not published yet"; a missing month before
        # it is a gap, and stays in, so that its download fails naming it.
        tail = [d for d in missing if not done or self.datetime_to_parameter(d) > max(done)]
        svc = catalog.SERVICES[self.of_params["service"]]
        published = published_prefix(svc, [self.datetime_to_parameter(d) for d in tail])
        if published < len(tail):
            first, last = tail[published].strftime("%Y-%m"), tail[-1].strftime("%Y-%m")
            logger.warning("%s %s: not published at the source yet (%d month(s)); the range ends before it",
                           svc.name, first if first == last else f"{first}..{last}", len(tail) - published)
        return missing[:len(missing) - len(tail) + published]


def published_prefix(svc: catalog.Service, months: list[datetime.date]) -> int:
    """How many of ``months`` (consecutive, oldest first) are published, counted from the first:
    the source publishes in order, so the unpublished ones are a tail.

    The current month and later cost no request (a month is published after it ends). Before
    them, months are asked from the end backwards at distances 1, 2, 4, ... until one is
    published, then the boundary is bisected: a handful of requests for any range, however far
    into the future it reaches."""
    this_month = datetime.date.today().replace(day=1)
    end = bisect.bisect_left(months, this_month)  # months[end:] are not over yet
    published = lambda i: is_published(source_url(svc, months[i]))  # noqa: E731
    unpublished, distance = end, 1  # months[unpublished:] are known unpublished
    while unpublished > 0:
        probe = max(0, end - distance)
        if published(probe):
            low = probe  # published; everything between low and unpublished is unknown
            while unpublished - low > 1:
                middle = (low + unpublished) // 2
                if published(middle):
                    low = middle
                else:
                    unpublished = middle
            return unpublished
        unpublished, distance = probe, distance * 2
    return 0


def months_between(a: datetime.date, b: datetime.date) -> int:
    return (b.year - a.year) * 12 + b.month - a.month


class MonthRange:
    """The parameters of a command over services and an inclusive range of months (a mixin:
    luigi finds parameters on every base class)."""

    services = luigi.Parameter(default=",".join(catalog.TRIP_SERVICES),
                               description="Comma-separated: yellow, green, fhv, fhvhv, zones")
    first = luigi.MonthParameter(description="YYYY-MM: the first month, included")
    last = luigi.MonthParameter(description="YYYY-MM: the last month, included")

    task_family: str

    def service_names(self) -> list[str]:
        names = [s.strip() for s in self.services.split(",") if s.strip()]
        unknown = [s for s in names if s not in catalog.SERVICES]
        if unknown or not names:
            raise ValueError(f"{self.task_family} --services: unknown {', '.join(unknown) or '(none given)'}; "
                             f"known: {', '.join(catalog.SERVICES)}")
        if self.first > self.last:
            raise ValueError(f"{self.task_family}: --first {self.first:%Y-%m} is after --last {self.last:%Y-%m}")
        return names

    def months(self) -> list[datetime.date]:
        return [self.first + relativedelta(months=n) for n in range(months_between(self.first, self.last) + 1)]


class IngestRange(MonthRange, luigi.WrapperTask):
    """Ingest every month from --first to --last, both included, of each service in --services
    (and the zone lookup when `zones` is listed). Months already done cost nothing; months not
    published yet at the end of the range are left out with a warning."""

    def requires(self):
        today = datetime.date.today().replace(day=1)
        for name in self.service_names():
            if name == "zones":
                yield IngestZones()
                continue
            yield PublishedMonths(
                of=IngestMonth, of_params={"service": name}, param_name="month",
                start=self.first, stop=self.last + relativedelta(months=1),
                # RangeMonthly counts these from today; cover exactly [first, last].
                months_back=max(0, months_between(self.first, today)),
                months_forward=max(0, months_between(today, self.last)) + 1,
                task_limit=len(self.months()))


def chain(tasks: list[luigi.Task]) -> list[luigi.Task]:
    """The tasks and everything they require, each once."""
    seen: dict[str, luigi.Task] = {}
    todo = list(tasks)
    while todo:
        task = todo.pop()
        if task.task_id not in seen:
            seen[task.task_id] = task
            todo.extend(luigi.task.flatten(task.requires()))
    return list(seen.values())


class Reingest(MonthRange, luigi.Task):
    """Ingest months again on purpose: forget every output of every step of those months (the
    download, the Parquet file, the lake file, each configured sink's marker), then ingest them
    anew. Each warehouse load replaces its month whole (Postgres swaps the month's partition), so
    no row is duplicated anywhere. Until the new run finishes, the months are missing from the
    warehouses; if it fails (the source is down), the same command can simply be run again."""

    requested = luigi.DateSecondParameter(
        default=datetime.datetime.now().replace(microsecond=0),
        description="When the re-ingest was asked for (default: now): each request is its own task")

    def ingest_tasks(self) -> list[luigi.Task]:
        tasks: list[luigi.Task] = []
        for name in self.service_names():
            if name == "zones":
                tasks.append(IngestZones())
            else:
                tasks.extend(IngestMonth(service=name, month=m) for m in self.months())
        return tasks

    def _receipt(self, what: str) -> luigi.LocalTarget:
        return luigi.LocalTarget(os.path.join(settings.ingest().staging, "reingest", f"{self.task_id}.{what}"))

    def output(self):
        return self._receipt("done")

    def run(self):
        tasks = self.ingest_tasks()
        # run() starts over once the ingest tasks are done (luigi's dynamic dependencies): the
        # receipt makes sure the outputs are forgotten once, not again after the new run.
        forgotten = self._receipt("forgotten")
        if not forgotten.exists():
            for task in chain(tasks):
                for target in luigi.task.flatten(task.output()):
                    if target.exists():
                        logger.info("%s: forgetting %s", task, getattr(target, "path", target))
                        target.remove()
            self.set_status_message(f"forgot the outputs of {len(tasks)} month(s); ingesting them again")
            with forgotten.open("w") as f:
                f.write(f"{len(tasks)} tasks\n")
        yield tasks
        with self.output().open("w") as f:
            f.write(f"{len(tasks)} tasks ingested again\n")
        forgotten.remove()


class IngestRecent(luigi.WrapperTask):
    """The newest months of each service and the zone lookup: what cron runs once a month. The
    TLC publishes a month about two months after it ends, so the window looks back `--months`
    months from `--until` and ingests what is published and not yet done (months already done
    cost nothing; months not published yet are left out)."""

    services = luigi.Parameter(default=",".join(catalog.SERVICES), description="Comma-separated services, zones included")
    months = luigi.IntParameter(default=4, description="How many months back from --until to look")
    until = luigi.MonthParameter(default=datetime.date.today().replace(day=1),
                                 description="YYYY-MM: the newest month to look for (default: this month)")

    def requires(self):
        return IngestRange(services=self.services, first=self.until - relativedelta(months=max(1, self.months) - 1),
                           last=self.until)
