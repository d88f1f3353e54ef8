#!/usr/bin/python3
"""Checks that the service deployment files under deploy/ agree with the built rcknn-server:

- deploy/systemd/rcknn-server.service, deploy/docker/Dockerfile and deploy/kubernetes/rcknn.yaml
  use only flags the binary knows (from `rcknn-server --helpfull`), in their commands and in the
  commented TLS examples;
- the ports of --listen / --metrics_listen are the ones the Dockerfile EXPOSEs, the container
  ports, the Services' target ports, the gRPC probes and the Prometheus annotations (whose path
  is deploy/prometheus/prometheus.yml's), and the same in all three files;
- --data_dir is StateDirectory (and in ReadWritePaths), the Dockerfile's VOLUME and the mount
  path of the StatefulSet's volume claim;
- --max_memory_bytes is explicit and below the container memory limit (and MemoryMax= when the
  unit sets one), --threads is within the CPU limit, TimeoutStopSec and
  terminationGracePeriodSeconds exceed --shutdown_grace;
- the Kubernetes YAML parses into the expected kinds with their required fields (selectors match
  the template labels, volume mounts name a claim template or a volume, serviceName a headless
  Service), non-root and read-only-root security contexts, and the image user is the pod's;
- the Dockerfile builds portable Release binaries with deploy/install_deps.sh, and its runtime
  stage installs exactly the Debian packages of the libraries the binaries link (ldd, dpkg -S);
- `systemd-analyze verify` accepts the unit (when systemd-analyze is installed);
- the real binary starts with the unit's, the image's and the StatefulSet's flags (addresses on
  127.0.0.1:0, a temporary data directory), prints "listening on", answers the health checks the
  probes make with SERVING, serves /metrics, and exits 0 on SIGTERM.

--self-test runs the static checks on doctored copies (an unknown flag, a wrong port, a memory
limit below the budget, ...) and fails unless each one is rejected.

Usage: check_deploy_files.py --server rcknn-server [--client rcknn] [--repo DIR] [--self-test]
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

UNIT = os.path.join("deploy", "systemd", "rcknn-server.service")
DOCKERFILE = os.path.join("deploy", "docker", "Dockerfile")
KUBERNETES = os.path.join("deploy", "kubernetes", "rcknn.yaml")
PROMETHEUS = os.path.join("deploy", "prometheus", "prometheus.yml")
DOCKERIGNORE = ".dockerignore"
# Health services the probes may name: the server's overall status and its API service.
HEALTH_SERVICES = {"", "rcknn.v1.Rcknn"}
# Packages of debian:bookworm-slim itself, which the runtime stage need not install.
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}
# Runtimes a sanitizer build links; a Release image has none of them.
SANITIZER_PACKAGE = re.compile(r"^lib(asan|ubsan|tsan|lsan)\d*$")
# Fields of a Kubernetes v1 Container: a misspelt key (`readinesProbe`) would be silently ignored.
CONTAINER_FIELDS = {
    "name", "image", "command", "args", "workingDir", "ports", "envFrom", "env", "resources",
    "resizePolicy", "restartPolicy", "volumeMounts", "volumeDevices", "livenessProbe",
    "readinessProbe", "startupProbe", "lifecycle", "terminationMessagePath",
    "terminationMessagePolicy", "imagePullPolicy", "securityContext", "stdin", "stdinOnce", "tty",
}
# Commented examples of server flags: lines like `#   --tls_cert=...` or `# - --tls_cert=...`.
COMMENTED_FLAGS = re.compile(r"^\s*#\s*(?:-\s+)?--[A-Za-z0-9_]+=")


class Flags:
    """Flags of one command line: `--name=value` only."""

    def __init__(self, where, args, errors):
        self.values = {}
        for arg in args:
            match = re.fullmatch(r"--([A-Za-z0-9_]+)=(.*)", arg, re.S)
            if not match:
                errors.append(f"{where}: argument {arg!r} is not of the form --flag=value")
                continue
            self.values[match.group(1)] = match.group(2)
        self.where = where


def server_flags(server):
    """Names and defaults of the flags rcknn-server knows, from --helpfull."""
    result = subprocess.run([server, "--helpfull"], capture_output=True, text=True, timeout=30)
    text = result.stdout + result.stderr
    names = re.findall(r"^\s+--([A-Za-z0-9_]+) \(", text, re.M)
    defaults = {}
    # Each flag's help ends with `default: VALUE;` (strings quoted).
    for name, body in re.findall(r"^\s+--([A-Za-z0-9_]+) \((.*?)(?=^\s+--[A-Za-z0-9_]+ \(|\Z)",
                                 text, re.M | re.S):
        match = re.search(r"default: (.*?);\s*$", body, re.S)
        if match:
            defaults[name] = match.group(1).strip().strip('"')
    if "listen" not in names or "data_dir" not in names:
        raise RuntimeError(f"{server} --helpfull lists no --listen/--data_dir:\n{text}")
    return set(names), defaults


def parse_duration(text):
    """Seconds of an absl::Duration flag value such as 10s, 1m30s, 500ms."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(a) * units[b] for a, b in parts)


