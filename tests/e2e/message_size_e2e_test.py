#!/usr/bin/python3
"""Message sizes, as docs/api.md states them, against the real binaries:

- the `rcknn` tool with the server's --max_message_bytes uploads and searches through a server
  whose limit is far below the data (64 KiB): uploads go in several chunks, a search of every
  point is split into many requests, and the answers agree with those of single small requests;
- the tool with a larger limit than the server's is refused with RESOURCE_EXHAUSTED (gRPC's
  own message for the upload, the server's answer-size check naming --max_message_bytes for the
  search); an out-of-range --max_message_bytes is a usage error (exit 2);
- a Python grpcio client keeps its 4 MiB default receive limit: a larger answer fails on the
  client with RESOURCE_EXHAUSTED "Received message larger than max", and succeeds once
  grpc.max_receive_message_length is raised.

  message_size_e2e_test.py --server=BIN --rcknn=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR
"""
import os
import re
import subprocess
import sys
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
SMALL_LIMIT = 64 << 10
K = 20


def run_rcknn(address, *args, limit=None):
    flags = [f"--server={address}"]
    if limit is not None:
        flags.append(f"--max_message_bytes={limit}")
    return subprocess.run([ARGS["rcknn"], *flags, *args], capture_output=True, text=True,
                          timeout=120, check=False)


def create_small(address, limit):
    points = os.path.join(ARGS["data_dir"], "small.points.f64")
    for args in (("create", "--index=small", "--dim=2", "--kernel=matern32", "--variance=1.5",
                  "--lengthscale=0.5", "--inducing=128"),
                 ("upload", "--index=small", f"--input={points}", "--format=f64", "--dim=2"),
                 ("build", "--index=small", "--wait=true")):
        result = run_rcknn(address, *args, limit=limit)
        if result.returncode != 0:
            raise AssertionError(f"rcknn {' '.join(args)}: {result.stderr}")


class ToolUnderASmallServerLimit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(ARGS["work_dir"], exist_ok=True)
        cls.server = rcknn_e2e.start_server(
            cls, ARGS["server"], os.path.join(ARGS["work_dir"], "small_limit.log"),
            f"--max_message_bytes={SMALL_LIMIT}")
        create_small(cls.server.address, SMALL_LIMIT)

    def test_search_of_every_point_is_split_and_agrees_with_single_requests(self):
        prefix = os.path.join(ARGS["work_dir"], "all")
        result = run_rcknn(self.server.address, "search-all", "--index=small", f"--k={K}",
                           "--predecessor", f"--output={prefix}", limit=SMALL_LIMIT)
        self.assertEqual(result.returncode, 0, result.stderr)
        requests = int(re.search(r"\((\d+) requests?,", result.stdout).group(1))
        # At most 18 bytes per answer entry under a 64 KiB limit (less 4 KiB of framing).
        self.assertGreaterEqual(requests, 4096 * K * 18 // (SMALL_LIMIT - 4096))
        ids = rcknn_e2e.read_array(prefix + ".ids.i64", "q")
        dists = rcknn_e2e.read_array(prefix + ".dists.f64", "d")
        self.assertEqual(len(ids), 4096 * K)
        for query in (0, 1, 777, 2048, 4095):
            single = os.path.join(ARGS["work_dir"], f"one{query}")
            one = run_rcknn(self.server.address, "search", "--index=small", f"--k={K}",
                            f"--ids={query}", "--predecessor", f"--output={single}",
                            limit=SMALL_LIMIT)
            self.assertEqual(one.returncode, 0, one.stderr)
            self.assertIn("(1 request,", one.stdout)
            row = slice(query * K, (query + 1) * K)
            # By the rule of docs/design.md section 3, not bit for bit: a query answered alone
            # and the same query in a batch can take different evaluation paths.
            self.assertEqual(rcknn_e2e.compare_answers(
                rcknn_e2e.read_array(single + ".ids.i64", "q"),
                rcknn_e2e.read_array(single + ".dists.f64", "d"), ids[row], dists[row], K), "",
                f"query {query}")

    def test_a_tool_limit_above_the_server_limit_is_refused(self):
        points = os.path.join(ARGS["data_dir"], "small.points.f64")
        self.assertEqual(run_rcknn(self.server.address, "create", "--index=other", "--dim=2",
                                   limit=SMALL_LIMIT).returncode, 0)
        upload = run_rcknn(self.server.address, "upload", "--index=other", f"--input={points}",
                           "--format=f64", "--dim=2")  # the default limit: 64 MiB
        self.assertEqual(upload.returncode, 1)
        self.assertIn("RESOURCE_EXHAUSTED: Received message larger than max", upload.stderr)
        search = run_rcknn(self.server.address, "search-all", "--index=small", f"--k={K}")
        self.assertEqual(search.returncode, 1)
        self.assertIn("RESOURCE_EXHAUSTED", search.stderr)
        self.assertIn(f"over --max_message_bytes = {SMALL_LIMIT}", search.stderr)

    def test_an_out_of_range_limit_is_a_usage_error(self):
        for limit in (100, 1 << 32):
            result = run_rcknn(self.server.address, "list", limit=limit)
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertIn("--max_message_bytes must be in [1024, 2147483647]", result.stderr)


class PythonClientReceiveLimit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(ARGS["work_dir"], exist_ok=True)
        cls.pb2, cls.pb2_grpc = rcknn_e2e.generate_stubs(
            ARGS["proto_dir"], os.path.join(ARGS["work_dir"], "stubs"))
        cls.server = rcknn_e2e.start_server(
            cls, ARGS["server"], os.path.join(ARGS["work_dir"], "default_limit.log"))
        create_small(cls.server.address, None)

    def search_every_point(self, options):
        channel = rcknn_e2e.connect(self.server.address, options=options)
        try:
            stub = self.pb2_grpc.RcknnStub(channel)
            # 4096 x 200 entries: about 8 MB on the wire, over gRPC's 4 MiB default.
            return stub.Search(self.pb2.SearchRequest(index_id="small", k=200,
                                                      query_ids=list(range(4096))), timeout=120)
        finally:
            channel.close()

    def test_default_receive_limit_refuses_a_large_answer(self):
        with self.assertRaises(grpc.RpcError) as caught:
            self.search_every_point([])
        self.assertEqual(caught.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("Received message larger than max", caught.exception.details())
        self.assertIn("vs. 4194304)", caught.exception.details())

    def test_raised_receive_limit_gets_the_answer(self):
        answer = self.search_every_point([("grpc.max_receive_message_length", 64 << 20)])
        self.assertEqual(answer.num_queries, 4096)
        self.assertEqual(len(answer.neighbor_ids), 4096 * 200)
        self.assertGreater(answer.ByteSize(), 4 << 20)


if __name__ == "__main__":
    rcknn_e2e.main()
