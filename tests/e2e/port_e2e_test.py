#!/usr/bin/python3
"""A taken port is refused, never shared, by the real binary: a second rcknn-server on the
--listen or --metrics_listen port of a running one (or of any socket, even one that allows port
sharing with SO_REUSEPORT) exits with status 1 and "address in use" naming the flag and the
address, and the running server keeps serving.

  port_e2e_test.py --server=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR
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


def run_second(*flags):
    """rcknn-server with `flags` (and a data directory of its own); (exit code, output)."""
    data_dir = tempfile.mkdtemp(prefix="second.", dir=ARGS["work_dir"])
    try:
        done = subprocess.run(
            [ARGS["server"], "--threads=1", f"--data_dir={data_dir}", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    except subprocess.TimeoutExpired as timeout:
        raise AssertionError(f"the second server is still running: it shares the port\n"
                             f"{timeout.output}") from None
    return done.returncode, done.stdout


class TakenPortTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.first = rcknn_e2e.start_server(cls, ARGS["server"],
                                           os.path.join(ARGS["work_dir"], "first.log"))
        cls.channel = rcknn_e2e.connect(cls.first.address)
        cls.addClassCleanup(cls.channel.close)
        cls.stub = pb2_grpc.RcknnStub(cls.channel)

    def assert_first_serves(self):
        self.assertTrue(self.first.alive())
        self.stub.ListIndexes(pb2.ListIndexesRequest(), timeout=30)

    def test_grpc_port_of_a_running_server(self):
        code, output = run_second(f"--listen={self.first.address}", "--metrics_listen=127.0.0.1:0")
        self.assertEqual(code, 1, output)
        self.assertIn("address in use", output)
        self.assertIn(f"cannot listen on {self.first.address} (--listen)", output)
        self.assertNotIn("listening on", output)
        self.assert_first_serves()

    def test_metrics_port_of_a_running_server(self):
        code, output = run_second("--listen=127.0.0.1:0",
                                  f"--metrics_listen={self.first.metrics_address}")
        self.assertEqual(code, 1, output)
        self.assertIn("address in use", output)
        self.assertIn(f"{self.first.metrics_address} (--metrics_listen)", output)
        self.assert_first_serves()

    def test_port_of_a_socket_that_allows_sharing(self):
        # A default gRPC server's socket has SO_REUSEPORT: a second one with it too would share.
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(holder.close)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen(8)
        address = "127.0.0.1:%d" % holder.getsockname()[1]
        cases = [((f"--listen={address}", "--metrics_listen=127.0.0.1:0"), "--listen"),
                 (("--listen=127.0.0.1:0", f"--metrics_listen={address}"), "--metrics_listen")]
        for flags, flag in cases:
            with self.subTest(flag=flag):
                code, output = run_second(*flags)
                self.assertEqual(code, 1, output)
                self.assertIn("address in use", output)
                self.assertIn(f"{address} ({flag})", output)


if __name__ == "__main__":
    rcknn_e2e.main()