def parse_timespan(text):
    """Seconds of a systemd time span such as 30, 30s, 1min 30s."""
    units = {"us": 1e-6, "ms": 1e-3, "": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600,
             "hr": 3600}
    total = 0.0
    for word in text.split():
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", word)
        if not match or match.group(2) not in units:
            raise ValueError(f"not a time span: {text!r}")
        total += float(match.group(1)) * units[match.group(2)]
    return total


def parse_quantity(text):
    """Bytes (or cores) of a Kubernetes quantity such as 8Gi, 8G, 2, 1500m."""
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9,
                "T": 1e12, "m": 1e-3, "": 1}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(text))
    if not match or match.group(2) not in suffixes:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match.group(1)) * suffixes[match.group(2)]


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def host_of(address):
    return address.rsplit(":", 1)[0]


def commented_flags(path, text, known, errors):
    for number, line in enumerate(text.splitlines(), 1):
        if not COMMENTED_FLAGS.match(line):
            continue
        for name in re.findall(r"--([A-Za-z0-9_]+)=", line):
            if name not in known:
                errors.append(f"{path}:{number}: commented example uses --{name}, which "
                              "rcknn-server does not know")


def check_flags(flags, known, defaults, errors):
    for name in flags.values:
        if name not in known:
            errors.append(f"{flags.where}: --{name} is not a flag rcknn-server knows")
    for name in ("listen", "metrics_listen", "data_dir"):
        if name not in flags.values:
            errors.append(f"{flags.where}: --{name} must be given explicitly")
    for name in ("listen", "metrics_listen"):
        value = flags.values.get(name, "")
        if not re.fullmatch(r".+:\d+", value):
            errors.append(f"{flags.where}: --{name}={value!r} is not host:port")
    if not os.path.isabs(flags.values.get("data_dir", "")):
        errors.append(f"{flags.where}: --data_dir must be an absolute path")


def grace_seconds(flags, defaults):
    return parse_duration(flags.values.get("shutdown_grace", defaults.get("shutdown_grace",
                                                                         "10s")))


# ---- systemd -------------------------------------------------------------------------------

