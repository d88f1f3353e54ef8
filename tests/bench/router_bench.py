#!/usr/bin/python3
"""rcknn-router over S rcknn-server shards against one rcknn-server holding the same points, on
127.0.0.1: build time, batch throughput and latency, single-query latency, the router's overhead
(router minus one server, and router minus "direct": the same shard requests sent by the client
to all shards at once, which is the shards' own share; measured alternately in one session), and
whether the answers agree (docs/design.md section 3). Prints one JSON object. Not a test: numbers for docs/sharding.md.

  router_bench.py --server=BIN --router=BIN --proto_dir=DIR --work_dir=DIR
                  [--n=1000000] [--shards=4] [--m=256] [--k=30] [--batch=1024] [--batches=10]
                  [--singles=300] [--threads=2] [--skip_single] [--kinds=by_id,predecessor]
                  [--explicit_inducing] [--check_sample=0] [--skip_direct] [--attach=ADDR]

--explicit_inducing gives the spec m inducing points of its own (normal, seed 3) instead of the
seeded draw; with it, --check_sample=N checks N of the predecessor queries (spread over the id
range) against a brute force in numpy over all n points (the metric of docs/design.md section 2),
which is how an index too large for one reference server is checked.
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


def rss_kib(pid, field="VmRSS"):
    """VmRSS (now) or VmHWM (the peak) of a process, KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class DirectFanOut:
    """The shards' part of a router search: the query points (and predecessor bounds) the
    router would send every shard of the contiguous layout, sent in parallel."""

    def __init__(self, stubs, points, args, pb2):
        self.stubs, self.points, self.k, self.pb2 = stubs, points, args.k, pb2
        shards = len(stubs)
        self.range = -(-args.n // shards)
        self.sizes = [max(0, min(args.n, (s + 1) * self.range) - s * self.range)
                      for s in range(shards)]
        self.names = [f"bench.rcknn-shard-{s}-of-{shards}-range-{self.range}"
                      for s in range(shards)]

    def prepare(self, request, timeout):
        pb2 = self.pb2
        calls = []
        for s, stub in enumerate(self.stubs):
            start = s * self.range
            coordinates, bounds = [], []
            for g in request.query_ids:
                bound = min(max(g - start, 0), self.sizes[s]) if request.predecessor_mode \
                    else self.sizes[s]
                if bound == 0:
                    continue
                coordinates.extend(self.points[2 * g:2 * g + 2])
                bounds.append(bound)
            if not bounds:
                continue
            shard_request = pb2.SearchRequest(
                index_id=self.names[s], k=self.k if request.predecessor_mode else self.k + 1,
                query_points=coordinates,
                query_id_bounds=bounds if request.predecessor_mode else [])
            calls.append((stub, shard_request))

        def run():
            futures = [stub.Search.future(r, timeout=timeout) for stub, r in calls]
            return [f.result() for f in futures]
        return run


def prepare(target, request, timeout):
    """A call of `target` on `request`, ready to be timed."""
    if isinstance(target, DirectFanOut):
        return target.prepare(request, timeout)
    return lambda: target.Search(request, timeout=timeout)


def check_sample(points, inducing, args, checked):
    """--check_sample predecessor queries, spread over the id range, against a numpy brute force
    over all n points with the explicit inducing points."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from scipy.linalg import solve_triangular  # pylint: disable=import-outside-toplevel
    if inducing is None:
        raise SystemExit("--check_sample needs --explicit_inducing")
    from router_e2e_test import compare, pb2  # pylint: disable=import-outside-toplevel
    start = time.time()
    x = np.frombuffer(points, dtype=np.float64).reshape(-1, 2)
    u = np.array(inducing).reshape(-1, 2)
    scale = args.lengthscale

    def kernel(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) / scale) ** 2
        return np.exp(-0.5 * d2.sum(axis=2))

    chol = np.linalg.cholesky(kernel(u, u) + 1e-6 * np.eye(len(u)))
    # The sample: every len(flat)/N-th query of the measured predecessor batches.
    flat = [(ids[i], answer, i) for ids, answer in checked for i in range(len(ids))]
    flat.sort(key=lambda t: t[0])
    step = max(1, len(flat) // args.check_sample)
    sample = flat[::step][:args.check_sample]
    q_ids = np.array([t[0] for t in sample])
    qx = x[q_ids]
    qv = solve_triangular(chol, kernel(u, qx), lower=True).T  # nq x m
    qp = np.maximum(1.0 - (qv * qv).sum(axis=1), 1e-9)
    k = args.k
    best_d = np.full((len(q_ids), 0), np.inf)
    best_i = np.zeros((len(q_ids), 0), dtype=np.int64)
    chunk = 100_000
    for first in range(0, len(x), chunk):
        xc = x[first:first + chunk]
        v = solve_triangular(chol, kernel(u, xc), lower=True)  # m x c
        p = np.maximum(1.0 - (v * v).sum(axis=0), 1e-9)
        c = kernel(qx, xc) - qv @ v
        rho = np.clip(c / np.sqrt(qp[:, None] * p[None, :]), -1.0, 1.0)
        d = np.sqrt(1.0 - np.abs(rho))
        ids = np.arange(first, first + len(xc))
        d[ids[None, :] >= q_ids[:, None]] = np.inf  # predecessor mode: j < i only
        if d.shape[1] > k:  # the chunk's k nearest (ties at the k-th are within the rule)
            part = np.argpartition(d, k - 1, axis=1)[:, :k]
            d, chunk_ids = np.take_along_axis(d, part, axis=1), ids[part]
        else:
            chunk_ids = np.broadcast_to(ids, d.shape)
        all_d = np.concatenate([best_d, d], axis=1)
        all_i = np.concatenate([best_i, chunk_ids], axis=1)
        order = np.lexsort((all_i, all_d), axis=1)[:, :k]
        best_d = np.take_along_axis(all_d, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
    differing = 0
    for row, (query, answer, position) in enumerate(sample):
        got = pb2.SearchResponse(num_queries=1, k=k,
                                 neighbor_ids=answer.neighbor_ids[position * k:(position + 1) * k],
                                 distances=answer.distances[position * k:(position + 1) * k])
        want_i = [int(i) if np.isfinite(dd) else -1 for i, dd in zip(best_i[row], best_d[row])]
        want = pb2.SearchResponse(num_queries=1, k=k, neighbor_ids=want_i,
                                  distances=[float(dd) for dd in best_d[row]])
        if compare(got, want, k):
            differing += 1
    return {"checked_queries": len(sample), "checked_query_ids_min_max": [int(q_ids.min()),
                                                                          int(q_ids.max())],
            "checked_differing_from_brute_force": differing,
            "check_seconds": round(time.time() - start, 1)}


def run_queries(args, targets, shards, points, inducing, result, pb2, pb2_grpc, compare):
    """The measured searches (and --check_sample) on the READY index "bench" of `targets`."""
    # "direct": the shards' own share, the same point queries sent by this client to every
    # shard at once (no router, no merge): router minus direct is the router's overhead.
    if not args.skip_direct:
        targets["direct"] = DirectFanOut(
            [pb2_grpc.RcknnStub(grpc.insecure_channel(s.address, OPTIONS)) for s in shards],
            points, args, pb2)

    # Batches: by id (self excluded) and predecessor mode, ids spread over the range.
    qrng = random.Random(2)
    kinds = {kind: kind == "predecessor" for kind in args.kinds.split(",")}
    mismatches = 0
    checked = []  # predecessor requests and the router's answers, for --check_sample
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
                run = prepare(targets[name], request, 600)
                start = time.perf_counter()
                answers[name] = run()
                times[name].append(time.perf_counter() - start)
            answers.pop("direct", None)
            if "single" in answers and compare(answers["router"], answers["single"], args.k):
                mismatches += 1
            if pred and args.check_sample:
                checked.append((ids, answers["router"]))
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
            run = prepare(targets[name], request, 60)
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        result[f"{name}_single_p50_ms"] = round(1e3 * percentile(t, 50), 3)
        result[f"{name}_single_p99_ms"] = round(1e3 * percentile(t, 99), 3)
    if "single" in targets:
        result["batches_differing_from_single"] = mismatches
    if args.check_sample:
        result.update(check_sample(points, inducing, args, checked))


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
    parser.add_argument("--kinds", default="by_id,predecessor")
    parser.add_argument("--skip_direct", action="store_true",
                        help="no direct fan-out baseline (halves the query time)")
    parser.add_argument("--explicit_inducing", action="store_true")
    parser.add_argument("--check_sample", type=int, default=0)
    parser.add_argument("--attach", default="",
                        help="host:port of a router whose index \"bench\" an earlier run with "
                             "the same --n/--m/--explicit_inducing left READY: only the searches "
                             "(and --check_sample) run")
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
        t0 = time.time()
        rng = random.Random(1)
        points = array.array("d", (rng.gauss(0.0, 1.0) for _ in range(2 * args.n)))
        spec = pb2.IndexSpec(metric=pb2.METRIC_RESIDUAL_CORRELATION, dimension=2,
                             kernel=pb2.KernelSpec(type=pb2.KERNEL_RBF, variance=1.0,
                                                   lengthscales=[args.lengthscale]),
                             inducing_count=args.m, inducing_seed=7)
        inducing = None
        if args.explicit_inducing:
            urng = random.Random(3)
            inducing = [urng.gauss(0.0, 1.0) for _ in range(2 * args.m)]
            spec.ClearField("inducing_count")
            spec.inducing_points.extend(inducing)
        result["data_seconds"] = round(time.time() - t0, 2)
        if args.attach:
            # The index "bench" of a router that an earlier run of this script left READY.
            targets = {"router": pb2_grpc.RcknnStub(grpc.insecure_channel(args.attach, OPTIONS))}
            args.skip_direct = True
            run_queries(args, targets, [], points, inducing, result, pb2, pb2_grpc, compare)
            result["uptime_after"] = open("/proc/loadavg").read().split()[:3]
            print(json.dumps(result, indent=1))
            return
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
        result["shard_peak_rss_kib"] = [rss_kib(s.process.pid, "VmHWM") for s in shards]
        if not args.skip_single:
            result["single_rss_kib"] = rss_kib(single.process.pid)
            result["single_peak_rss_kib"] = rss_kib(single.process.pid, "VmHWM")
        result["router_rss_kib"] = rss_kib(router.process.pid)

        run_queries(args, targets, shards, points, inducing, result, pb2, pb2_grpc, compare)
        result["uptime_after"] = open("/proc/loadavg").read().split()[:3]
    finally:
        for p in processes:
            p.kill()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
