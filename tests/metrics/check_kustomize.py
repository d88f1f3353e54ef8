#!/usr/bin/python3
"""Checks deploy/kubernetes/base and overlays/sharded (rcknn-router over rcknn-server shards).

1. Rendering: each kustomization is rendered by a small renderer of the features it uses
   (resources, JSON 6902 `replace`/`add` patches with a target) and, when kubectl is installed,
   by `kubectl kustomize` too; the two renders must hold the same objects. (kubectl is not a
   Debian package, so deploy/install_deps.sh does not install it; without it only the small
   renderer runs, and the check says so.)
2. Schemas: every rendered object is validated against the Kubernetes OpenAPI schemas of the npm
   package kubernetes-models (tools/node_modules, installed by deploy/install_deps.sh) by
   validate_kubernetes.mjs: types, required fields, enums, formats. Those schemas, like the API
   server's, allow fields they do not list, so:
3. Structure (what the schema does not catch or the API server would silently ignore): apiVersion/kind pairs
   known for Service, StatefulSet, Deployment and PodDisruptionBudget; metadata.name; selectors
   that match their pod templates (workloads and PDBs); a StatefulSet governed by a headless
   Service of the render, with volume claims that its container mounts; container fields that
   exist in a v1 Container; requests and limits for cpu and memory; gRPC probes on the
   container's gRPC port; Service target ports that name container ports.
4. Flags: every container argument is a flag its binary knows (rcknn-server or rcknn-router
   --helpfull), --listen/--metrics_listen match the container ports and the Prometheus
   annotations. The router finds the shards either by --shards, which must parse, name only
   pods of the shard StatefulSet through its headless Service on its gRPC port, each pod exactly
   once, every shard with the same number of replicas, and every pod the StatefulSet runs; or by
   --shards_dns, which must name the headless Service (named like the StatefulSet, which is how
   the router derives the pods' names) on the gRPC port, with --shard_replicas dividing the
   StatefulSet's replicas and --min_shards their quotient (no index over fewer shards).

Usage: check_kustomize.py --repo DIR --server BIN --router BIN [--self-test]
--self-test renders doctored copies (an unknown flag, a pod count --shard_replicas does not
divide, a misspelt container field, a PDB selecting nothing, a schema type error, a --shards_dns
on the wrong port, a pod missing from a static --shards) and fails unless each one is rejected.
"""
import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_deploy_files import CONTAINER_FIELDS  # pylint: disable=wrong-import-position

KINDS = {("v1", "Service"), ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment"),
         ("policy/v1", "PodDisruptionBudget")}
LAYOUTS = [os.path.join("deploy", "kubernetes", "base"),
           os.path.join("deploy", "kubernetes", "overlays", "sharded")]


def binary_flags(binary):
    text = subprocess.run([binary, "--helpfull"], capture_output=True, text=True,
                          timeout=30).stdout
    names = set(re.findall(r"^\s+--([A-Za-z0-9_]+) \(", text, re.M))
    if "listen" not in names:
        raise RuntimeError(f"{binary} --helpfull lists no --listen")
    return names


def json_pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, parts[-1]


def render(directory):
    """resources (files or directories) and inline JSON 6902 patches with a kind/name target."""
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    known = {"apiVersion", "kind", "resources", "patches", "labels"}
    unknown = set(k) - known
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this renderer does not know: {unknown}")
    docs = []
    for resource in k.get("resources", []):
        path = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(path):
            docs.extend(render(path))
        else:
            with open(path) as f:
                docs.extend(d for d in yaml.safe_load_all(f) if d is not None)
    for label in k.get("labels", []):
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for patch in k.get("patches", []):
        target = patch["target"]
        matched = [d for d in docs if d["kind"] == target["kind"] and
                   d["metadata"]["name"] == target["name"]]
        if len(matched) != 1:
            raise ValueError(f"{directory}: patch target {target} matches {len(matched)} objects")
        for op in yaml.safe_load(patch["patch"]):
            parent, key = json_pointer(matched[0], op["path"])
            if op["op"] not in ("replace", "add"):
                raise ValueError(f"{directory}: unsupported patch op {op['op']}")
            if isinstance(parent, list):
                index = len(parent) if key == "-" else int(key)
                if op["op"] == "add":
                    parent.insert(index, op["value"])
                else:
                    parent[index] = op["value"]
            else:
                if op["op"] == "replace" and key not in parent:
                    raise ValueError(f"{directory}: replace of missing {op['path']}")
                parent[key] = op["value"]
    return docs