def parse_unit(text):
    """{section: {key: [values]}} of a systemd unit, continuation lines joined."""
    sections = {}
    current = None
    logical = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    for line in logical:
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def check_unit(repo, known, defaults, errors):
    path = os.path.join(repo, UNIT)
    with open(path) as f:
        text = f.read()
    commented_flags(UNIT, text, known, errors)
    unit = parse_unit(text)
    service = unit.get("Service", {})

    def one(key):
        values = service.get(key, [])
        return values[-1] if values else None

    exec_start = [v for v in service.get("ExecStart", []) if v]
    if len(exec_start) != 1:
        errors.append(f"{UNIT}: needs exactly one ExecStart")
        return None
    argv = shlex.split(exec_start[0])
    if os.path.basename(argv[0]) != "rcknn-server" or not os.path.isabs(argv[0]):
        errors.append(f"{UNIT}: ExecStart runs {argv[0]!r}, not an absolute path to rcknn-server")
    flags = Flags(f"{UNIT} ExecStart", argv[1:], errors)
    check_flags(flags, known, defaults, errors)
    data_dir = flags.values.get("data_dir", "")
    if one("User") in (None, "root", "0"):
        errors.append(f"{UNIT}: User= must name a dedicated user")
    state = one("StateDirectory")
    if not state or data_dir != "/var/lib/" + state:
        errors.append(f"{UNIT}: --data_dir={data_dir} is not /var/lib/<StateDirectory={state}>")
    if data_dir not in " ".join(service.get("ReadWritePaths", [])).split():
        errors.append(f"{UNIT}: --data_dir={data_dir} is not in ReadWritePaths")
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("Restart", "on-failure")):
        if one(key) != value:
            errors.append(f"{UNIT}: {key}={one(key)}, expected {value}")
    if not one("LimitNOFILE"):
        errors.append(f"{UNIT}: LimitNOFILE= missing")
    if one("KillSignal") not in (None, "SIGTERM", "TERM", "15"):
        errors.append(f"{UNIT}: KillSignal={one('KillSignal')}: the server drains on SIGTERM")
    grace = grace_seconds(flags, defaults)
    stop = one("TimeoutStopSec")
    if stop is None or parse_timespan(stop) <= grace:
        errors.append(f"{UNIT}: TimeoutStopSec={stop} must exceed --shutdown_grace ({grace} s)")
    memory_max = one("MemoryMax")
    if memory_max and memory_max != "infinity":
        budget = int(flags.values.get("max_memory_bytes", "0"))
        if not 0 < budget < parse_quantity(memory_max.replace("K", "Ki").replace("M", "Mi")
                                           .replace("G", "Gi").replace("T", "Ti")):
            errors.append(f"{UNIT}: --max_memory_bytes={budget} must be set below "
                          f"MemoryMax={memory_max}")
    return flags


