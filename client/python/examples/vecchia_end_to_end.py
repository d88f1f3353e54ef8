#!/usr/bin/env python3
"""The whole job end to end, fitting nothing: Vecchia neighbour sets of 200,000 2-D points under
the residual correlation of a Matern 3/2 GP with 256 inducing points, in one call and then step
by step with an index kept on the server; out-of-sample neighbours of new locations; the answer
handed over in GpGp's NNarray layout and as a scipy.sparse pattern.

  rcknn-server --listen=127.0.0.1:50051 &
  venv/bin/python client/python/examples/vecchia_end_to_end.py --server=127.0.0.1:50051
"""
import argparse
import time

import numpy as np

import rcknn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    X = rng.uniform(0.0, 10.0, size=(args.n, 2))   # locations, already in Vecchia order
    X_new = rng.uniform(0.0, 10.0, size=(5, 2))    # prediction locations
    kernel = rcknn.Matern32(variance=1.0, lengthscale=0.5)

    # 1. One call: a temporary index, deleted afterwards (also on errors and Ctrl-C).
    started = time.perf_counter()
    ids, dists = rcknn.vecchia_neighbors(X, k=args.k, kernel=kernel, inducing=256,
                                         server=args.server, progress=True)
    print(f"vecchia_neighbors: {ids.shape} {ids.dtype} in {time.perf_counter() - started:.2f} s")
    print("  point 1000 conditions on", ids[1000, :8], "...")

    # 2. Step by step, keeping the index for later questions.
    with rcknn.connect(args.server, timeout=600) as client:
        index = client.create_index("example-sites", X, kernel=rcknn.RBF(1.0, 0.5),
                                    inducing=256, progress=True)   # uploads in chunks
        try:
            info = index.build(progress=True)
            print(f"built in {info.build_seconds:.2f} s "
                  f"({info.factor_seconds:.2f} s factors, {info.tree_seconds:.2f} s tree)")
            ids, dists = index.neighbors(k=args.k, predecessor=True, progress=True)
            print("predecessor neighbours:", ids.shape, "requests:", index.last_stats["requests"])
            new_ids, new_dists = index.search(points=X_new, k=50)
            print("nearest stored points of a new location:", new_ids[0, :5],
                  np.round(new_dists[0, :5], 4))

            # 3. Hand-over layouts.
            nn = rcknn.gpgp_nnarray(ids)        # (n, k + 1), 1-based, self first, NaN = NA
            print("GpGp NNarray rows 1-3:\n", nn[:3, :5])
            pattern = rcknn.sparse_pattern(ids, include_self=True)   # needs scipy
            print("sparse pattern:", pattern.shape, pattern.nnz, "entries")
        except ImportError as missing:
            print("skipped:", missing)
        finally:
            index.delete()


if __name__ == "__main__":
    main()
