#!/usr/bin/python3
"""Malformed input against the real rcknn-server binary: random garbage bytes as request
messages on every method, truncated messages, huge declared sizes, garbage on the raw TCP
connection, and requests that parse but are wrong (NaN, negative k, unknown enum values, wrong
row lengths, ...). Afterwards the server must still answer correctly and no index may have
changed.

  malformed_input_test.py --server=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR
"""
import math
import os
import random
import signal
import socket
import sys
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
pb2, pb2_grpc = rcknn_e2e.generate_stubs(ARGS["proto_dir"], os.path.join(ARGS["work_dir"], "py"))

IDENTITY = {"request_serializer": lambda x: x, "response_deserializer": lambda x: x}
MAX_MESSAGE = 4 << 20
SERVICE = "/rcknn.v1.Rcknn/"
UNARY = ["CreateIndex", "BuildIndex", "GetIndex", "ListIndexes", "DeleteIndex", "Search"]
NAN = float("nan")
INF = float("inf")


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class MalformedInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.set = rcknn_e2e.Dataset(ARGS["data_dir"], "small")
        cls.server = rcknn_e2e.start_server(cls, ARGS["server"],
                                            os.path.join(ARGS["work_dir"], "server.log"),
                                            f"--max_message_bytes={MAX_MESSAGE}")
        cls.channel = grpc.insecure_channel(cls.server.address, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)])
        cls.stub = pb2_grpc.RcknnStub(cls.channel)
        cls.stub.CreateIndex(pb2.CreateIndexRequest(index_id="victim", spec=cls.set.spec(pb2)))
        cls.stub.UploadPoints(rcknn_e2e.upload_chunks(pb2, "victim", cls.set.points, 2, 1000))
        cls.stub.BuildIndex(pb2.BuildIndexRequest(index_id="victim"))
        reports = rcknn_e2e.wait_ready(pb2, cls.stub, "victim")
        assert reports[-1].state == pb2.INDEX_STATE_READY, reports[-1]
        cls.stub.CreateIndex(pb2.CreateIndexRequest(index_id="loading", spec=cls.set.spec(pb2)))
        cls.stub.UploadPoints(rcknn_e2e.upload_chunks(pb2, "loading", cls.set.points[:200], 2, 50))
        cls.reference = cls.search_victim()
        cls.infos = cls.index_infos()
        cls.rng = random.Random(20240611)

    @classmethod
    def tearDownClass(cls):
        # The checks every test ends with, once more, then a clean exit.
        assert cls.server.alive(), cls.server.log()
        cls.channel.close()
        code = cls.server.terminate()
        assert code == 0, cls.server.log()

    @classmethod
    def search_victim(cls):
        return cls.stub.Search(pb2.SearchRequest(index_id="victim", k=cls.set.k,
                                                 query_ids=cls.set.query_ids), timeout=60)

    @classmethod
    def index_infos(cls):
        infos = {}
        for info in cls.stub.ListIndexes(pb2.ListIndexesRequest(), timeout=10).indexes:
            info.ClearField("build_seconds")  # still counting for a BUILDING index
            infos[info.index_id] = info
        return infos

    def assert_unharmed(self):
        self.assertTrue(self.server.alive(), self.server.log())
        self.assertEqual(self.index_infos(), self.infos)
        answer = self.search_victim()
        # The same query gets the same bits every time (docs/design.md section 3).
        self.assertEqual(list(answer.neighbor_ids), list(self.reference.neighbor_ids))
        self.assertEqual(list(answer.distances), list(self.reference.distances))
        self.assertEqual(rcknn_e2e.compare_answers(
            list(answer.neighbor_ids), list(answer.distances), list(self.set.knn_ids),
            list(self.set.knn_dists), self.set.k), "")

    def call_raw(self, method, payload):
        """Sends raw bytes as the request of `method`; returns the status code (OK or error)."""
        try:
            if method in UNARY:
                self.channel.unary_unary(SERVICE + method, **IDENTITY)(payload, timeout=10)
            elif method == "UploadPoints":
                self.channel.stream_unary(SERVICE + method, **IDENTITY)(iter(payload), timeout=10)
            elif method == "WatchIndex":
                list(self.channel.unary_stream(SERVICE + method, **IDENTITY)(payload, timeout=2))
            else:  # SearchStream
                list(self.channel.stream_stream(SERVICE + method, **IDENTITY)(iter(payload),
                                                                              timeout=10))
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    def send_everywhere(self, payload):
        codes = []
        for method in UNARY + ["WatchIndex"]:
            codes.append(self.call_raw(method, payload))
        for method in ("UploadPoints", "SearchStream"):
            codes.append(self.call_raw(method, [payload, payload[: len(payload) // 2]]))
        # No call may find the server gone.
        self.assertNotIn(grpc.StatusCode.UNAVAILABLE, codes)
        return codes

    def test_random_garbage_messages(self):
        for _ in range(60):
            size = self.rng.choice([0, 1, 2, 5, 17, 100, 1000, 20000])
            self.send_everywhere(bytes(self.rng.getrandbits(8) for _ in range(size)))
        self.assert_unharmed()

    def test_truncated_messages(self):
        messages = [
            pb2.CreateIndexRequest(index_id="never", spec=self.set.spec(pb2)).SerializeToString(),
            pb2.UploadPointsRequest(index_id="loading",
                                    coordinates=self.set.points[:400]).SerializeToString(),
            pb2.SearchRequest(index_id="victim", k=5,
                              query_ids=self.set.query_ids).SerializeToString(),
            pb2.SearchRequest(index_id="victim", k=5,
                              query_points=self.set.points[:64]).SerializeToString(),
        ]
        for message in messages:
            cuts = sorted(set(self.rng.randrange(1, len(message)) for _ in range(25)))
            for cut in cuts:
                self.send_everywhere(message[:cut])
        self.assert_unharmed()

    def test_huge_declared_sizes(self):
        payloads = [
            b"\x0a" + varint(1 << 40) + b"victim",                 # index_id of 2^40 bytes
            b"\x0a\x06victim\x1a" + varint((1 << 62) - 1) + b"\x01\x02",  # packed query_ids
            b"\x0a\x07loading\x12" + varint(0x7FFFFFFF) + bytes(16),  # packed coordinates
            b"\x0a\x06victim\x22" + varint(1 << 33) + bytes(8),       # packed query_points
            b"\x12" + varint(1 << 35) + b"\x08\x01",                  # spec of 32 GiB
            b"\x0a\x06victim\x10" + b"\xff" * 12,                     # a varint 12 bytes long
        ]
        for payload in payloads:
            codes = self.send_everywhere(payload)
            self.assertNotIn(grpc.StatusCode.OK, codes[len(UNARY) - 1:len(UNARY)])  # Search
        # Sizes that parse: each is refused with the right code and nothing is allocated for it.
        cases = [
            (lambda: self.stub.Search(pb2.SearchRequest(index_id="victim", k=(1 << 63) - 1,
                                                        query_ids=[1, 2])),
             grpc.StatusCode.RESOURCE_EXHAUSTED, "max_message_bytes"),
            (lambda: self.stub.Search(pb2.SearchRequest(index_id="victim", k=1 << 40,
                                                        query_ids=[1])),
             grpc.StatusCode.RESOURCE_EXHAUSTED, "max_message_bytes"),
            (lambda: self.stub.CreateIndex(pb2.CreateIndexRequest(
                index_id="wide", spec=pb2.IndexSpec(
                    metric=pb2.METRIC_EUCLIDEAN, dimension=(1 << 31) - 1))),
             grpc.StatusCode.INVALID_ARGUMENT, "spec.dimension"),
            # A message over --max_message_bytes: refused by gRPC with the limit in bytes.
            (lambda: self.stub.UploadPoints(iter([pb2.UploadPointsRequest(
                index_id="loading", coordinates=[0.5] * (MAX_MESSAGE // 8 + 2))])),
             grpc.StatusCode.RESOURCE_EXHAUSTED, str(MAX_MESSAGE)),
            (lambda: self.stub.Search(pb2.SearchRequest(index_id="victim", k=1,
                                                        query_ids=[1] * (MAX_MESSAGE // 8))),
             grpc.StatusCode.RESOURCE_EXHAUSTED, str(MAX_MESSAGE)),
        ]
        for call, code, text in cases:
            with self.subTest(text=text, code=code):
                with self.assertRaises(grpc.RpcError) as error:
                    call()
                self.assertEqual(error.exception.code(), code, error.exception.details())
                self.assertIn(text, error.exception.details())
        # inducing_count far above n: accepted as a number, refused when the build needs it.
        spec = self.set.spec(pb2)
        spec.ClearField("inducing_points")
        spec.inducing_count = 1 << 62
        self.stub.CreateIndex(pb2.CreateIndexRequest(index_id="greedy", spec=spec))
        self.stub.UploadPoints(rcknn_e2e.upload_chunks(pb2, "greedy", self.set.points[:20], 2, 10))
        with self.assertRaises(grpc.RpcError) as error:
            self.stub.BuildIndex(pb2.BuildIndexRequest(index_id="greedy"))
        self.assertEqual(error.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(error.exception.details().startswith("spec.inducing_count"))
        self.stub.DeleteIndex(pb2.DeleteIndexRequest(index_id="greedy"))
        self.assert_unharmed()

    def test_garbage_on_the_raw_connection(self):
        host, port = self.server.address.rsplit(":", 1)
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        streams = [
            bytes(self.rng.getrandbits(8) for _ in range(4096)),
            preface + bytes(self.rng.getrandbits(8) for _ in range(4096)),
            # SETTINGS, then a HEADERS frame of garbage on stream 1, then DATA with a gRPC frame
            # declaring 2 GiB and carrying 8 bytes.
            preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            + b"\x00\x00\x10\x01\x04\x00\x00\x00\x01" + bytes(range(16))
            + b"\x00\x00\x0d\x00\x01\x00\x00\x00\x01" + b"\x00\x7f\xff\xff\xff" + bytes(8),
            preface[:10],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        for data in streams:
            with socket.create_connection((host, int(port)), timeout=5) as connection:
                connection.sendall(data)
                connection.shutdown(socket.SHUT_WR)
                try:
                    while connection.recv(4096):
                        pass
                except OSError:
                    pass
        self.assert_unharmed()

    def test_wrong_values_name_their_field(self):
        spec = self.set.spec(pb2)

        def create(**changes):
            request = pb2.CreateIndexRequest(index_id="never", spec=spec)
            for key, value in changes.items():
                target = request
                *path, last = key.split("__")
                for part in path:
                    target = getattr(target, part)
                if isinstance(value, list):
                    field = getattr(target, last)
                    del field[:]
                    field.extend(value)
                else:
                    setattr(target, last, value)
            return lambda: self.stub.CreateIndex(request)

        def search(**fields):
            request = pb2.SearchRequest(index_id="victim", **{"k": 5, **fields})
            return lambda: self.stub.Search(request)

        def upload(index_id="loading", **fields):
            return lambda: self.stub.UploadPoints(iter([pb2.UploadPointsRequest(
                index_id=index_id, **fields)]))

        cases = [
            ("index_id", create(index_id="")),
            ("index_id", create(index_id="x" * 200)),
            ("index_id", create(index_id="no spaces")),
            ("spec.metric", create(spec__metric=99)),
            ("spec.metric", create(spec__metric=0)),
            ("spec.kernel.type", create(spec__kernel__type=42)),
            ("spec.kernel.type", create(spec__kernel__type=0)),
            ("spec.kernel.variance", create(spec__kernel__variance=NAN)),
            ("spec.kernel.variance", create(spec__kernel__variance=-1.0)),
            ("spec.kernel.lengthscales", create(spec__kernel__lengthscales=[1.0, INF])),
            ("spec.kernel.lengthscales", create(spec__kernel__lengthscales=[1.0, 1.0, 1.0])),
            ("spec.dimension", create(spec__dimension=-2)),
            ("spec.inducing_points", create(spec__inducing_points=[0.1, 0.2, 0.3])),
            ("spec.inducing_points", create(spec__inducing_points=[0.1, NAN])),
            ("spec.inducing_count", create(spec__inducing_count=-5)),
            ("spec.jitter", create(spec__jitter=-1.0)),
            ("spec.jitter", create(spec__jitter=NAN)),
            ("k", search(k=-3, query_ids=[1])),
            ("k", search(k=0, query_ids=[1])),
            ("query_ids", search(query_ids=[1, 4096])),
            ("query_ids", search(query_ids=[-1])),
            ("query_points", search(query_points=[0.1, 0.2, 0.3])),
            ("query_points", search(query_points=[0.1, NAN])),
            ("query_points", search(query_points=[INF, 0.0])),
            ("predecessor_mode", search(query_points=[0.1, 0.2], predecessor_mode=True)),
            ("include_self", search(query_points=[0.1, 0.2], include_self=True)),
            ("query_ids, query_points", search(query_ids=[1], query_points=[0.1, 0.2])),
            ("query_ids, query_points", search()),
            ("coordinates", upload(coordinates=[0.1, 0.2, 0.3])),
            ("coordinates", upload(coordinates=[0.1, NAN])),
            ("coordinates", upload(coordinates=[-INF, 0.0])),
            ("factors", upload(coordinates=[0.1, 0.2], factors=[1.0])),
            ("residual_variances", upload(coordinates=[0.1, 0.2], residual_variances=[1.0])),
            ("first chunk: index_id", upload(index_id="", coordinates=[0.1, 0.2])),
        ]
        for field, call in cases:
            with self.subTest(field=field):
                with self.assertRaises(grpc.RpcError) as error:
                    call()
                self.assertEqual(error.exception.code(), grpc.StatusCode.INVALID_ARGUMENT,
                                 error.exception.details())
                self.assertTrue(error.exception.details().startswith(field),
                                error.exception.details())
        self.assert_unharmed()


if __name__ == "__main__":
    rcknn_e2e.main()
