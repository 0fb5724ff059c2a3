"""deploy/kubernetes, checked offline (no cluster, no network): every manifest is valid for a named
Kubernetes version, strictly (an unknown field is refused, as the API server refuses it), and every
command, task, profile, file, port, volume, Secret and image the manifests name exists and agrees
with the repo, as tests/test_compose.py does for the compose stack. The agreement is one function,
``mismatches``, so that a test can break a manifest on purpose and see it found."""

from __future__ import annotations

import configparser
import copy
import importlib.util
import json
import re
import shlex
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

import kubernetes_validate
import luigi
import luigi.cmdline_parser
import luigi.scheduler
import pytest
import yaml

import pipeline  # noqa: F401  (registers the tasks the Job runs)

from conftest import ROOT
from servers import _wait_http, free_port

DEPLOY = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
# The oldest release with everything the manifests use as stable (the Job's podFailurePolicy: 1.31),
# and the newest kubernetes-validate knows.
VERSIONS = ["1.31.0", kubernetes_validate.utils.latest_version()]
APP = PurePosixPath("/app")  # the image's project folder: the Dockerfile copies luigi.cfg and config/ there
BIN = Path(sys.executable).parent
GUIDE = ROOT / "docs" / "scaling.md"


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = {name: load(DEPLOY / name) for name in KUSTOMIZATION["resources"]}
ALL = [doc for docs in MANIFESTS.values() for doc in docs]


