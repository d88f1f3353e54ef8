#!/usr/bin/python3
"""deploy/quickstart.sh never acts on a server it did not start: with its gRPC or metrics port
taken (by a running rcknn-server, or by a socket that accepts no connection, so that its own
server starts and dies), it stops with exit status 1 and a message saying why, and the other
server keeps running with its `gold` index untouched. Run against the binaries of this build
(--no-build).

  quickstart_test.py --server=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR
                     --quickstart=deploy/quickstart.sh --build_dir=DIR
"""
import os
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
pb2, pb2_grpc = rcknn_e2e.generate_stubs(ARGS["proto_dir"], os.path.join(ARGS["work_dir"], "py"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def quickstart(port, metrics_port, points=32768):
    """Runs the quickstart (no build, its own data directory, --stop); (exit code, output)."""
    data_dir = tempfile.mkdtemp(prefix="quickstart.", dir=ARGS["work_dir"])
    done = subprocess.run(
        ["bash", ARGS["quickstart"], "--no-build", f"--build-dir={ARGS['build_dir']}",
         f"--data-dir={data_dir}", f"--port={port}", f"--metrics-port={metrics_port}", f"--points={points}",
         "--stop"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    return done.returncode, done.stdout


class TakenPortTest(unittest.TestCase):
    """Another rcknn-server holds a port, with an index named gold of its own."""

    @classmethod
    def setUpClass(cls):
        cls.other = rcknn_e2e.start_server(cls, ARGS["server"],
                                           os.path.join(ARGS["work_dir"], "other.log"))
        cls.channel = rcknn_e2e.connect(cls.other.address)
        cls.addClassCleanup(cls.channel.close)
        cls.stub = pb2_grpc.RcknnStub(cls.channel)
        spec = pb2.IndexSpec(metric=pb2.METRIC_EUCLIDEAN, dimension=2)
        cls.stub.CreateIndex(pb2.CreateIndexRequest(index_id="gold", spec=spec), timeout=30)
        cls.stub.UploadPoints(rcknn_e2e.upload_chunks(pb2, "gold", [0.5] * 14, 2, 7),
                              timeout=30)
        cls.before = cls.stub.GetIndex(pb2.GetIndexRequest(index_id="gold"), timeout=30)

    def assert_other_untouched(self):
        self.assertTrue(self.other.alive())
        after = self.stub.GetIndex(pb2.GetIndexRequest(index_id="gold"), timeout=30)
        self.assertEqual(after.state, pb2.INDEX_STATE_LOADING)
        self.assertEqual(after.num_points, 7)
        self.assertEqual(after, self.before)
        self.assertEqual([i.index_id for i in self.stub.ListIndexes(
            pb2.ListIndexesRequest(), timeout=30).indexes], ["gold"])

    def test_grpc_port_of_another_server(self):
        code, output = quickstart(port_of(self.other.address), free_port())
        self.assertEqual(code, 1, output)
        self.assertIn(f"{self.other.address} is in use by another process", output)
        self.assertNotIn("== create", output)
        self.assert_other_untouched()

    def test_metrics_port_of_another_server(self):
        code, output = quickstart(free_port(), port_of(self.other.metrics_address))
        self.assertEqual(code, 1, output)
        self.assertIn(f"{self.other.metrics_address} is in use by another process", output)
        self.assert_other_untouched()


class OwnServerDiesTest(unittest.TestCase):
    def test_port_taken_without_listening(self):
        # Bound but not listening: nothing answers there, so the quickstart starts its server,
        # which cannot bind the port and exits 1. The quickstart must stop, not carry on.
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        code, output = quickstart(port, free_port())
        self.assertEqual(code, 1, output)
        self.assertIn(f"rcknn-server (started on 127.0.0.1:{port}) exited with status 1", output)
        self.assertIn("address in use", output)
        self.assertNotIn("keeps running", output)


class RunTest(unittest.TestCase):
    def test_demo_runs_to_the_end_on_free_ports(self):
        # A smaller data set than the demo's: the same steps, in a few seconds.
        code, output = quickstart(free_port(), free_port(), points=2000)
        self.assertEqual(code, 0, output)
        for step in ("== create", "== upload", "== build", "== the Vecchia job",
                     "== out-of-sample", "--stop: shutting rcknn-server down"):
            self.assertIn(step, output)


if __name__ == "__main__":
    rcknn_e2e.main()