def canonical(docs):
    return sorted(json.dumps(d, sort_keys=True) for d in docs)


def flag_values(where, args, known, errors):
    values = {}
    for arg in args:
        match = re.fullmatch(r"--([A-Za-z0-9_]+)=(.*)", str(arg), re.S)
        if not match:
            errors.append(f"{where}: argument {arg!r} is not --flag=value")
            continue
        if match.group(1) not in known:
            errors.append(f"{where}: --{match.group(1)} is not a flag of the binary")
        values[match.group(1)] = match.group(2)
    return values


def port(address):
    return int(address.rsplit(":", 1)[1])


def check_container(where, container, known, errors):
    for key in sorted(set(container) - CONTAINER_FIELDS):
        errors.append(f"{where}: {key!r} is not a field of a v1 Container")
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in container.get("resources", {}).get(part, {}):
                errors.append(f"{where}: resources.{part}.{resource} is missing")
    flags = flag_values(where, container.get("args", []), known, errors)
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    for flag, name in (("listen", "grpc"), ("metrics_listen", "metrics")):
        if flag not in flags or port(flags[flag]) != ports.get(name):
            errors.append(f"{where}: --{flag} does not listen on container port {name!r}")
        elif not flags[flag].startswith(("0.0.0.0:", "[::]:")):
            errors.append(f"{where}: --{flag} must listen on 0.0.0.0 in a pod")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container.get(probe, {}).get("grpc")
        if grpc_probe is None or grpc_probe.get("port") != ports.get("grpc"):
            errors.append(f"{where}: {probe} is not a gRPC probe on the gRPC port")
    return flags, ports


