"""Completeness of many tasks at once, for backfills: each kind of output answers for all of its
targets in one call (one bucket listing, one marker query) instead of one call per month.

A target class takes part by having a classmethod `bulk_exists(targets) -> list[bool]`; others
are asked one by one (a local file's existence costs a stat). The answer is the one each task's
own complete() would give: a task with outputs is complete when all of them exist, a wrapper
(no outputs) when everything it requires is complete.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import luigi
from luigi.task import flatten


def exist(targets: Sequence[luigi.Target]) -> list[bool]:
    """target.exists() for each target, in as few calls as the target types allow."""
    answers: list[bool] = [False] * len(targets)
    by_type: dict[type, list[int]] = defaultdict(list)
    for i, target in enumerate(targets):
        by_type[type(target)].append(i)
    for kind, indexes in by_type.items():
        group = [targets[i] for i in indexes]
        bulk = getattr(kind, "bulk_exists", None)
        found = bulk(group) if bulk else [t.exists() for t in group]
        for i, exists in zip(indexes, found):
            answers[i] = exists
    return answers


def complete(tasks: Sequence[luigi.Task]) -> list[bool]:
    """task.complete() for each task, with every output of the whole set checked in bulk."""
    outputs = {task: flatten(task.output()) for task in tasks}
    wrappers = [task for task in tasks if not outputs[task]]
    required = {task: flatten(task.requires()) for task in wrappers}
    deps = [dep for task in wrappers for dep in required[task]]
    deps_done = dict(zip(deps, complete(deps))) if deps else {}
    targets = [target for task in tasks for target in outputs[task]]
    exists = iter(exist(targets))
    answers = []
    for task in tasks:
        if outputs[task]:
            answers.append(all([next(exists) for _ in outputs[task]]))
        else:
            answers.append(all(deps_done[dep] for dep in required[task]))
    return answers


def bulk_complete(cls, months) -> list:
    """luigi's Task.bulk_complete for a task with a `month` parameter: the months among
    ``months`` whose task is complete. ``cls`` may be bound to the other parameters (RangeMonthly
    passes a partial with the service)."""
    tasks = [cls(month=month) for month in months]
    return [task.month for task, done in zip(tasks, complete(tasks)) if done]
