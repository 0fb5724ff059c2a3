"""The test helpers themselves: what they report must be luigi's own verdict, so that a task that
cannot be scheduled never passes for one with nothing to do."""

from __future__ import annotations

import luigi
import pytest


class Broken(luigi.Task):
    def complete(self):
        raise RuntimeError("the marker table cannot be read")


class Fails(luigi.Task):
    """A task with no output that fails when run."""

    n = luigi.IntParameter()

    def complete(self):
        return False

    def run(self):
        raise ValueError(f"failure {self.n}")


def test_a_task_that_cannot_be_scheduled_fails_the_test_unless_expected(run):
    with pytest.raises(pytest.fail.Exception, match="the marker table cannot be read"):
        run(Broken())

    result = run(Broken(), broken_ok=True)

    assert [str(error) for _, error in result.broken] == ["the marker table cannot be read"] and result.started == []


def test_every_failure_is_kept_not_one_per_family(run):
    result = run(Fails(n=1), Fails(n=2))

    assert sorted(str(error) for _, error in result.every_failure) == ["failure 1", "failure 2"]
    assert str(result.failures["Fails"]) in ("failure 1", "failure 2")
