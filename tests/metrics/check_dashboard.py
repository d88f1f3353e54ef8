#!/usr/bin/python3
"""Checks the Grafana dashboard against what rcknn-server really exports.

1. Structure: the fields Grafana needs (uid, title, schemaVersion, panels with id, type, title,
   gridPos and, outside rows, targets with refId and expr), unique panel ids, a Prometheus
   datasource variable that every panel's datasource refers to, no overlapping panels.
2. PromQL: every expression parses (promtool check rules, on the expressions with Grafana's
   variables substituted); promtool is required.
3. Names: every metric name in every expression is a family of the real registry text (the output
   of rcknn-metrics-dump), with _bucket/_sum/_count resolved to their histogram; every label in a
   selector or in by/without/on/ignoring exists on those metrics (or is a target label Prometheus
   adds: job, instance).

Failures name the panel, the expression and the offending metric or label; exit status 1.
--self-test runs the checker on doctored copies (an unknown metric, an unknown label, a bare
histogram name, a missing uid, a PromQL syntax error) and fails unless each one is rejected.

Usage: check_dashboard.py --dashboard rcknn.json (--dump rcknn-metrics-dump | --exposition FILE)
                          [--self-test]
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

TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Identifiers that are PromQL syntax, not metric names.
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right", "inf", "nan", "start", "end",
}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
TOKEN = re.compile(r"\d[\w.]*|[a-zA-Z_:][\w:]*")
GRAFANA_DURATION = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
UID = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")


class Exposition:
    """Family names, types and label names of a Prometheus text exposition."""

    def __init__(self, text):
        self.types = {}
        self.labels = {}
        sample = re.compile(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+\S+")
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(None, 3)
                self.types[name] = kind.strip()
                self.labels.setdefault(name, set())
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = sample.match(line)
            if not m:
                raise ValueError("unparsable exposition line: " + line)
            family = self.family_of(m.group(1))
            if family is None:
                raise ValueError("sample without a # TYPE line: " + line)
            names = set(re.findall(r'([a-zA-Z_]\w*)="', m.group(3) or ""))
            names.discard("le")
            self.labels[family] |= names

    def family_of(self, name):
        if name in self.types:
            return name
        for suffix in HISTOGRAM_SUFFIXES:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.types.get(base) in ("histogram", "summary"):
                if suffix == "_bucket" and self.types[base] != "histogram":
                    return None
                return base
        return None


def substitute_variables(expr):
    """The expression as Prometheus would receive it from Grafana."""
    expr = GRAFANA_DURATION.sub("5m", expr)
    return GRAFANA_VARIABLE.sub(".*", expr)


def metric_names(expr):
    """(metric names, selector labels per metric, grouping labels) of one PromQL expression."""
    expr = substitute_variables(expr)
    selector_labels = []  # (metric or None, label)
    stripped = STRING.sub('""', expr)
    for m in SELECTOR.finditer(stripped):
        for label in MATCHER_LABEL.findall(m.group(2)):
            selector_labels.append((m.group(1), label))
    # {__name__="x"} names a metric too.
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    grouping = set()
    for m in GROUPING.finditer(stripped):
        grouping |= {l.strip() for l in m.group(2).split(",") if l.strip()}
    rest = GROUPING.sub(" ", stripped)
    rest = re.sub(r"\{[^{}]*\}", " ", rest)
    rest = re.sub(r"\[[^\[\]]*\]", " ", rest)
    rest = STRING.sub(" ", rest)
    for m in TOKEN.finditer(rest):
        token = m.group(0)
        if token[0].isdigit() or token.lower() in KEYWORDS:
            continue
        if re.match(r"\s*\(", rest[m.end():]):
            continue  # a function or an aggregation
        names.add(token)
    return names, selector_labels, grouping


def panels_of(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        for inner in panel.get("panels", []) or []:
            yield inner


def check_structure(dashboard, errors):
    for field, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list)):
        if not isinstance(dashboard.get(field), kind) or dashboard.get(field) in ("", []):
            errors.append(f"dashboard: missing or empty '{field}' ({kind.__name__})")
    uid = dashboard.get("uid")
    if isinstance(uid, str) and not UID.match(uid):
        errors.append(f"dashboard: uid {uid!r} is not 1-40 of [a-zA-Z0-9_-]")
    if isinstance(dashboard.get("schemaVersion"), int) and dashboard["schemaVersion"] < 36:
        errors.append(f"dashboard: schemaVersion {dashboard['schemaVersion']} predates Grafana 9")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    datasource_vars = {n for n, v in variables.items()
                       if v.get("type") == "datasource" and v.get("query") == "prometheus"}
    if not datasource_vars:
        errors.append("dashboard: no templating variable of type 'datasource' for prometheus")

    ids = set()
    cells = []
    for panel in panels_of(dashboard):
        title = panel.get("title")
        where = f"panel {panel.get('id')!r} ({title!r})"
        if not isinstance(panel.get("id"), int):
            errors.append(f"{where}: missing integer 'id'")
        elif panel["id"] in ids:
            errors.append(f"{where}: duplicate id")
        else:
            ids.add(panel["id"])
        if not isinstance(panel.get("type"), str) or not panel["type"]:
            errors.append(f"{where}: missing 'type'")
        if not isinstance(title, str) or not title:
            errors.append(f"{where}: missing 'title'")
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in "hwxy"):
            errors.append(f"{where}: gridPos needs integer h, w, x, y")
        elif grid["w"] < 1 or grid["h"] < 1 or grid["x"] < 0 or grid["x"] + grid["w"] > 24:
            errors.append(f"{where}: gridPos {grid} outside the 24-column grid")
        else:
            for other_where, g in cells:
                if (grid["x"] < g["x"] + g["w"] and g["x"] < grid["x"] + grid["w"]
                        and grid["y"] < g["y"] + g["h"] and g["y"] < grid["y"] + grid["h"]):
                    errors.append(f"{where}: overlaps {other_where}")
            cells.append((where, grid))
        if panel.get("type") == "row":
            continue
        datasource = panel.get("datasource")
        uid_ref = datasource.get("uid") if isinstance(datasource, dict) else datasource
        if not (isinstance(uid_ref, str) and GRAFANA_VARIABLE.fullmatch(uid_ref)
                and uid_ref.strip("${}[]") in datasource_vars):
            errors.append(f"{where}: datasource {datasource!r} is not the datasource variable")
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            errors.append(f"{where}: no targets")
            continue
        ref_ids = set()
        for target in targets:
            if not isinstance(target.get("expr"), str) or not target["expr"].strip():
                errors.append(f"{where}: target {target.get('refId')!r} has no expr")
            if not target.get("refId") or target["refId"] in ref_ids:
                errors.append(f"{where}: target refId missing or duplicated")
            ref_ids.add(target.get("refId"))


def expressions(dashboard):
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []) or []:
            if isinstance(target.get("expr"), str) and target["expr"].strip():
                yield panel, target["expr"]


def check_names(dashboard, exposition, errors):
    for panel, expr in expressions(dashboard):
        where = f"panel {panel.get('id')!r} ({panel.get('title')!r}), expr {expr!r}"
        names, selector_labels, grouping = metric_names(expr)
        if not names:
            errors.append(f"{where}: names no metric")
        available = set(TARGET_LABELS)
        for name in sorted(names):
            family = exposition.family_of(name)
            if family is None:
                errors.append(f"{where}: metric {name!r} is not exported by rcknn-server")
                continue
            if name == family and exposition.types[family] in ("histogram", "summary"):
                errors.append(f"{where}: metric {name!r} is a {exposition.types[family]}; "
                              "its series are _bucket, _sum and _count")
                continue
            available |= exposition.labels[family]
            if name.endswith("_bucket"):
                available.add("le")
        for metric, label in selector_labels:
            if label == "__name__":
                continue
            family = exposition.family_of(metric) if metric else None
            allowed = set(TARGET_LABELS)
            if family is not None:
                allowed |= exposition.labels[family] | ({"le"} if metric.endswith("_bucket") else set())
            else:
                allowed = available
            if label not in allowed:
                errors.append(f"{where}: label {label!r} does not exist on {metric or 'its metrics'}")
        for label in sorted(grouping - available):
            errors.append(f"{where}: grouping label {label!r} exists on none of its metrics")


def check_promql(dashboard, errors):
    promtool = shutil.which("promtool")
    if promtool is None:
        errors.append("promtool not found (apt-get install prometheus): PromQL not checked")
        return
    exprs = list(expressions(dashboard))
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": substitute_variables(expr)}
        for i, (_, expr) in enumerate(exprs)]}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rules.yml")
        with open(path, "w") as f:
            json.dump(rules, f)  # JSON is YAML
        result = subprocess.run([promtool, "check", "rules", path], capture_output=True,
                                text=True)
    if result.returncode != 0:
        detail = (result.stdout + result.stderr).strip()
        # Check the expressions one by one to name the panel of each that fails.
        found = False
        for panel, expr in exprs:
            single = {"groups": [{"name": "one", "rules": [
                {"record": "dashboard:expr", "expr": substitute_variables(expr)}]}]}
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "rule.yml")
                with open(path, "w") as f:
                    json.dump(single, f)
                one = subprocess.run([promtool, "check", "rules", path], capture_output=True,
                                     text=True)
            if one.returncode != 0:
                found = True
                errors.append(f"panel {panel.get('id')!r} ({panel.get('title')!r}), expr {expr!r}: "
                              f"PromQL does not parse: {(one.stdout + one.stderr).strip()}")
        if not found:
            errors.append("promtool check rules failed: " + detail)


def check(dashboard_path, exposition_text):
    errors = []
    try:
        with open(dashboard_path) as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        return [f"{dashboard_path}: not readable JSON: {e}"]
    exposition = Exposition(exposition_text)
    check_structure(dashboard, errors)
    check_names(dashboard, exposition, errors)
    check_promql(dashboard, errors)
    return errors


def exposition_text(args):
    if args.exposition:
        with open(args.exposition) as f:
            return f.read()
    return subprocess.run([args.dump], capture_output=True, text=True, check=True).stdout


def self_test(args):
    """Doctored dashboards must be rejected, each for its own reason."""
    with open(args.dashboard) as f:
        original = json.load(f)
    text = exposition_text(args)

    def first_target(d, needle):
        for panel in panels_of(d):
            for target in panel.get("targets", []) or []:
                if needle in target.get("expr", ""):
                    return target
        raise AssertionError(f"self-test: no expression in the dashboard contains {needle!r}")

    def bogus_metric(d):
        t = first_target(d, "rcknn_queries_total")
        t["expr"] = t["expr"].replace("rcknn_queries_total", "rcknn_bogus_queries_total", 1)
        return "rcknn_bogus_queries_total"

    def bogus_label(d):
        t = first_target(d, "grpc_code")
        t["expr"] = t["expr"].replace("grpc_code", "grpc_status")
        return "grpc_status"

    def bare_histogram(d):
        t = first_target(d, "rcknn_query_distance_evaluations_bucket")
        t["expr"] = "sum(rate(rcknn_query_distance_evaluations[5m]))"
        return "rcknn_query_distance_evaluations"

    def missing_uid(d):
        del d["uid"]
        return "uid"

    def syntax_error(d):
        t = first_target(d, "rcknn_heap_pushes_total")
        t["expr"] = "sum(rate(rcknn_heap_pushes_total[5m])"
        return "does not parse"

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        expo = os.path.join(tmp, "exposition.txt")
        with open(expo, "w") as f:
            f.write(text)

        def run(d):
            path = os.path.join(tmp, "dashboard.json")
            with open(path, "w") as f:
                json.dump(d, f)
            return subprocess.run([sys.executable, os.path.abspath(__file__), "--dashboard", path,
                                   "--exposition", expo], capture_output=True, text=True)

        clean = run(original)
        if clean.returncode != 0:
            failures.append("the unmodified dashboard fails:\n" + clean.stderr)
        for doctor in (bogus_metric, bogus_label, bare_histogram, missing_uid, syntax_error):
            d = copy.deepcopy(original)
            expected = doctor(d)
            result = run(d)
            if result.returncode == 0 or expected not in result.stderr:
                failures.append(f"{doctor.__name__}: expected a failure naming {expected!r}, got "
                                f"exit {result.returncode}:\n{result.stderr}")
            else:
                print(f"self-test {doctor.__name__}: rejected as expected")
    for failure in failures:
        print("check_dashboard.py --self-test: " + failure, file=sys.stderr)
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dump", help="the rcknn-metrics-dump executable")
    source.add_argument("--exposition", help="a file holding a metrics exposition")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        return self_test(args)
    errors = check(args.dashboard, exposition_text(args))
    for error in errors:
        print("check_dashboard.py: " + error, file=sys.stderr)
    if errors:
        return 1
    print(f"check_dashboard.py: {args.dashboard} OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