def verify_unit(repo, server, errors):
    """systemd-analyze verify on a copy whose ExecStart names the built binary."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("check_deploy_files.py: systemd-analyze not installed; unit syntax not verified")
        return
    with open(os.path.join(repo, UNIT)) as f:
        text = f.read()
    text = re.sub(r"^ExecStart=\S+", "ExecStart=" + os.path.abspath(server), text, flags=re.M)
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "rcknn-server.service")
        with open(copy, "w") as f:
            f.write(text)
        result = subprocess.run([analyze, "verify", copy], capture_output=True, text=True,
                                timeout=60)
        output = result.stdout + result.stderr
        if result.returncode != 0 or "rcknn-server.service" in output:
            errors.append(f"{UNIT}: systemd-analyze verify:\n{output}")


# ---- Dockerfile ----------------------------------------------------------------------------

def parse_dockerfile(text):
    """Stages: [{'from': str, 'name': str, 'instructions': [(KEYWORD, argument)]}]."""
    stages = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        keyword, _, argument = line.partition(" ")
        keyword = keyword.upper()
        argument = argument.strip()
        if keyword == "FROM":
            words = argument.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"from": words[0], "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, argument))
    return stages


def apt_packages(run):
    """Packages named by `apt-get install` in one RUN argument."""
    packages = []
    for command in re.split(r"&&|;", run):
        words = command.split()
        if "apt-get" in words and "install" in words:
            packages += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return packages


def linked_packages(binaries, errors):
    """Debian packages that ship the shared libraries the binaries link (one dpkg -S call)."""
    libraries = set()
    for binary in binaries:
        result = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30)
        libraries.update(re.findall(r"=> (/\S+)", result.stdout))
    candidates = sorted(libraries | {os.path.realpath(lib) for lib in libraries})
    query = subprocess.run(["dpkg", "-S"] + candidates, capture_output=True, text=True)
    owners = {}
    for line in query.stdout.splitlines():
        package, _, path = line.partition(": ")
        owners[path.strip()] = package.split(":")[0]
    packages = set()
    for library in sorted(libraries):
        owner = owners.get(library) or owners.get(os.path.realpath(library))
        if owner is None:
            errors.append(f"{' and '.join(binaries)} link {library}, which no Debian package "
                          "ships")
        elif not SANITIZER_PACKAGE.match(owner):
            packages.add(owner)
    return packages


def check_dockerfile(repo, known, defaults, binaries, errors):
    with open(os.path.join(repo, DOCKERFILE)) as f:
        text = f.read()
    commented_flags(DOCKERFILE, text, known, errors)
    stages = parse_dockerfile(text)
    if len(stages) < 2:
        errors.append(f"{DOCKERFILE}: expected a build stage and a runtime stage")
        return None
    for stage in stages:
        if not stage["from"].startswith("debian:bookworm"):
            errors.append(f"{DOCKERFILE}: stage FROM {stage['from']} is not Debian 12 (bookworm)")
    build = " ".join(a for k, a in stages[0]["instructions"] if k == "RUN").split()
    for needle in ("deploy/install_deps.sh", "-DRCKNN_NATIVE=OFF", "-DCMAKE_BUILD_TYPE=Release"):
        if needle not in build:
            errors.append(f"{DOCKERFILE}: the build stage does not run {needle}")
    targets = set()
    for i, word in enumerate(build):
        if word == "--target":
            for target in build[i + 1:]:
                if target.startswith("-") or target == "&&":
                    break
                targets.add(target)
    if not {"rcknn-server", "rcknn"} <= targets:
        errors.append(f"{DOCKERFILE}: the build stage builds {sorted(targets)}, not rcknn-server "
                      "and rcknn")
    runtime = stages[-1]["instructions"]

    def last(keyword):
        values = [a for k, a in runtime if k == keyword]
        return values[-1] if values else None

    copies = " ".join(a for k, a in runtime if k == "COPY")
    if f"--from={stages[0]['name']}" not in copies or "rcknn-server" not in copies:
        errors.append(f"{DOCKERFILE}: the runtime stage does not copy rcknn-server from the build "
                      "stage")
    user = last("USER")
    if user is None or user.split(":")[0] in ("root", "0"):
        errors.append(f"{DOCKERFILE}: the runtime stage must run as a non-root USER (uid:gid)")
    try:
        entrypoint = json.loads(last("ENTRYPOINT") or "null")
        cmd = json.loads(last("CMD") or "null")
    except json.JSONDecodeError as e:
        errors.append(f"{DOCKERFILE}: ENTRYPOINT and CMD must be JSON arrays ({e})")
        return None
    if not entrypoint or os.path.basename(entrypoint[0]) != "rcknn-server":
        errors.append(f"{DOCKERFILE}: ENTRYPOINT {entrypoint} does not run rcknn-server")
        return None
    flags = Flags(f"{DOCKERFILE} ENTRYPOINT+CMD", entrypoint[1:] + (cmd or []), errors)
    check_flags(flags, known, defaults, errors)
    for name in ("listen", "metrics_listen"):
        if host_of(flags.values.get(name, ":0")) not in ("0.0.0.0", "[::]"):
            errors.append(f"{DOCKERFILE}: --{name} must listen on 0.0.0.0 in a container")
    volumes = []
    for argument in (a for k, a in runtime if k == "VOLUME"):
        volumes += json.loads(argument) if argument.startswith("[") else argument.split()
    if flags.values.get("data_dir") not in volumes:
        errors.append(f"{DOCKERFILE}: --data_dir={flags.values.get('data_dir')} is not a VOLUME "
                      f"({volumes})")
    exposed = {int(p.split("/")[0]) for k, a in runtime if k == "EXPOSE" for p in a.split()}
    wanted = {port_of(flags.values.get(n, ":0")) for n in ("listen", "metrics_listen")}
    if exposed != wanted:
        errors.append(f"{DOCKERFILE}: EXPOSE {sorted(exposed)} is not the --listen and "
                      f"--metrics_listen ports {sorted(wanted)}")
    if last("STOPSIGNAL") not in (None, "SIGTERM"):
        errors.append(f"{DOCKERFILE}: STOPSIGNAL must be SIGTERM (the server drains on it)")
    installed = set()
    for k, a in runtime:
        if k == "RUN":
            installed.update(apt_packages(a))
    if binaries:
        needed = linked_packages(binaries, errors) - BASE_IMAGE_PACKAGES
        for package in sorted(needed - installed):
            errors.append(f"{DOCKERFILE}: the runtime stage does not install {package}, which "
                          "ships a library the binaries link")
        for package in sorted(installed - needed):
            errors.append(f"{DOCKERFILE}: the runtime stage installs {package}, which ships no "
                          "library the binaries link")
    with open(os.path.join(repo, DOCKERIGNORE)) as f:
        ignored = {line.strip().rstrip("/") for line in f if line.strip()}
    for pattern in ("build*", "rcknn-data"):
        if pattern not in ignored:
            errors.append(f"{DOCKERIGNORE}: does not exclude {pattern}/")
    return flags, user


# ---- Kubernetes ----------------------------------------------------------------------------

def check_kubernetes(repo, known, defaults, errors):
    with open(os.path.join(repo, KUBERNETES)) as f:
        text = f.read()
    commented_flags(KUBERNETES, text, known, errors)
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    expected = {("v1", "Service"), ("apps/v1", "StatefulSet")}
    for doc in documents:
        if not isinstance(doc, dict) or not all(doc.get(k) for k in ("apiVersion", "kind",
                                                                     "metadata", "spec")):
            errors.append(f"{KUBERNETES}: a document lacks apiVersion, kind, metadata or spec")
            return None
        if (doc["apiVersion"], doc["kind"]) not in expected:
            errors.append(f"{KUBERNETES}: unexpected {doc['apiVersion']} {doc['kind']}")
        if not doc["metadata"].get("name"):
            errors.append(f"{KUBERNETES}: {doc['kind']} without metadata.name")
    sets = [d for d in documents if d.get("kind") == "StatefulSet"]
    services = {d["metadata"].get("name"): d for d in documents if d.get("kind") == "Service"}
    if len(sets) != 1 or not services:
        errors.append(f"{KUBERNETES}: expected one StatefulSet and its Services")
        return None
    sts = sets[0]
    spec = sts["spec"]
    where = f"{KUBERNETES} StatefulSet {sts['metadata']['name']}"
    if spec.get("replicas") != 1:
        errors.append(f"{where}: replicas must be 1 (one server per data directory)")
    template = spec.get("template", {})
    labels = template.get("metadata", {}).get("labels", {})
    match_labels = spec.get("selector", {}).get("matchLabels", {})
    if not match_labels or any(labels.get(k) != v for k, v in match_labels.items()):
        errors.append(f"{where}: selector.matchLabels {match_labels} do not match the template "
                      f"labels {labels}")
    governing = services.get(spec.get("serviceName"))
    if governing is None or governing["spec"].get("clusterIP") != "None":
        errors.append(f"{where}: serviceName {spec.get('serviceName')!r} is not a headless "
                      "Service of this file")
    pod = template.get("spec", {})
    containers = pod.get("containers") or []
    if len(containers) != 1:
        errors.append(f"{where}: expected one container")
        return None
    container = containers[0]
    for key in sorted(set(container) - CONTAINER_FIELDS):
        errors.append(f"{where}: container field {key!r} is not a Kubernetes Container field")
    flags = Flags(f"{where} args", [str(a) for a in container.get("args", [])], errors)
    check_flags(flags, known, defaults, errors)
    listen = port_of(flags.values.get("listen", ":0"))
    metrics = port_of(flags.values.get("metrics_listen", ":0"))
    for name in ("listen", "metrics_listen"):
        if host_of(flags.values.get(name, ":0")) not in ("0.0.0.0", "[::]"):
            errors.append(f"{where}: --{name} must listen on 0.0.0.0 in a pod")
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    if sorted(ports.values()) != sorted([listen, metrics]):
        errors.append(f"{where}: containerPorts {ports} are not the --listen and "
                      f"--metrics_listen ports {listen}, {metrics}")

    def resolve(port):
        return ports.get(port) if isinstance(port, str) else port

    probes = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe is None:
            if kind != "startupProbe":
                errors.append(f"{where}: {kind} missing")
            continue
        grpc = probe.get("grpc")
        if grpc is None:
            errors.append(f"{where}: {kind} is not Kubernetes' gRPC probe")
            continue
        if grpc.get("port") != listen:
            errors.append(f"{where}: {kind} port {grpc.get('port')} is not --listen's {listen}")
        service = grpc.get("service", "")
        if service not in HEALTH_SERVICES:
            errors.append(f"{where}: {kind} asks for health service {service!r}; the server "
                          f"reports {sorted(HEALTH_SERVICES)}")
        probes[kind] = service
    claims = [c.get("metadata", {}).get("name") for c in spec.get("volumeClaimTemplates") or []]
    volumes = [v.get("name") for v in pod.get("volumes") or []]
    mounts = {m.get("mountPath"): m.get("name") for m in container.get("volumeMounts", [])}
    for path, name in mounts.items():
        if name not in claims and name not in volumes:
            errors.append(f"{where}: volumeMount {name!r} at {path} is neither a "
                          f"volumeClaimTemplate {claims} nor a volume {volumes}")
    data_dir = flags.values.get("data_dir")
    if mounts.get(data_dir) not in claims:
        errors.append(f"{where}: --data_dir={data_dir} is not the mount path of a "
                      f"volumeClaimTemplate {claims} (mounts {mounts})")
    limits = container.get("resources", {}).get("limits", {})
    budget = int(flags.values.get("max_memory_bytes", "0"))
    if "memory" not in limits:
        errors.append(f"{where}: resources.limits.memory missing")
    else:
        limit = parse_quantity(limits["memory"])
        if not 0 < budget <= 0.9 * limit:
            errors.append(f"{where}: --max_memory_bytes={budget} must be explicit and leave "
                          f"headroom below the memory limit {limits['memory']} ({limit:.0f} "
                          "bytes; at most 90%)")
    threads = int(flags.values.get("threads", "0"))
    if "cpu" in limits and not 1 <= threads <= max(1, parse_quantity(limits["cpu"])):
        errors.append(f"{where}: --threads={threads} must be explicit and within the CPU limit "
                      f"{limits['cpu']}")
    grace = grace_seconds(flags, defaults)
    if not pod.get("terminationGracePeriodSeconds", 30) > grace:
        errors.append(f"{where}: terminationGracePeriodSeconds "
                      f"{pod.get('terminationGracePeriodSeconds', 30)} must exceed "
                      f"--shutdown_grace ({grace} s)")
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
            and security.get("readOnlyRootFilesystem") is True
            and security.get("allowPrivilegeEscalation") is False):
        errors.append(f"{where}: needs runAsNonRoot, readOnlyRootFilesystem and no privilege "
                      "escalation")
    with open(os.path.join(repo, PROMETHEUS)) as f:
        prometheus = yaml.safe_load(f)
    job = next((j for j in prometheus.get("scrape_configs", []) if j.get("job_name") == "rcknn"),
               {})
    metrics_path = job.get("metrics_path", "/metrics")
    scraped = False
    for name, service in services.items():
        swhere = f"{KUBERNETES} Service {name}"
        selector = service["spec"].get("selector", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            errors.append(f"{swhere}: selector {selector} does not match the pod labels {labels}")
        for port in service["spec"].get("ports", []):
            target = resolve(port.get("targetPort", port.get("port")))
            if target not in (listen, metrics) or port.get("port") != target:
                errors.append(f"{swhere}: port {port.get('name')} ({port.get('port')} -> "
                              f"{port.get('targetPort')}) is not the gRPC or metrics port")
        annotations = service["metadata"].get("annotations") or {}
        if annotations.get("prometheus.io/scrape") == "true":
            scraped = True
            if annotations.get("prometheus.io/port") != str(metrics):
                errors.append(f"{swhere}: prometheus.io/port is not --metrics_listen's {metrics}")
            if annotations.get("prometheus.io/path", "/metrics") != metrics_path:
                errors.append(f"{swhere}: prometheus.io/path is not {metrics_path} "
                              f"({PROMETHEUS})")
            numbers = {p.get("port") for p in service["spec"].get("ports", [])}
            if not {listen, metrics} <= numbers:
                errors.append(f"{swhere}: must expose the gRPC and metrics ports")
    if not scraped:
        errors.append(f"{KUBERNETES}: no Service carries prometheus.io/scrape: \"true\"")
    return flags, probes, pod_security


def check_static(repo, server, binaries):
    """Every static check; returns (errors, command lines to start, probe services)."""
    errors = []
    known, defaults = server_flags(server)
    unit = check_unit(repo, known, defaults, errors)
    docker = check_dockerfile(repo, known, defaults, binaries, errors)
    kube = check_kubernetes(repo, known, defaults, errors)
    if unit and docker and kube:
        docker_flags, user = docker
        kube_flags, probes, pod_security = kube
        triples = {f.where: (port_of(f.values.get("listen", ":0")),
                             port_of(f.values.get("metrics_listen", ":0")))
                   for f in (unit, docker_flags, kube_flags)}
        if len(set(triples.values())) != 1:
            errors.append(f"the gRPC and metrics ports differ between the files: {triples}")
        uid, _, gid = user.partition(":")
        if (str(pod_security.get("runAsUser")) != uid
                or (gid and str(pod_security.get("runAsGroup")) != gid)):
            errors.append(f"{KUBERNETES}: runAsUser/runAsGroup "
                          f"{pod_security.get('runAsUser')}:{pod_security.get('runAsGroup')} "
                          f"are not the image's USER {user}")
        return errors, [unit, docker_flags, kube_flags], probes
    return errors, [], {}


# ---- live run ------------------------------------------------------------------------------

def health_check(address, service):
    """grpc.health.v1.Health/Check; returns the status number (1: SERVING)."""
    import grpc  # python3-grpcio; raw bytes, so that no generated stubs are needed
    encoded = service.encode()
    request = (b"\x0a" + bytes([len(encoded)]) + encoded) if encoded else b""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check")
        response = call(request, timeout=10)
    return response[1] if response[:1] == b"\x08" else 0  # field 1 (status), 0 = UNKNOWN


def run_live(server, flags, probes, errors):
    with tempfile.TemporaryDirectory() as data_dir:
        values = dict(flags.values, listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
                      data_dir=data_dir)
        argv = [server] + [f"--{k}={v}" for k, v in values.items()]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        lines = []
        errors_before = len(errors)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                line = process.stderr.readline()
                if not line:
                    break
                lines.append(line)
                if "listening on" in line:
                    break
            log = "".join(lines)
            grpc_address = re.search(r"listening on (\S+)", log)
            metrics_url = re.search(r"metrics at (\S+)", log)
            if not grpc_address or not metrics_url:
                errors.append(f"{flags.where}: the server did not start with {argv[1:]}:\n{log}")
                return
            for kind, service in sorted(probes.items()):
                try:
                    status = health_check(grpc_address.group(1), service)
                except Exception as e:  # grpc.RpcError: the probe would fail too
                    status = f"{type(e).__name__}: {e}"
                if status != 1:
                    errors.append(f"{flags.where}: {kind} health check of {service!r} answered "
                                  f"status {status}, not SERVING")
            with urllib.request.urlopen(metrics_url.group(1), timeout=10) as response:
                if b"rcknn_queries_total" not in response.read():
                    errors.append(f"{flags.where}: {metrics_url.group(1)} has no rcknn metrics")
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            if code != 0:
                errors.append(f"{flags.where}: exit code {code} after SIGTERM")
            elif len(errors) == errors_before:
                print(f"check_deploy_files.py: {flags.where}: started, healthy, stopped cleanly")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


# ---- self-test -----------------------------------------------------------------------------

DOCTORS = [
    ("unit: unknown flag", UNIT, "    --threads=0 \\\n", "    --threads=0 \\\n    --thread=4 \\\n"),
    ("unit: commented unknown flag", UNIT, "#     --tls_key=", "#     --tls_private_key="),
    ("unit: TimeoutStopSec below the grace", UNIT, "TimeoutStopSec=30s", "TimeoutStopSec=5s"),
    ("unit: data_dir not the StateDirectory", UNIT, "StateDirectory=rcknn",
     "StateDirectory=rcknn-server"),
    ("unit: bogus directive", UNIT, "ProtectHome=yes", "ProtectHome=yes\nProtectEverything=yes"),
    ("docker: unknown flag", DOCKERFILE, '"--shutdown_grace=10s"', '"--shutdown_grace_s=10"'),
    ("docker: EXPOSE wrong port", DOCKERFILE, "EXPOSE 50051 9464", "EXPOSE 50052 9464"),
    ("docker: VOLUME not the data dir", DOCKERFILE, "VOLUME /var/lib/rcknn", "VOLUME /data"),
    ("docker: runtime package missing", DOCKERFILE, "        libtbb12 \\\n", ""),
    ("docker: native build", DOCKERFILE, "-DRCKNN_NATIVE=OFF \\\n", "-DRCKNN_NATIVE=ON \\\n"),
    ("kubernetes: unknown flag", KUBERNETES, "- --threads=2", "- --query_threads=2"),
    ("kubernetes: commented unknown flag", KUBERNETES, "# - --tls_client_ca=", "# - --tls_ca="),
    ("kubernetes: memory limit below the budget", KUBERNETES,
     "            limits:\n              cpu: \"2\"\n              memory: 8Gi",
     "            limits:\n              cpu: \"2\"\n              memory: 6Gi"),
    ("kubernetes: grace period below --shutdown_grace", KUBERNETES,
     "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 5"),
    ("kubernetes: claim template renamed", KUBERNETES, "    - metadata:\n        name: data",
     "    - metadata:\n        name: state"),
    ("kubernetes: probe on the metrics port", KUBERNETES,
     "livenessProbe:\n            grpc:\n              port: 50051",
     "livenessProbe:\n            grpc:\n              port: 9464"),
    ("kubernetes: selector does not match", KUBERNETES,
     "    matchLabels:\n      app.kubernetes.io/name: rcknn",
     "    matchLabels:\n      app.kubernetes.io/name: rcknn-server"),
    ("kubernetes: scrape port wrong", KUBERNETES, 'prometheus.io/port: "9464"',
     'prometheus.io/port: "9090"'),
    ("kubernetes: misspelt container field", KUBERNETES, "readinessProbe:", "readinesProbe:"),
    ("kubernetes: unknown health service", KUBERNETES, "service: rcknn.v1.Rcknn",
     "service: rcknn.Rcknn"),
]


def self_test(repo, server, binaries):
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for relative in (UNIT, DOCKERFILE, KUBERNETES, PROMETHEUS, DOCKERIGNORE):
            os.makedirs(os.path.join(tmp, os.path.dirname(relative)), exist_ok=True)
        errors, _, _ = check_static(repo, server, binaries)
        if errors:
            failures.append("the undoctored files fail: " + "; ".join(errors))
        analyze = shutil.which("systemd-analyze") is not None
        for name, relative, needle, replacement in DOCTORS:
            if name == "unit: bogus directive" and not analyze:
                continue
            for other in (UNIT, DOCKERFILE, KUBERNETES, PROMETHEUS, DOCKERIGNORE):
                shutil.copyfile(os.path.join(repo, other), os.path.join(tmp, other))
            path = os.path.join(tmp, relative)
            with open(path) as f:
                text = f.read()
            if needle not in text:
                failures.append(f"{name}: {relative} no longer contains {needle!r}")
                continue
            with open(path, "w") as f:
                f.write(text.replace(needle, replacement, 1))
            errors, _, _ = check_static(tmp, server, binaries)
            if name.startswith("unit:"):
                verify_unit(tmp, server, errors)
            if errors:
                print(f"self-test {name}: rejected ({errors[0].splitlines()[0]})")
            else:
                failures.append(f"{name}: the doctored copy was accepted")
    for failure in failures:
        print("check_deploy_files.py --self-test: " + failure, file=sys.stderr)
    return 1 if failures else 0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(here)))
    parser.add_argument("--server", required=True, help="the built rcknn-server")
    parser.add_argument("--client", help="the built rcknn tool (its libraries go in the image)")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    binaries = [args.server] + ([args.client] if args.client else [])
    if args.self_test:
        return self_test(args.repo, args.server, binaries)
    errors, command_lines, probes = check_static(args.repo, args.server, binaries)
    verify_unit(args.repo, args.server, errors)
    if not errors:
        for flags in command_lines:
            run_live(args.server, flags, probes, errors)
    for error in errors:
        print("check_deploy_files.py: " + error, file=sys.stderr)
    if errors:
        return 1
    print("check_deploy_files.py: systemd unit, Dockerfile and Kubernetes manifests agree with "
          f"{args.server}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