def only(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def in_repo(path: str) -> Path:
    """/app/x in the image is x in the repo."""
    return ROOT / PurePosixPath(path).relative_to(APP)


def profile(path: str) -> configparser.ConfigParser | None:
    """The profile at ``path`` in the image, read from the repo; None if there is no such file."""
    config = configparser.ConfigParser()
    return config if config.read(in_repo(path)) else None


def env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def mount_of(pod: dict, container: dict, path: str) -> tuple[str | None, dict]:
    """The mount path holding ``path`` (the longest that is a parent of it) and its volume, or
    (None, {}) if no volume holds it."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    holding = [m for m in container["volumeMounts"] if PurePosixPath(path).is_relative_to(m["mountPath"])]
    if not holding:
        return None, {}
    mount = max(holding, key=lambda m: len(m["mountPath"]))
    return mount["mountPath"], volumes[mount["name"]]


def configmap_keys(volume: dict) -> set[str]:
    """The files a ConfigMap volume shows: the ConfigMap is made from config/ (one key per file,
    `kubectl create configmap tlc-config --from-file=config/`), or the items it selects."""
    assert "configMap" in volume, volume
    made_from = {p.name for p in (ROOT / "config").iterdir() if p.is_file()}
    items = volume["configMap"].get("items")
    return {item["path"] for item in items if item["key"] in made_from} if items else made_from


def entrypoint() -> list[str]:
    dockerfile = (ROOT / "Dockerfile").read_text()
    return json.loads(re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)[-1])


def image_user() -> int:
    return int(re.search(r"useradd --uid (\d+)", (ROOT / "Dockerfile").read_text())[1])


def mismatches(docs: list[dict]) -> list[str]:
    """What in ``docs`` (the manifests) names something that does not exist or does not agree."""
    found: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            found.append(what)

    deployment, job = only(docs, "Deployment", "luigid"), only(docs, "Job")
    service, policy = only(docs, "Service", "luigid"), only(docs, "NetworkPolicy")
    luigid_pod, worker_pod = deployment["spec"]["template"], job["spec"]["template"]
    (luigid,) = luigid_pod["spec"]["containers"]
    (worker,) = worker_pod["spec"]["containers"]

    # One luigid, its state kept across restarts and never two pods on it at once.
    check(
        deployment["spec"].get("replicas") == 1 and deployment["spec"].get("strategy", {}).get("type") == "Recreate",
        "luigid: 1 replica, Recreate",
    )
    scheduler, workers = (profile(env(c)["LUIGI_CONFIG_PATH"]["value"]) for c in (luigid, worker))
    if scheduler is None or workers is None:
        missing = [c for c, p in ((luigid, scheduler), (worker, workers)) if p is None]
        return [f"{c['name']}: no profile {env(c)['LUIGI_CONFIG_PATH']['value']} in config/" for c in missing]
    for setting, path in [
        ("[scheduler] state_path", scheduler["scheduler"]["state_path"]),
        ("[task_history] db_connection", scheduler["task_history"]["db_connection"].removeprefix("sqlite:///")),
    ]:
        at = str(APP / path)  # relative to luigid's working directory, the image's /app
        check("persistentVolumeClaim" in mount_of(luigid_pod["spec"], luigid, at)[1], f"luigid {setting} {at}: not on a volume claim")
    check(luigid.get("workingDir", str(APP)) == str(APP), "luigid: works in /app, where luigi.cfg ([resources]) is")
    check(
        luigid["command"] == ["python", "-m", "pipeline.luigid"] and importlib.util.find_spec("pipeline.luigid") is not None,
        f"luigid: command {luigid.get('command')}",
    )
    port = int(luigid["args"][luigid["args"].index("--port") + 1])
    http = {p["name"]: p["containerPort"] for p in luigid["ports"]}
    check(http.get("http") == port, f"luigid: listens on {port}, declares {http}")
    check(luigid["readinessProbe"]["httpGet"]["port"] in ("http", port), "luigid: the probe's port")
    probe = luigid["readinessProbe"]["httpGet"]["path"]
    check(
        probe.startswith("/api/") and probe.removeprefix("/api/") in luigi.scheduler.RPC_METHODS, f"luigid: probe {probe} is no luigid RPC"
    )

    # Reached by the workers by the Service's name and port, and by nobody else.
    check(service["spec"].get("type", "ClusterIP") == "ClusterIP", f"Service type {service['spec'].get('type')}")
    check(not any("nodePort" in p for p in service["spec"]["ports"]), "Service: a nodePort")
    check(not any(d["kind"] == "Ingress" for d in docs), "an Ingress")
    check(service["spec"]["selector"].items() <= luigid_pod["metadata"]["labels"].items(), "Service: selects no luigid pod")
    (service_port,) = service["spec"]["ports"]
    check(service_port["targetPort"] in ("http", port), "Service: targetPort")
    args = worker["args"]
    host = args[args.index("--scheduler-host") + 1] if "--scheduler-host" in args else workers["core"]["default_scheduler_host"]
    check(host == service["metadata"]["name"] == workers["core"]["default_scheduler_host"], f"workers reach luigid as {host}")
    check(int(workers["core"]["default_scheduler_port"]) == service_port["port"], "workers: luigid's port")
    check(
        policy["spec"]["podSelector"]["matchLabels"].items() <= luigid_pod["metadata"]["labels"].items(), "NetworkPolicy: not luigid's pods"
    )
    (rule,) = policy["spec"]["ingress"]
    check(
        all(f["podSelector"]["matchLabels"].items() <= worker_pod["metadata"]["labels"].items() for f in rule["from"]),
        "NetworkPolicy: lets in other pods than the workers",
    )
    check([p["port"] for p in rule["ports"]] in ([port], ["http"]), "NetworkPolicy: luigid's port")

    # The workers run, in the image's entrypoint, a task and parameters that exist.
    check(
        "command" not in worker and entrypoint() == ["luigi", "--module", "pipeline"] and (BIN / "luigi").exists(),
        "workers: the image's entrypoint",
    )
    try:
        with luigi.cmdline_parser.CmdlineParser.global_instance(args) as parser:
            check(parser.get_task_obj().task_family == args[0], f"workers: {args[0]}")
    except SystemExit:
        found.append(f"workers: {shlex.join(args)} does not parse")
    check(job["spec"]["parallelism"] == job["spec"]["completions"], "Job: parallelism and completions differ")
    # Staging is each pod's own (the root filesystem is read-only): a volume of the pod, bounded.
    staging = mount_of(worker_pod["spec"], worker, workers["ingest"]["staging"])[1]
    check("sizeLimit" in staging.get("emptyDir", {}), "workers: staging is not a pod's own bounded volume (emptyDir with a sizeLimit)")

    # Each pod's profile, and luigi.cfg's logging setup, are files of the ConfigMap made from config/.
    logging_conf = configparser.ConfigParser()
    logging_conf.read(ROOT / "luigi.cfg")
    for pod, container in [(luigid_pod, luigid), (worker_pod, worker)]:
        for path in [env(container)["LUIGI_CONFIG_PATH"]["value"], str(APP / logging_conf["core"]["logging_conf_file"])]:
            mount, volume = mount_of(pod["spec"], container, path)
            shown = "configMap" in volume and str(PurePosixPath(path).relative_to(mount)) in configmap_keys(volume)
            check(shown and in_repo(path).is_file(), f"{container['name']}: {path} is no file of the ConfigMap")
        hidden = [m["mountPath"] for m in container["volumeMounts"] if m["mountPath"] in (str(APP), str(APP / "luigi.cfg"))]
        check(not hidden, f"{container['name']}: a volume hides the image's luigi.cfg")

    # Credentials: the platform's, never in a manifest.
    check(not any(d["kind"] == "Secret" for d in docs), "a Secret in the manifests")
    password = env(worker).get("PGPASSWORD", {})
    check(set(password.get("valueFrom", {})) == {"secretKeyRef"}, "workers: PGPASSWORD not from a Secret")
    check(
        not any("value" in e and re.search(r"PASSWORD|SECRET|KEY|TOKEN", e["name"]) for c in (luigid, worker) for e in c.get("env", [])),
        "a credential written as a value",
    )
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    account = accounts.get(worker_pod["spec"].get("serviceAccountName"), {})
    check(
        "iam.gke.io/gcp-service-account" in account.get("metadata", {}).get("annotations", {}),
        "workers: no Workload Identity service account",
    )
    check(
        workers["lake"]["root"].startswith("gs://") and "GOOGLE_APPLICATION_CREDENTIALS" not in env(worker),
        "workers: the lake's credentials not from Workload Identity",
    )

    # Our image, as the user it was built with, under kustomize's image name.
    names = {i["name"] for i in KUSTOMIZATION["images"]}
    for pod, container in [(luigid_pod, luigid), (worker_pod, worker)]:
        check(container["image"] in names, f"{container['name']}: image {container['image']} is not the kustomization's")
        context = pod["spec"]["securityContext"]
        check(
            context.get("runAsNonRoot") is True and context.get("runAsUser") == image_user(), f"{container['name']}: not the image's user"
        )
        check(container["securityContext"].get("allowPrivilegeEscalation") is False, f"{container['name']}: may escalate")
    return found


def test_the_manifests_agree_with_the_repo():
    assert mismatches(ALL) == []


DROP = object()


def _set(doc: dict, path: str, value) -> dict:
    """``doc`` with ``value`` at a dotted path (numbers index lists); DROP removes the field."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for p in parents:
        node = node[p]
    if value is DROP:
        del node[last]
    else:
        node[last] = value
    return doc


JOB = "spec.template.spec.containers.0"
LUIGID = "spec.template.spec.containers.0"
BROKEN = {
    "a task that does not exist": ("Job", f"{JOB}.args.0", "IngestRnage"),
    "a parameter the task does not have": ("Job", f"{JOB}.args.1", "--months"),
    "a profile that is not in config/": ("Job", f"{JOB}.env.0.value", "/app/config/kubernetes-prod.cfg"),
    "luigid reached by another name": ("Job", f"{JOB}.args.8", "scheduler"),
    "the password written in": ("Job", f"{JOB}.env.1", {"name": "PGPASSWORD", "value": "hunter2"}),
    "the Service opened outside": ("Service", "spec.type", "NodePort"),
    "luigid's port not the Service's": ("Deployment", f"{LUIGID}.args.1", "8083"),
    "luigid's state off its volume": ("Deployment", f"{LUIGID}.volumeMounts.0.mountPath", "/app/data/state"),
    "two luigids at once": ("Deployment", "spec.strategy.type", "RollingUpdate"),
    "a probe that is no RPC": ("Deployment", f"{LUIGID}.readinessProbe.httpGet.path", "/api/healthz"),
    "workers run as root": ("Job", "spec.template.spec.securityContext.runAsUser", 0),
    "an image of another name": ("Job", f"{JOB}.image", "nyc-tlc"),
}


@pytest.mark.parametrize("case", BROKEN, ids=str)
def test_a_manifest_that_names_something_wrong_is_found(case):
    kind, path, value = BROKEN[case]
    docs = [_set(d, path, value) if d["kind"] == kind else d for d in ALL]

    assert mismatches(docs), case


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", ALL, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_for_kubernetes_strictly(doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "kind, path, value",
    [
        ("Job", f"{JOB}.imagePullPolicyy", "Always"),  # a misspelt field
        ("Job", "spec.parallelism", "four"),  # a wrong type
        ("Deployment", "spec.template.spec.securityContext.runAsNonroot", True),  # a wrong case
        ("Job", f"{JOB}.name", DROP),  # a required field missing
    ],
    ids=["unknown field", "wrong type", "field in the wrong case", "required field missing"],
)
def test_a_wrong_field_is_refused(kind, path, value):
    doc = _set(next(d for d in ALL if d["kind"] == kind), path, value)

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def test_the_kustomization_lists_every_manifest_with_fields_kustomize_knows():
    known = {
        "apiVersion",
        "kind",
        "namespace",
        "resources",
        "images",
        "labels",
        "patches",
        "configMapGenerator",
        "secretGenerator",
        "generatorOptions",
    }

    assert set(KUSTOMIZATION) <= known
    assert (KUSTOMIZATION["apiVersion"], KUSTOMIZATION["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    assert sorted(KUSTOMIZATION["resources"]) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert only(ALL, "Namespace")["metadata"]["name"] == KUSTOMIZATION["namespace"]
    # Kustomize reads files in or below its folder only: nothing it generates reaches outside.
    for generator in KUSTOMIZATION.get("configMapGenerator", []) + KUSTOMIZATION.get("secretGenerator", []):
        assert all(not f.split("=")[-1].startswith("..") for f in generator.get("files", []))


def test_the_guide_creates_the_secret_and_configmap_the_pods_read():
    """docs/scaling.md's kubectl commands make what the manifests reference, by the same names."""
    commands = [line.strip() for line in GUIDE.read_text().splitlines() if line.strip().startswith("kubectl create")]
    namespace = KUSTOMIZATION["namespace"]
    worker_pod = only(ALL, "Job")["spec"]["template"]["spec"]
    secret = env(worker_pod["containers"][0])["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    (config,) = {
        v["configMap"]["name"]
        for d in ALL
        if d["kind"] in ("Deployment", "Job")
        for v in d["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    }

    assert f"kubectl create secret generic {secret['name']} --namespace {namespace} --from-file={secret['key']}=" in " ".join(commands)
    assert f"kubectl create configmap {config} --namespace {namespace} --from-file=config/" in commands
    assert f"kubectl apply -k {DEPLOY.relative_to(ROOT)}" in GUIDE.read_text()


def test_luigid_started_as_its_pod_starts_it_answers_its_probe_with_the_caps_and_keeps_its_state(tmp_path):
    """The Deployment's command, arguments and profile in the image's layout (luigi.cfg in the
    working directory, config/ as the ConfigMap shows it): the readiness probe's RPC answers with
    luigi.cfg's [resources], and a stop (SIGTERM, as Kubernetes stops a pod) writes the state file
    on the claim's mount. Only the address is the test's: 127.0.0.1 and a free port."""
    deployment = only(ALL, "Deployment", "luigid")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    app = tmp_path / "app"
    app.mkdir()
    (app / "luigi.cfg").write_bytes((ROOT / "luigi.cfg").read_bytes())
    (app / "config").mkdir()
    for name in configmap_keys(next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v)):
        (app / "config" / name).write_bytes((ROOT / "config" / name).read_bytes())
    here = {str(APP): str(app)}

    def local(word: str) -> str:
        return here[str(APP)] + word.removeprefix(str(APP)) if word.startswith(str(APP)) else word

    args = [local(a) for a in container["args"]]
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    for mount in container["volumeMounts"]:  # the volumes exist before the container starts
        Path(local(mount["mountPath"])).mkdir(parents=True, exist_ok=True)
    environment = {"PATH": f"{BIN}:/usr/bin:/bin", "LUIGI_CONFIG_PATH": local(env(container)["LUIGI_CONFIG_PATH"]["value"])}
    luigid = subprocess.Popen(
        [BIN / container["command"][0], *container["command"][1:], *args, "--address", "127.0.0.1"],
        cwd=app,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        probe = f"http://127.0.0.1:{port}{container['readinessProbe']['httpGet']['path']}"
        _wait_http(probe, luigid, 30, "luigid")
        with urllib.request.urlopen(probe, timeout=5) as answer:
            caps = {r["name"]: r["num_total"] for r in json.load(answer)["response"]}
        # docs/scaling.md's way to raise a cap in the running luigid (its curl -G --data-urlencode).
        raise_cap = urllib.parse.urlencode({"data": json.dumps({"resource": "postgres", "amount": 4})})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/update_resource?{raise_cap}", timeout=5) as answer:
            raised = json.load(answer)["response"]
        with urllib.request.urlopen(probe, timeout=5) as answer:
            raised_caps = {r["name"]: r["num_total"] for r in json.load(answer)["response"]}
    finally:
        luigid.send_signal(signal.SIGTERM)
        stderr = luigid.communicate(timeout=30)[1].decode()

    shipped = configparser.ConfigParser()
    shipped.read(ROOT / "luigi.cfg")
    assert caps == {name: int(value) for name, value in shipped["resources"].items()}, stderr
    assert raised is True and raised_caps == {**caps, "postgres": 4}
    scheduler = configparser.ConfigParser()
    scheduler.read(ROOT / "config" / "luigid.cfg")
    state = app / scheduler["scheduler"]["state_path"]
    assert state.is_file(), stderr
    assert any(state.is_relative_to(local(m["mountPath"])) for m in container["volumeMounts"] if m["name"] == "state")


def test_the_compose_stacks_luigid_reads_the_same_caps():
    """The compose stack's luigid runs the same image the same way: in the image's working
    directory, where the Dockerfile puts luigi.cfg, so its [resources] apply there too."""
    luigid = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["luigid"]
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    workdir = [line.split()[1] for line in dockerfile if line.startswith("WORKDIR ")][-1]

    assert luigid["entrypoint"] == ["python", "-m", "pipeline.luigid"] and "working_dir" not in luigid
    assert workdir == str(APP) and "COPY luigi.cfg ./" in dockerfile
    assert dockerfile.index("COPY luigi.cfg ./") > max(i for i, line in enumerate(dockerfile) if line.startswith("WORKDIR "))
    assert (
        luigid["environment"]["LUIGI_CONFIG_PATH"]
        == env(only(ALL, "Deployment")["spec"]["template"]["spec"]["containers"][0])["LUIGI_CONFIG_PATH"]["value"]
    )