def matches(selector, labels):
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check_render(name, docs, server_flags, router_flags, errors):
    by_kind = {}
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) not in KINDS:
            errors.append(f"{name}: unexpected {doc.get('apiVersion')} {doc.get('kind')}")
            continue
        if not doc.get("metadata", {}).get("name"):
            errors.append(f"{name}: a {doc['kind']} without metadata.name")
            continue
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    services = by_kind.get("Service", {})
    sets = list(by_kind.get("StatefulSet", {}).values())
    deployments = list(by_kind.get("Deployment", {}).values())
    if len(sets) != 1 or len(deployments) != 1:
        errors.append(f"{name}: expected one shard StatefulSet and one router Deployment")
        return
    sts, router = sets[0], deployments[0]
    workloads = [sts, router]
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"].get("labels", {})
        if not matches(workload["spec"].get("selector", {}), labels):
            errors.append(f"{name}: {workload['kind']} selector does not match its pod labels")
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        if not any(matches(pdb["spec"].get("selector", {}),
                           w["spec"]["template"]["metadata"].get("labels", {}))
                   for w in workloads):
            errors.append(f"{name}: PodDisruptionBudget {pdb['metadata']['name']} selects no pods")
    if len(by_kind.get("PodDisruptionBudget", {})) != 2:
        errors.append(f"{name}: expected a PodDisruptionBudget for the shards and the router")
    headless = services.get(sts["spec"].get("serviceName"))
    if headless is None or headless["spec"].get("clusterIP") != "None":
        errors.append(f"{name}: the StatefulSet's serviceName is not a headless Service")
        return
    shard_container = sts["spec"]["template"]["spec"]["containers"][0]
    _, shard_ports = check_container(f"{name} StatefulSet", shard_container, server_flags, errors)
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["name"] for m in shard_container.get("volumeMounts", [])}
    if not claims or not claims <= mounts:
        errors.append(f"{name}: the shards' volume claims {claims} are not mounted ({mounts})")
    router_container = router["spec"]["template"]["spec"]["containers"][0]
    flags, router_ports = check_container(f"{name} Deployment", router_container, router_flags,
                                          errors)
    for service in services.values():
        selected = [w for w in workloads if matches({"matchLabels": service["spec"]["selector"]},
                                                    w["spec"]["template"]["metadata"]["labels"])]
        if len(selected) != 1:
            errors.append(f"{name}: Service {service['metadata']['name']} selects "
                          f"{len(selected)} workloads")
            continue
        ports = shard_ports if selected[0] is sts else router_ports
        for p in service["spec"].get("ports", []):
            if p.get("targetPort") not in ports:
                errors.append(f"{name}: Service {service['metadata']['name']} targets "
                              f"{p.get('targetPort')!r}, not a container port name")
        scrape = service["metadata"].get("annotations", {}).get("prometheus.io/port")
        if scrape is not None and int(scrape) != ports.get("metrics"):
            errors.append(f"{name}: Service {service['metadata']['name']} scrape port {scrape}")
    # --shards or --shards_dns against the pods the StatefulSet runs.
    replicas = sts["spec"].get("replicas", 1)
    if bool(flags.get("shards")) == bool(flags.get("shards_dns")):
        errors.append(f"{name}: the router needs exactly one of --shards and --shards_dns")
        return
    if flags.get("shards_dns"):
        check_shards_dns(name, flags, sts, headless, shard_ports, errors)
        return
    pods = {f"{sts['metadata']['name']}-{o}.{headless['metadata']['name']}:{shard_ports['grpc']}"
            for o in range(replicas)}
    shards = [s.split("|") for s in flags.get("shards", "").split(",")]
    listed = [a for s in shards for a in s]
    for address in listed:
        if address not in pods:
            errors.append(f"{name}: --shards names {address}, not a shard pod on its gRPC port")
    if len(set(listed)) != len(listed):
        errors.append(f"{name}: --shards names a pod twice")
    if set(listed) != pods and not (set(listed) - pods):
        errors.append(f"{name}: shard pods {sorted(pods - set(listed))} are not in --shards")
    if len({len(s) for s in shards}) != 1:
        errors.append(f"{name}: the shards in --shards have different replica counts")


def check_shards_dns(name, flags, sts, headless, shard_ports, errors):
    """--shards_dns=<service>[.<namespace>...]:<port>: pod <set>-<o>.<service> is replica
    o % R of shard o / R (router/shard_discovery.h)."""
    host, _, dns_port = flags["shards_dns"].rpartition(":")
    service = headless["metadata"]["name"]
    if host.split(".")[0] != service or not dns_port.isdigit() or \
            int(dns_port) != shard_ports.get("grpc"):
        errors.append(f"{name}: --shards_dns={flags['shards_dns']} is not the headless Service "
                      f"{service} on the shards' gRPC port {shard_ports.get('grpc')}")
    if sts["metadata"]["name"] != service:
        errors.append(f"{name}: the StatefulSet {sts['metadata']['name']} is not named like its "
                      f"headless Service {service}: --shards_dns derives the pods' names from it")
    pods = sts["spec"].get("replicas", 1)
    per_shard = int(flags.get("shard_replicas", "1"))
    if per_shard < 1 or pods % per_shard:
        errors.append(f"{name}: --shard_replicas={per_shard} does not divide the {pods} shard pods")
        return
    if int(flags.get("min_shards", "1")) != pods // per_shard:
        errors.append(f"{name}: --min_shards={flags.get('min_shards', '1')}, but the "
                      f"StatefulSet runs {pods // per_shard} shards of {per_shard}")


