"""luigi's internals the pipeline leans on are used in one module, pipeline/luigi_internals.py, and
this file fails first, naming which, when a luigi release changes them: task ids lose their
deployment, progress reports stop, the settings files are not read, the command line stops
checking values or printing its one-line errors."""

from __future__ import annotations

import ast
import datetime
import inspect
import textwrap
from pathlib import Path

import luigi
import luigi.interface
import luigi.tools.range
import luigi.worker
from luigi.cmdline_parser import CmdlineParser
from luigi.configuration import LuigiConfigParser
from luigi.task import task_id_str

import pipeline
from pipeline import console, luigi_internals, params

PACKAGE = Path(pipeline.__file__).parent

# Every private name of luigi's the pipeline uses, as an attribute or an imported name.
INTERNALS = {
    "task_id_str",
    "_Task__hash",
    "forward_reporter_attributes",
    "_config_paths",
    "_parser_kwargs",
    "_value_iterator",
    "__func__",
    "_schedule_and_run",
    "check_complete_cached",
    "_possibly_exit_with_help",
    "_build_parser",
}


def calls_in(function) -> set[str]:
    """The names ``function``'s source calls."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }


def test_the_task_id_and_its_cached_hash_are_luigis_still():
    task = luigi.Task()
    assert task.task_id == task_id_str(task.get_task_family(), task.to_str_params(only_significant=True, only_public=True))
    assert hash(task) == task._Task__hash, "luigi.Task caches the id's hash as _Task__hash"
    luigi_internals.set_task_id(task, "Other", {"a": "1"})
    assert hash(task) == hash(task.task_id) == hash(task_id_str("Other", {"a": "1"}))


def test_the_reporters_a_worker_sets_are_named_as_luigi_names_them():
    reporter = luigi.worker.TaskProcess.forward_reporter_attributes
    assert reporter["update_status_message"] == luigi_internals.STATUS_MESSAGE
    assert reporter["update_progress_percentage"] == luigi_internals.PROGRESS_PERCENTAGE
    assert luigi_internals.reporters(luigi.Task()) == (None, None)  # set by the worker only while the task runs


def test_the_settings_files_luigi_reads_are_its_parsers_list():
    assert luigi_internals.config_paths() is LuigiConfigParser._config_paths
    assert isinstance(LuigiConfigParser._config_paths, list)
    assert "_config_paths" in inspect.getsource(LuigiConfigParser.reload)


def test_a_parameters_argparse_arguments_and_default_values_are_drawn_as_before():
    assert "_parser_kwargs" in calls_in(luigi_internals.luigis_build_parser)
    assert "_value_iterator" in calls_in(luigi.Parameter._get_value)
    month = params.Month()
    assert month._parser_kwargs("until", "IngestRecent")["type"] == month.check


def test_bulk_complete_is_called_on_the_function_behind_the_classmethod():
    assert isinstance(inspect.getattr_static(luigi.Task, "bulk_complete"), classmethod)
    assert "__func__" in inspect.getsource(luigi.tools.range.RangeDaily.missing_datetimes)


def test_the_console_is_hooked_where_luigi_calls_its_own():
    assert "_schedule_and_run" in calls_in(luigi.interface._run) | calls_in(luigi.interface.build)
    assert "check_complete_cached" in calls_in(luigi.worker.check_complete)
    assert {"_possibly_exit_with_help", "_build_parser"} <= calls_in(CmdlineParser.__init__)
    assert luigi.interface._schedule_and_run is console._schedule_and_run
    assert luigi.worker.check_complete_cached is console._check_complete_cached


def test_no_other_module_uses_luigis_internals():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "luigi_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.attr]
                if isinstance(node, ast.Attribute)
                else [alias.name for alias in node.names]
                if isinstance(node, ast.ImportFrom)
                else [node.name]
                if isinstance(node, ast.FunctionDef) and node.name in ("_parser_kwargs", "_value_iterator")
                else []
            )
            found += [(path.name, name) for name in names if name in INTERNALS]
    assert found == []


def test_this_month_is_the_month_the_task_is_made_in_not_the_import(monkeypatch):
    """IngestRecent's --until defaulted to the month the module was imported in: a scheduler
    process or a session that outlived a month kept looking at the old one."""

    class Clock(datetime.date):
        now = datetime.date(2031, 1, 17)

        @classmethod
        def today(cls):
            return cls.now

    monkeypatch.setattr(params, "datetime", type("datetime", (), {"date": Clock, "datetime": datetime.datetime}))
    luigi.task_register.Register.clear_instance_cache()
    january = pipeline.IngestRecent()
    Clock.now = datetime.date(2031, 2, 1)
    luigi.task_register.Register.clear_instance_cache()
    february = pipeline.IngestRecent()

    assert (january.until, february.until) == (datetime.date(2031, 1, 1), datetime.date(2031, 2, 1))
    assert pipeline.IngestRecent(until=datetime.date(2020, 5, 1)).until == datetime.date(2020, 5, 1)


def test_luigids_state_saved_between_stops_is_what_luigid_loads(tmp_path):
    """pipeline.luigid saves the scheduler's state as luigid's clean stop does: a luigid started
    on the file knows the tasks (and no temporary file is left beside it)."""
    import luigi.scheduler

    path = tmp_path / "state.pickle"
    scheduler = luigi.scheduler.Scheduler(state_path=str(path))
    scheduler.add_task(worker="host-a", task_id="LakeFile_green_2019_01", status="PENDING")
    assert luigi_internals.save_state(scheduler) == str(path)

    again = luigi.scheduler.Scheduler(state_path=str(path))
    again.load()
    assert list(again.task_list("PENDING", "")) == ["LakeFile_green_2019_01"]
    assert [p.name for p in tmp_path.iterdir()] == ["state.pickle"]
