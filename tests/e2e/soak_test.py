#!/usr/bin/python3
"""Soak: the real rcknn-server (with --data_dir, so every upload, build and delete touches the
disk) under a mixed load from many clients for a while, sampling the server's resident memory,
threads and open file descriptors from /proc. Passes when no call failed, the server's threads,
file descriptors and resident memory at the end of the run are where they were once the load
had warmed up (within the bounded fluctuation check_growth allows); prints a JSON report either way.

The mix, per client thread (each with its own channel, every call with a deadline):
  searchers (--searchers)  unary Search of 1..32 random ids, and every 8th call a SearchStream of
                           three requests, on one READY index; answers are checked for shape
  churners (--churners)    CreateIndex, UploadPoints (two chunks), BuildIndex, WatchIndex to
                           READY, one Search, DeleteIndex, on indexes of their own, in a loop

  soak_test.py --server=BIN --work_dir=DIR [--duration=40] [--searchers=6] [--churners=2]
      [--sample_seconds=1] [--report=FILE] [--proto_dir=.. --data_dir=..]

ctest runs a short version (e2e_soak); docs/operations.md reports a 10-minute run.
"""
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = {}
for arg in sys.argv[1:]:
    key, _, value = arg.lstrip("-").partition("=")
    ARGS[key] = value
for required in ("server", "work_dir"):
    if required not in ARGS:
        raise SystemExit(__doc__)
DURATION = float(ARGS.get("duration", "40"))
SEARCHERS = int(ARGS.get("searchers", "6"))
CHURNERS = int(ARGS.get("churners", "2"))
SAMPLE_SECONDS = float(ARGS.get("sample_seconds", "1"))
PROTO_DIR = ARGS.get("proto_dir", os.path.join(os.path.dirname(__file__), "..", "..", "proto"))
CALL_TIMEOUT = 60  # seconds, every call
STABLE_POINTS = 8192
CHURN_POINTS = 3000
DIMENSION = 3
K = 10


def random_points(rng, n):
    return [rng.gauss(0.0, 1.0) for _ in range(n * DIMENSION)]


def spec(pb2, inducing):
    return pb2.IndexSpec(metric=pb2.METRIC_RESIDUAL_CORRELATION, dimension=DIMENSION,
                         kernel=pb2.KernelSpec(type=pb2.KERNEL_MATERN32, variance=1.0,
                                               lengthscales=[0.7]),
                         inducing_count=inducing, inducing_seed=5)


