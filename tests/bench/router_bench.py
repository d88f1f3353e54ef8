#!/usr/bin/python3
"""rcknn-router over S rcknn-server shards against one rcknn-server holding the same points, on
127.0.0.1: build time, batch throughput and latency, single-query latency, the router's overhead
(router minus one server, measured alternately in one session), and whether the answers agree
(docs/design.md section 3). Prints one JSON object. Not a test: numbers for docs/sharding.md.

  router_bench.py --server=BIN --router=BIN --proto_dir=DIR --work_dir=DIR
                  [--n=1000000] [--shards=4] [--m=256] [--k=30] [--batch=1024] [--batches=10]
                  [--singles=300] [--threads=2] [--skip_single]
"""
import argparse
import array
import json
import os
import random
import shutil
import statistics
import sys
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import rcknn_e2e  # pylint: disable=wrong-import-position

OPTIONS = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100.0 * len(values)))]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser()
    for name, default in (("server", None), ("router", None), ("proto_dir", None),
                          ("work_dir", None)):
        parser.add_argument("--" + name, required=default is None, default=default)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--lengthscale", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip_single", action="store_true",
                        help="no reference server (for sizes one server cannot hold)")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    sys.argv = [sys.argv[0], f"--server={args.server}", f"--proto_dir={args.proto_dir}",
                "--data_dir=.", f"--work_dir={args.work_dir}"]
    # The e2e test's helpers read sys.argv when imported.
    from router_e2e_test import Process, compare, free_port, pb2, pb2_grpc  # pylint: disable=import-outside-toplevel

    processes = []

    def server(name):
        data_dir = os.path.join(args.work_dir, name + ".data")
        shutil.rmtree(data_dir, ignore_errors=True)
        port = free_port()
        p = Process(name, [args.server, f"--listen=127.0.0.1:{port}", "--metrics_listen=",
                           f"--threads={args.threads}", f"--data_dir={data_dir}",
                           "--max_points_per_index=200000000"])
        p.address = f"127.0.0.1:{port}"
        processes.append(p)
        return p.start()

    result = {"n": args.n, "shards": args.shards, "m": args.m, "k": args.k, "d": 2,
              "batch": args.batch, "threads_per_server": args.threads,
              "uptime_before": open("/proc/loadavg").read().split()[:3]}
    try:
        shards = [server(f"shard{s}") for s in range(args.shards)]
        router_port = free_port()
        router = Process("router", [args.router, f"--listen=127.0.0.1:{router_port}",
                                    "--metrics_listen=",
                                    "--max_message_bytes=1073741824",
                                    "--shards=" + ",".join(s.address for s in shards)])
        router.address = f"127.0.0.1:{router_port}"
        processes.append(router)
        router.start()
        targets = {"router": pb2_grpc.RcknnStub(grpc.insecure_channel(router.address, OPTIONS))}
        if not args.skip_single:
            single = server("single")
            targets["single"] = pb2_grpc.RcknnStub(grpc.insecure_channel(single.address, OPTIONS))
        rng = random.Random(1)
        points = array.array("d", (rng.gauss(0.0, 1.0) for _ in range(2 * args.n)))
        spec = pb2.IndexSpec(metric=pb2.METRIC_RESIDUAL_CORRELATION, dimension=2,
                             kernel=pb2.KernelSpec(type=pb2.KERNEL_RBF, variance=1.0,
                                                   lengthscales=[args.lengthscale]),
                             inducing_count=args.m, inducing_seed=7)
        for name, stub in targets.items():
            # Declared: the router gives each shard an equal contiguous range.
            stub.CreateIndex(pb2.CreateIndexRequest(index_id="bench", spec=spec,
                                                    expected_num_points=args.n), timeout=60)
            start = time.time()
            stub.UploadPoints(rcknn_e2e.upload_chunks(pb2, "bench", points, 2, 50_000),
                              timeout=3600)
            result[f"{name}_upload_seconds"] = round(time.time() - start, 2)
        for name, stub in targets.items():
            start = time.time()
            stub.BuildIndex(pb2.BuildIndexRequest(index_id="bench"), timeout=60)
            final = list(stub.WatchIndex(pb2.GetIndexRequest(index_id="bench"), timeout=7200))[-1]
            assert final.state == pb2.INDEX_STATE_READY, final
            result[f"{name}_build_seconds"] = round(time.time() - start, 2)
            result[f"{name}_memory_bytes"] = final.memory_bytes
        result["shard_rss_kib"] = [rss_kib(s.process.pid) for s in shards]
        if not args.skip_single:
            result["single_rss_kib"] = rss_kib(single.process.pid)
        result["router_rss_kib"] = rss_kib(router.process.pid)

        # Batches: by id (self excluded) and predecessor mode, ids spread over the range.
        qrng = random.Random(2)
        kinds = {"by_id": False, "predecessor": True}
        mismatches = 0
        for kind, pred in kinds.items():
            times = {name: [] for name in targets}
            for b in range(args.batches):
                ids = [qrng.randrange(args.n) for _ in range(args.batch)]
                request = pb2.SearchRequest(index_id="bench", k=args.k, query_ids=ids,
                                            predecessor_mode=pred)
                answers = {}
                # Alternate which target goes first.
                order = list(targets) if b % 2 == 0 else list(reversed(list(targets)))
                for name in order:
                    start = time.perf_counter()
                    answers[name] = targets[name].Search(request, timeout=600)
                    times[name].append(time.perf_counter() - start)
                if "single" in answers and compare(answers["router"], answers["single"], args.k):
                    mismatches += 1
            for name, t in times.items():
                result[f"{name}_{kind}_batch_p50_ms"] = round(1e3 * percentile(t, 50), 2)
                result[f"{name}_{kind}_batch_p99_ms"] = round(1e3 * percentile(t, 99), 2)
                result[f"{name}_{kind}_queries_per_second"] = round(
                    args.batch * len(t) / sum(t), 1)
        # Single queries, alternating.
        times = {name: [] for name in targets}
        for i in range(args.singles):
            request = pb2.SearchRequest(index_id="bench", k=args.k,
                                        query_ids=[qrng.randrange(args.n)])
            for name in (list(targets) if i % 2 == 0 else list(reversed(list(targets)))):
                start = time.perf_counter()
                targets[name].Search(request, timeout=60)
                times[name].append(time.perf_counter() - start)
        for name, t in times.items():
            result[f"{name}_single_p50_ms"] = round(1e3 * percentile(t, 50), 3)
            result[f"{name}_single_p99_ms"] = round(1e3 * percentile(t, 99), 3)
        if "single" in targets:
            result["batches_differing_from_single"] = mismatches
        result["uptime_after"] = open("/proc/loadavg").read().split()[:3]
    finally:
        for p in processes:
            p.kill()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
