#!/usr/bin/env python3
"""Times the rcknn Python package against a running rcknn-server: upload, build and fetch of the
full predecessor neighbour matrix, and the C++ `rcknn search-all` fetch of the same index, run
alternately. Prints one JSON object per line.

  venv/bin/python tests/bench/python_client_bench.py --server=127.0.0.1:50051 \
      --rcknn=build/client/rcknn --n=1000000 --repeat=2

  venv/bin/python tests/bench/python_client_bench.py --decode_only --n=200000

Points: N(0, 1) in d = 2 (numpy default_rng(seed)); RBF variance 1, lengthscale 0.5, m = 256
inducing points, k = 30, predecessor mode (the dense Vecchia regime); or --metric=euclidean.
--repeat=0: upload and build only.
"""
import argparse
import json
import re
import subprocess
import time

import numpy as np

import rcknn


def decode_only(n: int, k: int) -> None:
    """Parse + conversion to numpy of one serialized n x k SearchResponse, both layouts."""
    from rcknn.v1 import rcknn_pb2 as pb2  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    ids = rng.integers(0, n, size=n * k, dtype=np.int64)
    dists = rng.random(n * k)
    packed = pb2.SearchResponse(num_queries=n, k=k, neighbor_ids=ids.tolist(),
                                distances=dists.tolist()).SerializeToString()
    raw = pb2.SearchResponse(num_queries=n, k=k, neighbor_ids_raw=ids.tobytes(),
                             distances_raw=dists.tobytes()).SerializeToString()
    times = {}
    for name, wire in (("packed", packed), ("raw", raw)):
        started = time.perf_counter()
        message = pb2.SearchResponse.FromString(wire)
        if name == "packed":
            got = np.array(message.neighbor_ids, dtype=np.int64), np.array(message.distances)
        else:
            got = (np.frombuffer(message.neighbor_ids_raw, "<i8"),
                   np.frombuffer(message.distances_raw, "<f8"))
        times[name] = time.perf_counter() - started
        assert np.array_equal(got[0], ids) and np.array_equal(got[1], dists)
    print(json.dumps({"n": n, "k": k, "values": 2 * n * k,
                      "packed_decode_seconds": round(times["packed"], 3),
                      "raw_decode_seconds": round(times["raw"], 3)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--rcknn", help="the rcknn tool (build/client/rcknn)")
    parser.add_argument("--decode_only", action="store_true",
                        help="no server: time parsing and converting an n x k answer to numpy "
                             "in the repeated fields and in the raw layout")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--inducing", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--metric", default="residual", choices=("residual", "euclidean"),
                        help="euclidean: a cheap search, so the fetch times show the clients' "
                             "own cost (decoding, copying)")
    args = parser.parse_args()
    if args.decode_only:
        decode_only(args.n, args.k)
        return

    points = np.random.default_rng(args.seed).normal(size=(args.n, 2))
    index_id = f"pybench-{args.n}"
    with rcknn.connect(args.server) as client:
        try:
            client.index(index_id).delete()
        except rcknn.NotFound:
            pass
        started = time.perf_counter()
        if args.metric == "residual":
            index = client.create_index(index_id, points, kernel=rcknn.RBF(1.0, 0.5),
                                        inducing=args.inducing)
        else:
            index = client.create_index(index_id, points, kernel=None, metric="euclidean")
        upload = time.perf_counter() - started
        started = time.perf_counter()
        info = index.build()
        build = time.perf_counter() - started
        print(json.dumps({"n": args.n, "metric": args.metric, "upload_seconds": round(upload, 3),
                          "build_seconds": round(build, 3),
                          "server_build_seconds": round(info.build_seconds, 3)}), flush=True)
        try:
            for _ in range(args.repeat):
                started = time.perf_counter()
                ids, dists = index.neighbors(args.k, predecessor=True)
                python = time.perf_counter() - started
                search_seconds = index.last_stats["search_seconds"]
                started = time.perf_counter()
                tool = subprocess.run([args.rcknn, f"--server={args.server}", "search-all",
                                       f"--index={index_id}", f"--k={args.k}", "--predecessor",
                                       "--print=0"], check=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
                cpp = time.perf_counter() - started
                found = re.search(r"([0-9.]+) s of server search", tool.stdout)
                cpp_search = float(found.group(1)) if found else float("nan")
                print(json.dumps({
                    "n": args.n, "metric": args.metric, "k": args.k,
                    "python_fetch_seconds": round(python, 3),
                    "cpp_search_all_seconds": round(cpp, 3),
                    "ratio": round(python / cpp, 3),
                    "server_search_seconds": round(search_seconds, 3),
                    "cpp_server_search_seconds": round(cpp_search, 3),
                    # What each client adds to the server's search: decoding, copying, the
                    # wire; steadier than the ratio on a shared machine.
                    "python_beyond_search_seconds": round(python - search_seconds, 3),
                    "cpp_beyond_search_seconds": round(cpp - cpp_search, 3),
                    "requests": index.last_stats["requests"],
                    "shape": list(ids.shape), "padding_rows": int((ids[:, -1] < 0).sum()),
                    "finite": bool(np.isfinite(dists[args.k:]).all())}), flush=True)
        finally:
            index.delete()


if __name__ == "__main__":
    main()