def proc_sample(pid):
    """(rss_bytes, threads, fds) of process `pid`."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, threads, fds


class Soak:
    def __init__(self, pb2, pb2_grpc, address, seed):
        self.pb2, self.pb2_grpc, self.address = pb2, pb2_grpc, address
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.calls = {}
        self.failures = []
        self.seed = seed

    def record(self, kind, error=None):
        with self.lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1
            if error is not None and len(self.failures) < 20:
                self.failures.append(f"{kind}: {error}")
            if error is not None:
                self.calls["failed"] = self.calls.get("failed", 0) + 1

    def call(self, kind, function):
        try:
            result = function()
            self.record(kind)
            return result
        except Exception as error:  # pylint: disable=broad-except
            self.record(kind, error)
            return None

    def stub(self):
        channel = rcknn_e2e.connect(self.address, options=[
            ("grpc.max_receive_message_length", 64 << 20)])
        return channel, self.pb2_grpc.RcknnStub(channel)

    def searcher(self, number):
        pb2 = self.pb2
        rng = random.Random(self.seed * 1000 + number)
        channel, stub = self.stub()
        calls = 0
        while not self.stop.is_set():
            calls += 1
            if calls % 8 == 0:
                requests = [pb2.SearchRequest(index_id="stable", k=K,
                                              query_ids=[rng.randrange(STABLE_POINTS)
                                                         for _ in range(rng.randint(1, 32))])
                            for _ in range(3)]

                def stream():
                    answers = list(stub.SearchStream(iter(requests), timeout=CALL_TIMEOUT))
                    if [a.num_queries for a in answers] != [len(r.query_ids) for r in requests]:
                        raise AssertionError("SearchStream answered the wrong shapes")
                self.call("search_stream", stream)
            else:
                ids = [rng.randrange(STABLE_POINTS) for _ in range(rng.randint(1, 32))]

                def search():
                    answer = stub.Search(pb2.SearchRequest(index_id="stable", k=K, query_ids=ids),
                                         timeout=CALL_TIMEOUT)
                    if len(answer.neighbor_ids) != len(ids) * K or -1 in answer.neighbor_ids:
                        raise AssertionError("Search answered the wrong shape")
                self.call("search", search)
        channel.close()

    def churner(self, number):
        pb2 = self.pb2
        rng = random.Random(self.seed * 1000 + 500 + number)
        channel, stub = self.stub()
        round_number = 0
        while not self.stop.is_set():
            index_id = f"churn-{number}-{round_number}"
            round_number += 1
            points = random_points(rng, CHURN_POINTS)
            if self.call("create", lambda: stub.CreateIndex(
                    pb2.CreateIndexRequest(index_id=index_id, spec=spec(pb2, 64)),
                    timeout=CALL_TIMEOUT)) is None:
                continue
            self.call("upload", lambda: stub.UploadPoints(
                rcknn_e2e.upload_chunks(pb2, index_id, points, DIMENSION, CHURN_POINTS // 2),
                timeout=CALL_TIMEOUT))
            self.call("build", lambda: stub.BuildIndex(pb2.BuildIndexRequest(index_id=index_id),
                                                       timeout=CALL_TIMEOUT))

            def watch():
                reports = list(stub.WatchIndex(pb2.GetIndexRequest(index_id=index_id),
                                               timeout=CALL_TIMEOUT))
                if not reports or reports[-1].state != pb2.INDEX_STATE_READY:
                    raise AssertionError(f"{index_id} did not become READY: {reports[-1:]}")
            self.call("watch", watch)
            self.call("search", lambda: stub.Search(
                pb2.SearchRequest(index_id=index_id, k=K, query_ids=[0, CHURN_POINTS - 1]),
                timeout=CALL_TIMEOUT))
            self.call("delete", lambda: stub.DeleteIndex(
                pb2.DeleteIndexRequest(index_id=index_id), timeout=CALL_TIMEOUT))
        channel.close()


def check_growth(samples, warmup_end, duration, idle_before, idle_after):
    """Problems found in the samples [(t, rss, threads, fds)] taken under load and in the idle
    samples before and after it (rss, threads, fds). A leak grows without bound; what is allowed
    is bounded fluctuation:
      threads  the maximum over the last quarter of the run may exceed that over the warmed-up
               first half by at most 2 (gRPC's pool for synchronous methods resizes with demand)
      fds      the same, by at most the number of churners (each may be committing a file at a
               sample), and once idle again the server holds at most one more than before
      rss      the maximum over the last quarter may exceed that over the first half by at most
               10% + 16 MiB (allocators keep freed pages)"""
    early = [s for s in samples if warmup_end <= s[0] <= duration / 2]
    late = [s for s in samples if s[0] >= duration * 0.75]
    if not early or not late:
        return ["too few samples (run longer or sample more often)"]
    problems = []
    for column, name, slack in ((2, "threads", 2), (3, "file descriptors", CHURNERS)):
        before, after = max(s[column] for s in early), max(s[column] for s in late)
        if after > before + slack:
            problems.append(f"{name} grew from at most {before} to {after}")
    if idle_after[2] > idle_before[2] + 1:
        problems.append(f"idle file descriptors grew from {idle_before[2]} to {idle_after[2]}")
    rss_before, rss_after = max(s[1] for s in early), max(s[1] for s in late)
    if rss_after > rss_before * 1.10 + (16 << 20):
        problems.append(f"resident memory grew from {rss_before >> 20} MiB to {rss_after >> 20} MiB")
    return problems


def main():
    os.makedirs(ARGS["work_dir"], exist_ok=True)
    pb2, pb2_grpc = rcknn_e2e.generate_stubs(PROTO_DIR, os.path.join(ARGS["work_dir"], "stubs"))
    server = rcknn_e2e.Server(ARGS["server"], os.path.join(ARGS["work_dir"], "server.log"))
    report = {"duration_s": DURATION, "searchers": SEARCHERS, "churners": CHURNERS}
    try:
        pid = server.process.pid
        channel = rcknn_e2e.connect(server.address)
        stub = pb2_grpc.RcknnStub(channel)
        rng = random.Random(1)
        stub.CreateIndex(pb2.CreateIndexRequest(index_id="stable", spec=spec(pb2, 128)),
                         timeout=CALL_TIMEOUT)
        stub.UploadPoints(rcknn_e2e.upload_chunks(pb2, "stable", random_points(rng, STABLE_POINTS),
                                                  DIMENSION, 4096), timeout=CALL_TIMEOUT)
        stub.BuildIndex(pb2.BuildIndexRequest(index_id="stable"), timeout=CALL_TIMEOUT)
        reports = rcknn_e2e.wait_ready(pb2, stub, "stable", timeout=CALL_TIMEOUT)
        if reports[-1].state != pb2.INDEX_STATE_READY:
            raise AssertionError(f"the stable index did not become READY: {reports[-1]}")
        idle = proc_sample(pid)

        soak = Soak(pb2, pb2_grpc, server.address, seed=7)
        workers = [threading.Thread(target=soak.searcher, args=(i,)) for i in range(SEARCHERS)]
        workers += [threading.Thread(target=soak.churner, args=(i,)) for i in range(CHURNERS)]
        start = time.time()
        for worker in workers:
            worker.start()
        samples = []
        while time.time() - start < DURATION:
            time.sleep(SAMPLE_SECONDS)
            samples.append((time.time() - start, *proc_sample(pid)))
        soak.stop.set()
        for worker in workers:
            worker.join(timeout=2 * CALL_TIMEOUT)
        elapsed = time.time() - start
        time.sleep(1.0)  # let the last calls' threads and buffers go
        after = proc_sample(pid)
        channel.close()

        problems = check_growth(samples, min(10.0, DURATION / 5), DURATION, idle, after)
        problems += [f"failed call: {f}" for f in soak.failures]
        if any(worker.is_alive() for worker in workers):
            problems.append("a client did not finish")
        if not server.alive():
            problems.append("the server died")

        def summary(column):
            values = [s[column] for s in samples]
            quarter = max(1, len(values) // 4)
            return {"idle_before": idle[column - 1], "first_quarter_max": max(values[:quarter]),
                    "last_quarter_max": max(values[-quarter:]), "max": max(values),
                    "idle_after": after[column - 1]}
        report.update({
            "elapsed_s": round(elapsed, 1), "calls": soak.calls,
            "calls_per_s": round(sum(v for k, v in soak.calls.items() if k != "failed") / elapsed, 1),
            "rss_bytes": summary(1), "threads": summary(2), "fds": summary(3),
            "samples": len(samples), "problems": problems})
    finally:
        code = server.terminate() if server.alive() else None
    report["server_exit_code"] = code
    if code != 0:
        report.setdefault("problems", []).append(f"rcknn-server exited with {code}")
    text = json.dumps(report, indent=1)
    print(text)
    if "report" in ARGS:
        with open(ARGS["report"], "w") as f:
            f.write(text + "\n")
    if report.get("problems"):
        print("soak FAILED:\n  " + "\n  ".join(report["problems"]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
