#!/usr/bin/python3
"""Reflection v1 end to end with a real client: `buf curl --reflect-protocol grpc-v1` lists the
server's methods and calls ListIndexes through reflection alone (no proto file), and /metrics
then counts no call as UNIMPLEMENTED.

  buf_curl_e2e_test.py --server=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR --buf=BUF
"""
import os
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)


class BufCurlTest(unittest.TestCase):
    def test_reflection_v1_lists_and_calls_with_no_unimplemented(self):
        os.makedirs(ARGS["work_dir"], exist_ok=True)
        server = rcknn_e2e.start_server(self, ARGS["server"],
                                        os.path.join(ARGS["work_dir"], "server.log"))
        base = ["--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", "grpc-v1"]
        listed = subprocess.run([ARGS["buf"], "curl", *base, "--list-methods",
                                 f"http://{server.address}"],
                                capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        for method in ("rcknn.v1.Rcknn/Search", "rcknn.v1.Rcknn/ListIndexes",
                       "grpc.health.v1.Health/Check",
                       "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"):
            self.assertIn(method, listed.stdout.split())
        called = subprocess.run([ARGS["buf"], "curl", *base, "-d", "{}",
                                 f"http://{server.address}/rcknn.v1.Rcknn/ListIndexes"],
                                capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(called.returncode, 0, called.stderr)
        self.assertEqual(called.stdout.strip(), "{}")
        def reflection_ok(handled):
            return any('grpc_service="grpc.reflection.v1.ServerReflection"' in line and
                       'grpc_code="OK"' in line and not line.endswith(" 0") for line in handled)

        # The server records a call just after the client sees its end: wait for it (bounded).
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://{server.metrics_address}/metrics",
                                        timeout=30) as r:
                handled = [line for line in r.read().decode().splitlines()
                           if line.startswith("grpc_server_handled_total{")]
            if reflection_ok(handled) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertTrue(reflection_ok(handled), "\n".join(handled))
        unimplemented = [line for line in handled
                         if 'grpc_code="UNIMPLEMENTED"' in line and not line.endswith(" 0")]
        self.assertEqual(unimplemented, [])
        self.assertEqual(server.terminate(), 0, server.log())


if __name__ == "__main__":
    rcknn_e2e.main()
