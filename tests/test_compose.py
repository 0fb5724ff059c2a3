"""docker-compose.yaml and the Dockerfile, checked without a Docker engine (we have none): every
command, module, task, profile and file they name exists, and the settings they rely on agree."""

from __future__ import annotations

import configparser
import re
import shlex
import sys
from pathlib import Path

import luigi
import luigi.cmdline_parser
import pytest
import yaml

import pipeline  # noqa: F401  (registers the tasks the compose commands name)

from conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
BIN = Path(sys.executable).parent


def in_repo(container_path: str) -> Path:
    """/app/x in the image is x in the repo (the Dockerfile copies the repo's files to /app)."""
    assert container_path.startswith("/app/"), container_path
    return ROOT / container_path.removeprefix("/app/")


def test_the_dockerfile_copies_files_that_exist_and_installs_the_scheduler_extra():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [word for line in dockerfile.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]]
    assert copied and all((ROOT / name).exists() for name in copied), copied
    assert "'.[scheduler]'" in dockerfile
    assert "scheduler =" in (ROOT / "setup.cfg").read_text()
    assert re.search(r'ENTRYPOINT \["luigi", "--module", "pipeline"\]', dockerfile)


def test_every_service_has_an_image_or_our_build_and_binds_to_localhost():
    for name, service in SERVICES.items():
        assert "image" in service or service.get("build") == ".", name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if s.get("build") == "."])
def test_our_services_run_commands_tasks_and_profiles_that_exist(name):
    service = SERVICES[name]
    env = service.get("environment", {})
    profile = in_repo(env["LUIGI_CONFIG_PATH"])
    assert profile.exists(), profile
    entrypoint = service["entrypoint"]
    if entrypoint == ["luigid"]:
        assert (BIN / "luigid").exists()
        return
    # The worker: a shell line that execs `luigi --module pipeline` with the compose command.
    assert entrypoint[:2] == ["sh", "-c"] and "exec luigi --module pipeline" in entrypoint[2]
    assert (BIN / "luigi").exists()
    with luigi.cmdline_parser.CmdlineParser.global_instance(service["command"]) as parser:
        task = parser.get_task_obj()  # the task exists and its parameters parse
    assert task.task_family == service["command"][0]
    # The profile's paths are the volumes the service mounts.
    config = configparser.ConfigParser()
    config.read(profile)
    mounts = [volume.split(":")[1] for volume in service.get("volumes", [])]
    assert config["ingest"]["staging"] in mounts
    # It reaches the other services by their compose names.
    assert config["core"]["default_scheduler_host"] in SERVICES
    assert config["postgres"]["host"] in SERVICES
    assert env["STORAGE_EMULATOR_HOST"].split("//")[1].split(":")[0] in SERVICES


def test_the_password_is_a_secret_file_that_is_never_committed():
    secret = COMPOSE["secrets"]["postgres-password"]["file"]
    assert secret.startswith("./secrets/")
    assert "/secrets/" in (ROOT / ".gitignore").read_text().split()
    header = (ROOT / "docker-compose.yaml").read_text().split("services:")[0]
    assert secret.removeprefix("./") in header  # the header says how to create it
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert "postgres-password" in SERVICES["worker"]["secrets"]
    assert not any(
        "PASSWORD" in key and not key.endswith("_FILE") for service in SERVICES.values() for key in service.get("environment", {})
    )


def test_the_bucket_the_worker_uses_is_the_one_the_stack_creates():
    config = configparser.ConfigParser()
    config.read(in_repo(SERVICES["worker"]["environment"]["LUIGI_CONFIG_PATH"]))
    bucket = config["lake"]["root"].removeprefix("gs://").split("/")[0]
    assert f'{{"name": "{bucket}"}}' in shlex.join(SERVICES["gcs-bucket"]["command"]).replace("\\", "")