def check_schemas(layout, docs, node_modules, errors):
    """Every object against the Kubernetes schemas (validate_kubernetes.mjs)."""
    if not os.path.isdir(os.path.join(node_modules, "kubernetes-models")):
        errors.append(f"{node_modules}/kubernetes-models is missing: run deploy/install_deps.sh")
        return
    result = subprocess.run(
        ["node", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "validate_kubernetes.mjs"), node_modules],
        input=json.dumps(docs), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        errors.append(f"{layout}: validate_kubernetes.mjs failed: {result.stderr}")
        return
    for doc, problem in zip(docs, json.loads(result.stdout)):
        if problem:
            errors.append(f"{layout}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}: "
                          f"the Kubernetes schema rejects it: {problem}")


def check(repo, server_flags, router_flags, node_modules, notes=None):
    errors = []
    kubectl = shutil.which("kubectl")
    if notes is not None:
        notes.append("rendered by this checker and by kubectl kustomize" if kubectl else
                     "kubectl is not installed: rendered by this checker only")
    for layout in LAYOUTS:
        directory = os.path.join(repo, layout)
        try:
            docs = render(directory)
        except (ValueError, KeyError, IndexError, OSError, yaml.YAMLError) as e:
            errors.append(f"{layout}: {e}")
            continue
        if kubectl is not None:
            result = subprocess.run([kubectl, "kustomize", directory], capture_output=True,
                                    text=True, timeout=60)
            if result.returncode != 0:
                errors.append(f"{layout}: kubectl kustomize failed: {result.stderr}")
            elif canonical(yaml.safe_load_all(result.stdout)) != canonical(docs):
                errors.append(f"{layout}: kubectl kustomize renders something else than this "
                              "checker")
        check_schemas(layout, docs, node_modules, errors)
        check_render(layout, docs, server_flags, router_flags, errors)
    return errors


def self_test(repo, server_flags, router_flags, node_modules):
    cases = [
        ("unknown router flag", "base/router.yaml", "--shutdown_grace=10s", "--grace=10s"),
        ("pods that --shard_replicas does not divide", "overlays/sharded/kustomization.yaml",
         "value: 6", "value: 7"),
        ("schema: a port that is not an integer", "base/router.yaml", "port: 50050",
         "port: grpc-port"),
        ("schema: an unknown enum value", "base/router.yaml", "type: ClusterIP",
         "type: Internal"),
        ("--shards_dns on the wrong port", "base/router.yaml",
         "--shards_dns=rcknn-shard:50051", "--shards_dns=rcknn-shard:50052"),
        ("pod missing from a static --shards", "base/router.yaml",
         "--shards_dns=rcknn-shard:50051", "--shards=rcknn-shard-1.rcknn-shard:50051"),
        ("misspelt container field", "base/shards.yaml", "readinessProbe:", "readinesProbe:"),
        ("PDB selecting nothing", "base/router.yaml",
         "  selector:\n    matchLabels:\n      app.kubernetes.io/name: rcknn-router\n",
         "  selector:\n    matchLabels:\n      app.kubernetes.io/name: nothing\n"),
    ]
    failures = []
    for title, path, old, new in cases:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(os.path.join(repo, "deploy"), os.path.join(tmp, "deploy"))
            target = os.path.join(tmp, "deploy", "kubernetes", path)
            with open(target) as f:
                text = f.read()
            if old not in text:
                failures.append(f"{title}: {old!r} not found in {path}")
                continue
            with open(target, "w") as f:
                f.write(text.replace(old, new, 1))
            if not check(tmp, server_flags, router_flags, node_modules):
                failures.append(f"{title}: not rejected")
    return failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--router", required=True)
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    server_flags = binary_flags(args.server)
    router_flags = binary_flags(args.router)
    node_modules = os.path.join(args.repo, "tools", "node_modules")
    notes = []
    if args.self_test:
        problems = self_test(args.repo, server_flags, router_flags, node_modules)
    else:
        problems = check(args.repo, server_flags, router_flags, node_modules, notes)
    for note in notes:
        print(note)
    for problem in problems:
        print(problem)
    print("FAIL" if problems else "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
