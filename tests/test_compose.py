"""docker-compose.yaml and the Dockerfile, checked without a Docker engine (we have none): every
command, module, task, profile and file they name exists, and the settings they rely on agree."""

from __future__ import annotations

import configparser
import importlib.util
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
    # From the build context (not --from= a stage): each exists, and .dockerignore lets it in.
    copies = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    copied = [word for words in copies if not words[0].startswith("--from=") for word in words]
    assert copied and all((ROOT / name).exists() for name in copied), copied
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert all(any(name == a or name.startswith(a + "/") for a in allowed) for name in copied), (copied, allowed)
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
    if entrypoint == ["python", "-m", "pipeline.luigid"]:
        assert importlib.util.find_spec("pipeline.luigid") is not None
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


def test_the_dockerfile_builds_for_a_registry_by_default_and_runs_as_a_user():
    """Its base image and pip's source are build arguments whose defaults are a registry user's;
    offline builds (.ci/compose) pass others. The image's processes run as a user, not root."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    assert 'ARG PIP_SOURCE="--index-url https://pypi.org/simple"' in dockerfile
    assert [line for line in dockerfile.splitlines() if line.startswith("FROM ")] == ["FROM ${BASE_IMAGE} AS build", "FROM ${BASE_IMAGE}"]
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] != "root"


OFFLINE = yaml.safe_load((ROOT / "docker-compose.offline.yaml").read_text())


def test_the_offline_override_keeps_the_stack_and_adds_only_the_mirror():
    """docker-compose.offline.yaml changes how images are built and where the source is, nothing
    users run: its services are the stack's, plus the mirror of the samples."""
    assert set(OFFLINE["services"]) - set(SERVICES) == {"mirror"}
    for name, service in OFFLINE["services"].items():
        assert set(service) <= {"image", "build", "depends_on", "environment", "command", "entrypoint", "volumes"}, name
    worker = OFFLINE["services"]["worker"]
    # The worker's profile is the stack's, with the mirror layered over it.
    profiles = worker["environment"]["LUIGI_CONFIG_PATH"].split(":")
    assert profiles[0] == SERVICES["worker"]["environment"]["LUIGI_CONFIG_PATH"]
    mounted = {target: source for source, target, _ in (v.split(":") for v in worker["volumes"])}
    config = configparser.ConfigParser()
    config.read(ROOT / mounted[profiles[1]])
    assert config["source"]["base_url"].split("//")[1].split(":")[0] == "mirror"
    # The backfill it runs is of months the samples hold.
    with luigi.cmdline_parser.CmdlineParser.global_instance(worker["command"]) as parser:
        task = parser.get_task_obj()
    for name in task.service_names():
        stem = "misc/taxi_zone_lookup.csv" if name == "zones" else f"{name}/{name}_tripdata_{task.first:%Y-%m}.csv.gz"
        assert (ROOT / "samples" / stem).exists(), stem


def test_every_image_the_stack_pulls_is_built_offline():
    """Each image docker-compose.yaml names (no registry here) is one .ci/compose builds from
    docker/, and the base the override gives our Dockerfile is one too."""
    script = (ROOT / ".ci" / "compose").read_text()
    built = dict(re.findall(r"build_stand_in (\S+) (\S+)", script))
    named = {service["image"] for service in SERVICES.values() if "image" in service}
    assert {name.removeprefix("docker.io/library/").removeprefix("docker.io/") for name in built} >= named
    assert all((ROOT / "docker" / folder / "Dockerfile").exists() for folder in built.values())
    assert OFFLINE["services"]["worker"]["build"]["args"]["BASE_IMAGE"] in built
