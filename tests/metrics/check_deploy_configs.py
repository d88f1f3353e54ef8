#!/usr/bin/python3
"""Checks the monitoring and load-test files under deploy/:

- deploy/prometheus/prometheus.yml passes `promtool check config` and scrapes job `rcknn` at
  127.0.0.1:9464 every 5s;
- the Grafana provisioning files parse and point at the dashboards folder and a Prometheus
  datasource;
- every ghz config in deploy/ghz/ uses only ghz's config keys (with values of their types; a
  duration run stops with "wait"), calls rcknn.v1.Rcknn.Search over
  server reflection (no proto/protoset), and its binary-file, as written by make_requests.py,
  decodes as the intended rcknn.v1.SearchRequest.

Usage: check_deploy_configs.py [--repo DIR] [--data-dir DIR] [--self-test]; exit status 1 on any
failure.
"""

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

# The keys ghz reads from a --config file: the JSON tags of `runner.Config` in bojand/ghz
# (runner/config.go, the same from v0.111.0 to v0.121.0). ghz ignores any other key without a word (a "qps" config runs
# unthrottled: the rate key is "rps"; "binary" is a command-line flag reading stdin, not a key),
# so a key outside this set is an error here. ghz itself matches keys case-insensitively (Go's
# encoding/json); this check wants them exactly as ghz spells them.
GHZ_KEYS = {
    "proto", "protoset", "call", "cacert", "cert", "key", "count-errors", "skipTLS", "skipFirst",
    "cname", "authority", "insecure", "total", "async", "concurrency", "concurrency-schedule",
    "concurrency-start", "concurrency-end", "concurrency-step", "concurrency-step-duration",
    "concurrency-max-duration", "connections", "rps", "duration", "duration-stop",
    "max-duration", "timeout", "data", "data-file", "binary-file", "metadata", "metadata-file",
    "stream-interval", "stream-call-duration", "stream-call-count", "stream-dynamic-messages",
    "output", "format", "connect-timeout", "keepalive", "cpus", "import-paths", "name", "tags",
    "reflect-metadata", "debug", "host", "enable-compression", "load-schedule", "load-start",
    "load-end", "load-step", "load-step-duration", "load-max-duration", "lb-strategy",
    "max-recv-message-size", "max-send-message-size", "disable-template-functions",
    "disable-template-data",
}
# Keys whose values ghz parses as Go durations ("10s", "1m30s") and as unsigned integers.
GHZ_DURATION_KEYS = {
    "timeout", "duration", "max-duration", "connect-timeout", "keepalive", "stream-interval",
    "stream-call-duration", "concurrency-step-duration", "concurrency-max-duration",
    "load-step-duration", "load-max-duration",
}
GHZ_UINT_KEYS = {
    "total", "concurrency", "connections", "rps", "skipFirst", "cpus", "stream-call-count",
    "concurrency-start", "concurrency-end", "load-start", "load-end",
}
GHZ_DURATION_STOP = {"close", "wait", "ignore"}
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


def check_ghz_keys(where, config, errors):
    """Every key is one ghz reads, with a value of the type ghz parses it as."""
    unknown = set(config) - GHZ_KEYS
    if unknown:
        errors.append(f"{where}: keys ghz does not know (it would ignore them): {sorted(unknown)}")
    for key in sorted(GHZ_DURATION_KEYS & set(config)):
        value = config[key]
        if not isinstance(value, str) or not re.fullmatch(r"0|(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", value):
            errors.append(f"{where}: {key} = {value!r} is not a Go duration such as \"10s\"")
    for key in sorted(GHZ_UINT_KEYS & set(config)):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append(f"{where}: {key} = {value!r} is not an unsigned integer")
    if "duration-stop" in config and config["duration-stop"] not in GHZ_DURATION_STOP:
        errors.append(f"{where}: duration-stop = {config['duration-stop']!r} is not one of "
                      f"{sorted(GHZ_DURATION_STOP)}")
    if "duration" in config and config.get("duration-stop") != "wait":
        # With the default "close", calls in flight when the time is up are reported by ghz as
        # its own Unavailable errors.
        errors.append(f"{where}: a duration run needs \"duration-stop\": \"wait\"")


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
            check_ghz_keys(where, config, errors)
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


def self_test(repo, data_dir):
    """The ghz check on doctored copies of deploy/ghz: each defect must be reported, and the
    shipped configs plus valid keys they do not use yet must pass."""
    repo = os.path.abspath(repo)
    valid = {"rps": 50, "duration": "30s", "duration-stop": "wait", "max-duration": "0",
             "count-errors": True, "max-recv-message-size": "64MiB"}
    cases = [
        ("shipped", None, None),
        ("valid keys", valid, None),
        ("qps", {"qps": 5}, "keys ghz does not know"),
        ("binary", {"binary": True}, "keys ghz does not know"),
        ("misspelt", {"concurency": 4}, "keys ghz does not know"),
        ("case", {"RPS": 5}, "keys ghz does not know"),
        ("duration type", {"timeout": 10}, "is not a Go duration"),
        ("uint type", {"rps": -1}, "is not an unsigned integer"),
        ("stop value", {"duration": "10s", "duration-stop": "later"}, "duration-stop"),
        ("duration without wait", {"duration": "10s"}, "needs \"duration-stop\": \"wait\""),
    ]
    failures = 0
    for name, extra, expected in cases:
        with tempfile.TemporaryDirectory() as tmp:
            os.symlink(os.path.join(repo, "proto"), os.path.join(tmp, "proto"))
            ghz_dir = os.path.join(tmp, "deploy", "ghz")
            shutil.copytree(os.path.join(repo, "deploy", "ghz"), ghz_dir,
                            ignore=shutil.ignore_patterns("requests", "__pycache__"))
            if extra is not None:
                target = os.path.join(ghz_dir, "search_single.json")
                with open(target) as f:
                    config = json.load(f)
                config.update(extra)
                with open(target, "w") as f:
                    json.dump(config, f)
            errors = []
            check_ghz(tmp, data_dir, errors)
            if expected is None:
                ok = not errors
            else:
                ok = any(expected in e and "search_single.json" in e for e in errors)
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {errors if errors else 'accepted'}")
            failures += 0 if ok else 1
    return failures == 0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(here)))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--self-test", action="store_true",
                        help="check that doctored ghz configs are refused")
    args = parser.parse_args()
    if args.self_test:
        return 0 if self_test(args.repo, args.data_dir) else 1
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
