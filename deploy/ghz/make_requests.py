#!/usr/bin/python3
"""Writes the serialized rcknn.v1.SearchRequest files that the ghz configs in this folder send.

  search_single.bin   one query id of the gold workload, k = 50
  search_batch64.bin  the first 64 gold query ids, k = 50

Both search the index named `gold` (the gold workload of docs/design.md section 7, uploaded and built
under that name). The query ids are gold's own (tests/data/gold.query_ids.i64).
Python stubs are generated from proto/rcknn/v1/rcknn.proto with the system protoc into a
temporary folder; needs Debian's protobuf-compiler and python3-protobuf.

Usage: make_requests.py [--data-dir tests/data] [--out-dir deploy/ghz/requests]
"""

import argparse
import array
import importlib
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
INDEX_ID = "gold"
K = 50
BATCH = 64


def load_stubs(tmp):
    proto_root = os.path.join(REPO, "proto")
    subprocess.run(["protoc", f"-I{proto_root}", f"--python_out={tmp}",
                    os.path.join(proto_root, "rcknn", "v1", "rcknn.proto")], check=True)
    sys.path.insert(0, tmp)
    return importlib.import_module("rcknn.v1.rcknn_pb2")


def read_query_ids(data_dir):
    path = os.path.join(data_dir, "gold.query_ids.i64")
    ids = array.array("q")
    with open(path, "rb") as f:
        ids.frombytes(f.read())
    if sys.byteorder != "little":
        ids.byteswap()
    if len(ids) < BATCH:
        raise SystemExit(f"{path}: {len(ids)} query ids, need at least {BATCH}")
    return list(ids)


def main():
    parser = argparse.ArgumentParser(description="Write the ghz request files.")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "tests", "data"),
                        help="folder holding gold.query_ids.i64")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "requests"))
    args = parser.parse_args()

    ids = read_query_ids(args.data_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pb = load_stubs(tmp)
        requests = {
            "search_single.bin": pb.SearchRequest(index_id=INDEX_ID, k=K, query_ids=ids[:1]),
            "search_batch64.bin": pb.SearchRequest(index_id=INDEX_ID, k=K, query_ids=ids[:BATCH]),
        }
        for name, request in requests.items():
            path = os.path.join(args.out_dir, name)
            with open(path, "wb") as f:
                f.write(request.SerializeToString())
            print(f"{path}: {len(request.query_ids)} query id(s), k = {request.k}, "
                  f"index {request.index_id!r}")


if __name__ == "__main__":
    main()
