#!/usr/bin/python3
"""Checks the monitoring and load-test files under deploy/:

- deploy/prometheus/prometheus.yml passes `promtool check config` and scrapes job `rcknn` at
  127.0.0.1:9464 every 5s;
- the Grafana provisioning files parse and point at the dashboards folder and a Prometheus
  datasource;
- every ghz config in deploy/ghz/ uses only ghz's config keys, calls rcknn.v1.Rcknn.Search over
  server reflection (no proto/protoset), and its binary-file, as written by make_requests.py,
  decodes as the intended rcknn.v1.SearchRequest.

Usage: check_deploy_configs.py [--repo DIR] [--data-dir DIR]; exit status 1 on any failure.
"""

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

# ghz's runner.Config JSON keys.
GHZ_KEYS = {
    "proto", "protoset", "call", "cacert", "cert", "key", "skipTLS", "skipFirst", "cname",
    "authority", "insecure", "async", "rps", "load-schedule", "load-start", "load-step",
    "load-end", "load-step-duration", "load-max-duration", "concurrency", "concurrency-schedule",
    "concurrency-start", "concurrency-end", "concurrency-step", "concurrency-step-duration",
    "concurrency-max-duration", "total", "timeout", "duration", "max-duration", "duration-stop",
    "data", "data-file", "binary", "binary-file", "metadata", "metadata-file", "stream-interval",
    "reflect-metadata", "output", "format", "connections", "connect-timeout", "keepalive", "name",
    "tags", "cpus", "debug", "host", "enable-compression", "import-paths", "qps",
}
# Expected content of each request file: (query ids, k).
EXPECTED_REQUESTS = {"search_single.bin": (1, 50), "search_batch64.bin": (64, 50)}


def check_prometheus(repo, errors):
    path = os.path.join(repo, "deploy", "prometheus", "prometheus.yml")
    promtool = shutil.which("promtool")
    if promtool is None:
        errors.append("promtool not found (apt-get install prometheus)")
    else:
        result = subprocess.run([promtool, "check", "config", path], capture_output=True,
                                text=True)
        if result.returncode != 0:
            errors.append(f"{path}: promtool check config failed:\n{result.stdout}{result.stderr}")
    with open(path) as f:
        config = yaml.safe_load(f)
    jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
    job = jobs.get("rcknn")
    if job is None:
        errors.append(f"{path}: no scrape job 'rcknn'")
        return
    targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    if "127.0.0.1:9464" not in targets:
        errors.append(f"{path}: job rcknn does not scrape 127.0.0.1:9464 (targets {targets})")
    if job.get("scrape_interval", config.get("global", {}).get("scrape_interval")) != "5s":
        errors.append(f"{path}: job rcknn scrape interval is not 5s")


def check_grafana(repo, errors):
    base = os.path.join(repo, "deploy", "grafana")
    with open(os.path.join(base, "provisioning", "dashboards", "rcknn.yml")) as f:
        dashboards = yaml.safe_load(f)
    providers = dashboards.get("providers") or []
    if dashboards.get("apiVersion") != 1 or not providers:
        errors.append("grafana dashboards provisioning: needs apiVersion 1 and a provider")
    for provider in providers:
        if provider.get("type") != "file" or not provider.get("options", {}).get("path"):
            errors.append(f"grafana dashboard provider {provider.get('name')!r}: needs type file "
                          "and options.path")
    with open(os.path.join(base, "provisioning", "datasources", "prometheus.yml")) as f:
        datasources = yaml.safe_load(f)
    if not any(d.get("type") == "prometheus" and d.get("url")
               for d in datasources.get("datasources") or []):
        errors.append("grafana datasource provisioning: no prometheus datasource with a url")
    if not os.path.isfile(os.path.join(base, "dashboards", "rcknn.json")):
        errors.append("grafana: dashboards/rcknn.json missing")


def load_stubs(repo, tmp):
    proto_root = os.path.join(repo, "proto")
    os.makedirs(tmp, exist_ok=True)
    subprocess.run(["protoc", f"-I{proto_root}", f"--python_out={tmp}",
                    os.path.join(proto_root, "rcknn", "v1", "rcknn.proto")], check=True)
    sys.path.insert(0, tmp)
    return importlib.import_module("rcknn.v1.rcknn_pb2")


def check_ghz(repo, data_dir, errors):
    ghz_dir = os.path.join(repo, "deploy", "ghz")
    configs = sorted(n for n in os.listdir(ghz_dir) if n.endswith(".json"))
    if not configs:
        errors.append(f"{ghz_dir}: no ghz configs")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "requests")
        command = [sys.executable, os.path.join(ghz_dir, "make_requests.py"), "--out-dir", out]
        if data_dir:
            command += ["--data-dir", data_dir]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            errors.append(f"make_requests.py failed:\n{result.stdout}{result.stderr}")
            return
        pb = load_stubs(repo, os.path.join(tmp, "stubs"))
        seen = set()
        for name in configs:
            where = os.path.join(ghz_dir, name)
            with open(where) as f:
                config = json.load(f)
            unknown = set(config) - GHZ_KEYS
            if unknown:
                errors.append(f"{where}: keys ghz does not know: {sorted(unknown)}")
            if config.get("call") != "rcknn.v1.Rcknn.Search":
                errors.append(f"{where}: call is {config.get('call')!r}")
            if config.get("host") != "127.0.0.1:50051" or config.get("insecure") is not True:
                errors.append(f"{where}: expected host 127.0.0.1:50051 and insecure true")
            if "proto" in config or "protoset" in config:
                errors.append(f"{where}: names a proto; the configs use server reflection")
            binary = config.get("binary-file", "")
            request_name = os.path.basename(binary)
            if not binary.startswith("requests/") or request_name not in EXPECTED_REQUESTS:
                errors.append(f"{where}: binary-file {binary!r} is not one make_requests.py writes")
                continue
            seen.add(request_name)
            request = pb.SearchRequest()
            with open(os.path.join(out, request_name), "rb") as f:
                request.ParseFromString(f.read())
            count, k = EXPECTED_REQUESTS[request_name]
            if (request.index_id != "gold" or request.k != k or len(request.query_ids) != count
                    or request.query_points or request.predecessor_mode or request.include_self):
                errors.append(f"{where}: {request_name} decodes to an unexpected request: "
                              f"{request}")
        for missing in sorted(set(EXPECTED_REQUESTS) - seen):
            errors.append(f"{ghz_dir}: no config sends {missing}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(here)))
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    errors = []
    check_prometheus(args.repo, errors)
    check_grafana(args.repo, errors)
    check_ghz(args.repo, args.data_dir, errors)
    for error in errors:
        print("check_deploy_configs.py: " + error, file=sys.stderr)
    if errors:
        return 1
    print("check_deploy_configs.py: prometheus, grafana provisioning and ghz configs OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
