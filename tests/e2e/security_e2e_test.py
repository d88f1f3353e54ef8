#!/usr/bin/python3
"""TLS, mutual TLS and bearer tokens against the real rcknn-server binary, from Python (the
helpers of rcknn_e2e.connect) and from the real `rcknn` tool, with certificates made at test time
by tests/server/make_test_certs.sh (openssl). Also: a token file that is missing or empty stops
the server at start-up with a clear message and a non-zero exit.

  security_e2e_test.py --server=BIN --rcknn=BIN --source_dir=DIR --proto_dir=DIR --data_dir=DIR
                       --work_dir=DIR
"""
import os
import signal
import subprocess
import sys
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
pb2, pb2_grpc = rcknn_e2e.generate_stubs(ARGS["proto_dir"], os.path.join(ARGS["work_dir"], "py"))
CERTS = rcknn_e2e.make_test_certs(ARGS["source_dir"], os.path.join(ARGS["work_dir"], "certs"))
TOKENS = os.path.join(ARGS["work_dir"], "tokens")
READER_TOKEN_FILE = os.path.join(ARGS["work_dir"], "reader_token")
TIMEOUT = 10


def cert(name):
    return os.path.join(CERTS, name)


class SecurityE2eTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(TOKENS, "w") as f:
            f.write("# e2e tokens\nadmin-secret\n\nreadonly reader-secret\n")
        with open(READER_TOKEN_FILE, "w") as f:
            f.write("# the reader\nreader-secret\n")
        cls.server = rcknn_e2e.start_server(
            cls, ARGS["server"], os.path.join(ARGS["work_dir"], "server.log"),
            f"--tls_cert={cert('server.pem')}", f"--tls_key={cert('server.key')}",
            f"--tls_client_ca={cert('ca.pem')}", f"--auth_token_file={TOKENS}")
        cls.set = rcknn_e2e.Dataset(ARGS["data_dir"], "small")
        admin = cls.stub(token="admin-secret")
        admin.CreateIndex(pb2.CreateIndexRequest(index_id="small", spec=cls.set.spec(pb2)),
                          timeout=TIMEOUT)
        admin.UploadPoints(rcknn_e2e.upload_chunks(pb2, "small", cls.set.points, 2, 1000),
                           timeout=TIMEOUT)
        admin.BuildIndex(pb2.BuildIndexRequest(index_id="small"), timeout=TIMEOUT)
        reports = rcknn_e2e.wait_ready(pb2, admin, "small", timeout=60)
        assert reports[-1].state == pb2.INDEX_STATE_READY, reports[-1]

    @classmethod
    def tearDownClass(cls):
        assert cls.server.terminate() == 0

    @classmethod
    def stub(cls, ca="ca.pem", client_cert=True, token=None):
        channel = rcknn_e2e.connect(
            cls.server.address, tls_ca=cert(ca),
            tls_cert=cert("client.pem") if client_cert else None,
            tls_key=cert("client.key") if client_cert else None, token=token)
        return pb2_grpc.RcknnStub(channel)

    def assert_code(self, code, call, *args):
        with self.assertRaises(grpc.RpcError) as raised:
            call(*args, timeout=TIMEOUT)
        self.assertEqual(raised.exception.code(), code, raised.exception.details())

    def search(self, stub):
        return stub.Search(pb2.SearchRequest(index_id="small", k=5, query_ids=[0, 1]),
                           timeout=TIMEOUT)

    def test_tls_search_answers(self):
        response = self.search(self.stub(token="admin-secret"))
        self.assertEqual(len(response.neighbor_ids), 10)

    def test_wrong_ca_and_missing_client_cert_are_refused(self):
        self.assert_code(grpc.StatusCode.UNAVAILABLE,
                         self.stub(ca="other_ca.pem", token="admin-secret").ListIndexes,
                         pb2.ListIndexesRequest())
        self.assert_code(grpc.StatusCode.UNAVAILABLE,
                         self.stub(client_cert=False, token="admin-secret").ListIndexes,
                         pb2.ListIndexesRequest())

    def test_missing_and_wrong_token_are_unauthenticated(self):
        for token in (None, "wrong-secret"):
            self.assert_code(grpc.StatusCode.UNAUTHENTICATED, self.stub(token=token).Search,
                             pb2.SearchRequest(index_id="small", k=5, query_ids=[0]))

    def test_read_only_token(self):
        reader = self.stub(token="reader-secret")
        self.assertEqual(len(self.search(reader).neighbor_ids), 10)
        reader.GetIndex(pb2.GetIndexRequest(index_id="small"), timeout=TIMEOUT)
        denied = grpc.StatusCode.PERMISSION_DENIED
        self.assert_code(denied, reader.CreateIndex,
                         pb2.CreateIndexRequest(index_id="x", spec=self.set.spec(pb2)))
        self.assert_code(denied, reader.UploadPoints,
                         iter([pb2.UploadPointsRequest(index_id="small", coordinates=[0, 0])]))
        self.assert_code(denied, reader.BuildIndex, pb2.BuildIndexRequest(index_id="small"))
        self.assert_code(denied, reader.DeleteIndex, pb2.DeleteIndexRequest(index_id="small"))

    def test_health_open_without_token(self):
        channel = rcknn_e2e.connect(self.server.address, tls_ca=cert("ca.pem"),
                                    tls_cert=cert("client.pem"), tls_key=cert("client.key"))
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda x: x,
                                    response_deserializer=lambda x: x)
        self.assertEqual(check(b"", timeout=TIMEOUT), b"\x08\x01")  # status: SERVING

    def rcknn(self, *flags):
        return subprocess.run(
            [ARGS["rcknn"], f"--server={self.server.address}", f"--tls_ca={cert('ca.pem')}",
             f"--tls_cert={cert('client.pem')}", f"--tls_key={cert('client.key')}",
             "--timeout=10", *flags], capture_output=True, text=True, timeout=60)

    def test_rcknn_tool(self):
        listed = self.rcknn("--token=admin-secret", "list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("small", listed.stdout)
        status = self.rcknn(f"--token_file={READER_TOKEN_FILE}", "status", "--index=small")
        self.assertEqual(status.returncode, 0, status.stderr)
        denied = self.rcknn(f"--token_file={READER_TOKEN_FILE}", "delete", "--index=small")
        self.assertEqual(denied.returncode, 1)
        self.assertIn("PERMISSION_DENIED", denied.stderr)
        anonymous = self.rcknn("list")
        self.assertEqual(anonymous.returncode, 1)
        self.assertIn("UNAUTHENTICATED", anonymous.stderr)


class SighupTest(unittest.TestCase):
    """SIGHUP re-reads --auth_token_file; a file that does not parse leaves the old tokens."""

    def test_sighup_reloads_the_tokens(self):
        tokens = os.path.join(ARGS["work_dir"], "sighup_tokens")
        with open(tokens, "w") as f:
            f.write("first-secret\n")
        log = os.path.join(ARGS["work_dir"], "sighup_server.log")
        server = rcknn_e2e.start_server(
            self, ARGS["server"], log, "--metrics_listen=", f"--tls_cert={cert('server.pem')}",
            f"--tls_key={cert('server.key')}", f"--auth_token_file={tokens}")

        def code(token):
            stub = pb2_grpc.RcknnStub(rcknn_e2e.connect(server.address, tls_ca=cert("ca.pem"),
                                                        token=token))
            try:
                stub.ListIndexes(pb2.ListIndexesRequest(), timeout=TIMEOUT)
                return grpc.StatusCode.OK
            except grpc.RpcError as error:
                return error.code()

        def hup_and_wait(line):
            count = server.log().count(line)
            server.process.send_signal(signal.SIGHUP)
            deadline = time.time() + 10
            while server.log().count(line) == count and time.time() < deadline:
                time.sleep(0.01)
            self.assertGreater(server.log().count(line), count, server.log())

        self.assertEqual(code("first-secret"), grpc.StatusCode.OK)
        with open(tokens, "w") as f:
            f.write("second-secret\n")
        hup_and_wait("reloaded 1 tokens")
        self.assertEqual(code("second-secret"), grpc.StatusCode.OK)
        self.assertEqual(code("first-secret"), grpc.StatusCode.UNAUTHENTICATED)
        with open(tokens, "w") as f:
            f.write("not a token line\n")
        hup_and_wait("tokens not reloaded")
        self.assertEqual(code("second-secret"), grpc.StatusCode.OK)
        self.assertTrue(server.alive())
        self.assertEqual(server.terminate(), 0)


class StartUpTest(unittest.TestCase):
    def start(self, token_file):
        return subprocess.run(
            [ARGS["server"], "--listen=127.0.0.1:0", "--metrics_listen=",
             f"--tls_cert={cert('server.pem')}", f"--tls_key={cert('server.key')}",
             f"--auth_token_file={token_file}"], capture_output=True, text=True, timeout=30)

    def test_missing_token_file(self):
        result = self.start(os.path.join(ARGS["work_dir"], "no_such_tokens"))
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--auth_token_file", result.stderr)
        self.assertIn("cannot read", result.stderr)

    def test_empty_token_file(self):
        empty = os.path.join(ARGS["work_dir"], "empty_tokens")
        with open(empty, "w") as f:
            f.write("# no token\n\n")
        result = self.start(empty)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no token", result.stderr)


if __name__ == "__main__":
    rcknn_e2e.main()
