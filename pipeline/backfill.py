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
"""

from __future__ import annotations

import datetime
import logging

import luigi
from dateutil.relativedelta import relativedelta
from luigi.tools.range import RangeMonthly

from pipeline import catalog
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
        svc = catalog.SERVICES[self.of_params["service"]]
        while missing and not is_published(source_url(svc, self.datetime_to_parameter(missing[-1]))):
            logger.warning("%s %s: not published at the source yet; the range ends before it",
                           svc.name, missing[-1].strftime("%Y-%m"))
            missing.pop()
        return missing


def months_between(a: datetime.date, b: datetime.date) -> int:
    return (b.year - a.year) * 12 + b.month - a.month


class IngestRange(luigi.WrapperTask):
    """Ingest every month from --first to --last, both included, of each service in --services
    (and the zone lookup when `zones` is listed). Months already done cost nothing; months not
    published yet at the end of the range are left out with a warning."""

    services = luigi.Parameter(default=",".join(catalog.TRIP_SERVICES),
                               description="Comma-separated: yellow, green, fhv, fhvhv, zones")
    first = luigi.MonthParameter(description="YYYY-MM: the first month, included")
    last = luigi.MonthParameter(description="YYYY-MM: the last month, included")

    def service_names(self) -> list[str]:
        names = [s.strip() for s in self.services.split(",") if s.strip()]
        unknown = [s for s in names if s not in catalog.SERVICES]
        if unknown or not names:
            raise ValueError(f"IngestRange --services: unknown {', '.join(unknown) or '(none given)'}; "
                             f"known: {', '.join(catalog.SERVICES)}")
        if self.first > self.last:
            raise ValueError(f"IngestRange: --first {self.first:%Y-%m} is after --last {self.last:%Y-%m}")
        return names

    def requires(self):
        today = datetime.date.today().replace(day=1)
        count = months_between(self.first, self.last) + 1
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
                task_limit=count)
