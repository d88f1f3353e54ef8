#!/usr/bin/python3
"""End-to-end metrics test: the real rcknn-server binary with its /metrics endpoint on a free
loopback port, scraped every second by Debian's `prometheus` with the job of
deploy/prometheus/prometheus.yml (target rewritten to that port); a known workload through the
Python client; then Prometheus's HTTP API must report rcknn_distance_evaluations_total (and the
other traversal counters) equal to the sums of the SearchStats the client received, and
grpc_server_handled_total equal to the calls made per method and code. Every wait is bounded.

  prometheus_e2e_test.py --server=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR \
      --prometheus_config=deploy/prometheus/prometheus.yml [--prometheus=/usr/bin/prometheus]
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import grpc
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
pb2, pb2_grpc = rcknn_e2e.generate_stubs(ARGS["proto_dir"], os.path.join(ARGS["work_dir"], "py"))
PROMETHEUS = ARGS.get("prometheus", "/usr/bin/prometheus")
SERVICE = "rcknn.v1.Rcknn"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_config(source, target):
    """deploy/prometheus/prometheus.yml with the rcknn job scraping `target` every second."""
    with open(source) as f:
        config = yaml.safe_load(f)
    config.setdefault("global", {})["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "rcknn"]
    assert len(jobs) == 1, config
    jobs[0]["scrape_interval"] = "1s"
    jobs[0]["scrape_timeout"] = "1s"
    jobs[0]["static_configs"] = [{"targets": [target]}]
    return config


class Prometheus:
    def __init__(self, config_path, work_dir):
        self.port = free_port()
        self.storage = tempfile.mkdtemp(prefix="tsdb-", dir=work_dir)
        self.log_path = os.path.join(work_dir, "prometheus.log")
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={self.storage}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log_file, stderr=subprocess.STDOUT)

    def query(self, expression):
        """The instant vector of `expression`: a list of (labels, value)."""
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expression}))
        with urllib.request.urlopen(url, timeout=2) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def wait_for(self, expression, predicate, timeout):
        """Polls until predicate(result) holds; returns the last result (bounded by timeout)."""
        deadline = time.time() + timeout
        result = None
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + open(self.log_path).read())
            try:
                result = self.query(expression)
                if predicate(result):
                    return result
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        return result

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        shutil.rmtree(self.storage, ignore_errors=True)


class PrometheusEndToEndTest(unittest.TestCase):
    def setUp(self):
        work_dir = ARGS["work_dir"]
        os.makedirs(work_dir, exist_ok=True)
        self.server = rcknn_e2e.start_server(self, ARGS["server"],
                                             os.path.join(work_dir, "server.log"))
        self.assertIsNotNone(self.server.metrics_address, self.server.log())
        config_path = os.path.join(work_dir, "prometheus.yml")
        with open(config_path, "w") as f:
            yaml.safe_dump(prometheus_config(ARGS["prometheus_config"],
                                             self.server.metrics_address), f)
        self.prometheus = Prometheus(config_path, work_dir)
        self.addCleanup(self.prometheus.stop)
        self.channel = grpc.insecure_channel(self.server.address)
        self.addCleanup(self.channel.close)
        self.stub = pb2_grpc.RcknnStub(self.channel)

    def run_workload(self):
        """A known workload; returns (stat sums, {(method, code): calls})."""
        calls = {}

        def count(method, code="OK"):
            calls[(method, code)] = calls.get((method, code), 0) + 1

        data = rcknn_e2e.Dataset(ARGS["data_dir"], "small")
        self.stub.CreateIndex(pb2.CreateIndexRequest(index_id="small", spec=data.spec(pb2)))
        count("CreateIndex")
        self.stub.UploadPoints(rcknn_e2e.upload_chunks(pb2, "small", data.points,
                                                       data.dimension, 1000))
        count("UploadPoints")
        self.stub.BuildIndex(pb2.BuildIndexRequest(index_id="small"))
        count("BuildIndex")
        reports = rcknn_e2e.wait_ready(pb2, self.stub, "small", timeout=30)
        count("WatchIndex")
        self.assertEqual(reports[-1].state, pb2.INDEX_STATE_READY, reports[-1].error)

        sums = {"queries": 0, "distance_evaluations": 0, "heap_pushes": 0, "nodes_visited": 0,
                "subtrees_pruned_by_bound": 0, "subtrees_pruned_by_predecessor": 0}

        def add(response):
            sums["queries"] += response.num_queries
            for key in sums:
                if key != "queries":
                    sums[key] += getattr(response.stats, key)

        ids = list(data.query_ids)
        for r in range(8):
            add(self.stub.Search(pb2.SearchRequest(
                index_id="small", k=5 + r, query_ids=ids[r * 10:r * 10 + 1 + 3 * r],
                predecessor_mode=r % 3 == 2), timeout=30))
            count("Search")
        for s in range(2):
            requests = [pb2.SearchRequest(index_id="small", k=10,
                                          query_ids=ids[100 + 20 * s + r:100 + 20 * s + 2 * r + 1])
                        for r in range(4)]
            for response in self.stub.SearchStream(iter(requests), timeout=30):
                add(response)
            count("SearchStream")
        for _ in range(3):
            with self.assertRaises(grpc.RpcError) as caught:
                self.stub.Search(pb2.SearchRequest(index_id="absent", k=3, query_ids=[1]))
            self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
            count("Search", "NOT_FOUND")
        for _ in range(2):
            with self.assertRaises(grpc.RpcError) as caught:
                self.stub.Search(pb2.SearchRequest(index_id="small", k=0, query_ids=[1]))
            self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            count("Search", "INVALID_ARGUMENT")
        with self.assertRaises(grpc.RpcError) as caught:
            self.stub.GetIndex(pb2.GetIndexRequest(index_id="absent"))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
        count("GetIndex", "NOT_FOUND")
        self.stub.ListIndexes(pb2.ListIndexesRequest())
        count("ListIndexes")
        return sums, calls

    def test_prometheus_scrapes_what_the_workload_did(self):
        start = time.time()
        sums, calls = self.run_workload()
        self.assertGreater(sums["distance_evaluations"], 0)

        def single_value(expected):
            return lambda result: len(result) == 1 and result[0][1] == expected

        for metric, key in [("rcknn_distance_evaluations_total", "distance_evaluations"),
                            ("rcknn_queries_total", "queries"),
                            ("rcknn_heap_pushes_total", "heap_pushes"),
                            ("rcknn_nodes_visited_total", "nodes_visited")]:
            result = self.prometheus.wait_for(f'{metric}{{job="rcknn"}}',
                                              single_value(sums[key]), timeout=20)
            self.assertTrue(result and result[0][1] == sums[key],
                            f"{metric}: Prometheus has {result}, the workload made {sums[key]}")
        for reason, key in [("bound", "subtrees_pruned_by_bound"),
                            ("predecessor", "subtrees_pruned_by_predecessor")]:
            expression = f'rcknn_subtrees_pruned_total{{job="rcknn",reason="{reason}"}}'
            result = self.prometheus.wait_for(expression, single_value(sums[key]), timeout=10)
            self.assertTrue(result and result[0][1] == sums[key], f"{expression}: {result}")

        expression = f'grpc_server_handled_total{{job="rcknn",grpc_service="{SERVICE}"}} > 0'

        def handled(result):
            return {(m["grpc_method"], m["grpc_code"]): int(v) for m, v in result or []}

        result = self.prometheus.wait_for(expression, lambda r: handled(r) == calls, timeout=10)
        self.assertEqual(handled(result), calls)
        # Every method of the service is exported from start-up, at 0 until called.
        result = self.prometheus.query(
            f'grpc_server_handled_total{{job="rcknn",grpc_service="{SERVICE}",grpc_code="OK"}}')
        self.assertIn("DeleteIndex", {m["grpc_method"] for m, _ in result})
        self.assertLess(time.time() - start, 60)


if __name__ == "__main__":
    rcknn_e2e.main()
