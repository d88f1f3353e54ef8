#!/usr/bin/env python3
"""Times the rcknn Python package against a running rcknn-server: upload, build and fetch of the
full predecessor neighbour matrix, and the C++ `rcknn search-all` fetch of the same index, run
alternately. Prints one JSON object per line.

  venv/bin/python tests/bench/python_client_bench.py --server=127.0.0.1:50051 \
      --rcknn=build/client/rcknn --n=1000000 --repeat=2

Points: N(0, 1) in d = 2 (numpy default_rng(seed)); RBF variance 1, lengthscale 0.5, m = 256
inducing points, k = 30, predecessor mode (the dense Vecchia regime).
"""
import argparse
import json
import subprocess
import time

import numpy as np

import rcknn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--rcknn", required=True, help="the rcknn tool (build/client/rcknn)")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--inducing", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    points = np.random.default_rng(args.seed).normal(size=(args.n, 2))
    index_id = f"pybench-{args.n}"
    with rcknn.connect(args.server) as client:
        try:
            client.index(index_id).delete()
        except rcknn.NotFound:
            pass
        started = time.perf_counter()
        index = client.create_index(index_id, points, kernel=rcknn.RBF(1.0, 0.5),
                                    inducing=args.inducing)
        upload = time.perf_counter() - started
        started = time.perf_counter()
        info = index.build()
        build = time.perf_counter() - started
        print(json.dumps({"n": args.n, "upload_seconds": round(upload, 3),
                          "build_seconds": round(build, 3),
                          "server_build_seconds": round(info.build_seconds, 3)}), flush=True)
        try:
            for _ in range(args.repeat):
                started = time.perf_counter()
                ids, dists = index.neighbors(args.k, predecessor=True)
                python = time.perf_counter() - started
                search_seconds = index.last_stats["search_seconds"]
                started = time.perf_counter()
                subprocess.run([args.rcknn, f"--server={args.server}", "search-all",
                                f"--index={index_id}", f"--k={args.k}", "--predecessor",
                                "--print=0"], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                cpp = time.perf_counter() - started
                print(json.dumps({
                    "n": args.n, "k": args.k, "python_fetch_seconds": round(python, 3),
                    "cpp_search_all_seconds": round(cpp, 3),
                    "ratio": round(python / cpp, 3),
                    "server_search_seconds": round(search_seconds, 3),
                    "requests": index.last_stats["requests"],
                    "shape": list(ids.shape), "padding_rows": int((ids[:, -1] < 0).sum()),
                    "finite": bool(np.isfinite(dists[args.k:]).all())}), flush=True)
        finally:
            index.delete()


if __name__ == "__main__":
    main()
