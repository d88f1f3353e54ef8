#!/usr/bin/python3
"""End-to-end test: the real rcknn-server binary driven from Python through stubs generated from
the repository's proto (python3-grpcio, python3-protobuf; no C++ of ours in the client).

  e2e_test.py --server=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR
"""
import os
import signal
import sys
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
pb2, pb2_grpc = rcknn_e2e.generate_stubs(ARGS["proto_dir"], os.path.join(ARGS["work_dir"], "py"))

IDENTITY = {"request_serializer": lambda x: x, "response_deserializer": lambda x: x}
HEALTH_SERVING = b"\x08\x01"
HEALTH_NOT_SERVING = b"\x08\x02"


def connect(address):
    return grpc.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20)])


class EndToEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.set = rcknn_e2e.Dataset(ARGS["data_dir"], "small")
        cls.server = rcknn_e2e.start_server(cls, ARGS["server"],
                                            os.path.join(ARGS["work_dir"], "server.log"))
        cls.channel = connect(cls.server.address)
        cls.stub = pb2_grpc.RcknnStub(cls.channel)
        info = cls.stub.CreateIndex(pb2.CreateIndexRequest(index_id="small",
                                                           spec=cls.set.spec(pb2)))
        assert info.state == pb2.INDEX_STATE_LOADING, info
        response = cls.stub.UploadPoints(rcknn_e2e.upload_chunks(
            pb2, "small", cls.set.points, cls.set.dimension, 300))
        assert response.total_points == cls.set.n, response
        info = cls.stub.BuildIndex(pb2.BuildIndexRequest(index_id="small"))
        assert info.state == pb2.INDEX_STATE_BUILDING, info
        cls.reports = rcknn_e2e.wait_ready(pb2, cls.stub, "small")

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        code = cls.server.terminate()
        assert code == 0, cls.server.log()

    def search(self, **kwargs):
        return self.stub.Search(pb2.SearchRequest(index_id="small", **kwargs), timeout=60)

    def test_build_reports_end_ready(self):
        self.assertGreaterEqual(len(self.reports), 1)
        last = self.reports[-1]
        self.assertEqual(last.state, pb2.INDEX_STATE_READY, last.error)
        self.assertEqual(last.num_points, self.set.n)
        self.assertEqual(last.build_progress, 1.0)
        self.assertGreater(last.build_seconds, 0.0)
        progress = [r.build_progress for r in self.reports]
        self.assertEqual(progress, sorted(progress))

    def test_answers_equal_the_shipped_exact_answers(self):
        for pred, ref_ids, ref_dists in ((False, self.set.knn_ids, self.set.knn_dists),
                                         (True, self.set.pred_ids, self.set.pred_dists)):
            with self.subTest(predecessor_mode=pred):
                response = self.search(k=self.set.k, query_ids=self.set.query_ids,
                                       predecessor_mode=pred)
                self.assertEqual(response.num_queries, len(self.set.query_ids))
                self.assertEqual(response.k, self.set.k)
                self.assertEqual(len(response.neighbor_ids), len(ref_ids))
                self.assertEqual(rcknn_e2e.compare_answers(
                    list(response.neighbor_ids), list(response.distances), list(ref_ids),
                    list(ref_dists), self.set.k), "")
                self.assertGreater(response.stats.distance_evaluations, 0)

    def test_out_of_sample_point_at_a_data_point_finds_it(self):
        d = self.set.dimension
        ids = [0, 17, 4095]
        points = []
        for i in ids:
            points.extend(self.set.points[i * d:(i + 1) * d])
        response = self.search(k=3, query_points=points)
        for q, i in enumerate(ids):
            self.assertEqual(response.neighbor_ids[q * 3], i)
            self.assertTrue(rcknn_e2e.distances_agree(response.distances[q * 3], 0.0),
                            response.distances[q * 3])

    def test_search_stream_answers_in_order(self):
        requests = [pb2.SearchRequest(index_id="small", k=1 + r % 5,
                                      query_ids=self.set.query_ids[r:r + 1 + 7 * r])
                    for r in range(12)]
        responses = list(self.stub.SearchStream(iter(requests), timeout=60))
        self.assertEqual(len(responses), len(requests))
        for request, response in zip(requests, responses):
            single = self.stub.Search(request, timeout=60)
            self.assertEqual(response.num_queries, len(request.query_ids))
            # The same query gets the same bits in any request (docs/design.md section 3).
            self.assertEqual(list(response.neighbor_ids), list(single.neighbor_ids))
            self.assertEqual(list(response.distances), list(single.distances))

    def test_lifecycle_and_errors(self):
        names = [i.index_id for i in self.stub.ListIndexes(pb2.ListIndexesRequest()).indexes]
        self.assertIn("small", names)
        with self.assertRaises(grpc.RpcError) as error:
            self.stub.GetIndex(pb2.GetIndexRequest(index_id="missing"))
        self.assertEqual(error.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as error:
            self.stub.CreateIndex(pb2.CreateIndexRequest(index_id="small", spec=self.set.spec(pb2)))
        self.assertEqual(error.exception.code(), grpc.StatusCode.ALREADY_EXISTS)
        with self.assertRaises(grpc.RpcError) as error:
            self.search(k=-1, query_ids=[1])
        self.assertEqual(error.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(error.exception.details().startswith("k"), error.exception.details())
        self.stub.CreateIndex(pb2.CreateIndexRequest(index_id="temp", spec=self.set.spec(pb2)))
        self.stub.DeleteIndex(pb2.DeleteIndexRequest(index_id="temp"))
        with self.assertRaises(grpc.RpcError) as error:
            self.stub.DeleteIndex(pb2.DeleteIndexRequest(index_id="temp"))
        self.assertEqual(error.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_health_and_reflection(self):
        check = self.channel.unary_unary("/grpc.health.v1.Health/Check", **IDENTITY)
        self.assertEqual(check(b""), HEALTH_SERVING)
        self.assertEqual(check(b"\x0a\x0e" + b"rcknn.v1.Rcknn"), HEALTH_SERVING)
        reflect = self.channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", **IDENTITY)
        symbol = b"rcknn.v1.Rcknn"
        replies = list(reflect(iter([b"\x3a\x00", b"\x22" + bytes([len(symbol)]) + symbol]),
                               timeout=10))
        self.assertEqual(len(replies), 2)
        self.assertIn(b"rcknn.v1.Rcknn", replies[0])
        self.assertIn(b"grpc.health.v1.Health", replies[0])
        self.assertIn(b"rcknn/v1/rcknn.proto", replies[1])  # the file descriptor itself


class ShutdownTest(unittest.TestCase):
    def test_sigterm_drains_in_flight_calls_and_exits_zero(self):
        data = rcknn_e2e.Dataset(ARGS["data_dir"], "small")
        server = rcknn_e2e.Server(ARGS["server"],
                                  os.path.join(ARGS["work_dir"], "shutdown.log"),
                                  "--shutdown_grace=60s")
        try:
            channel = connect(server.address)
            stub = pb2_grpc.RcknnStub(channel)
            stub.CreateIndex(pb2.CreateIndexRequest(index_id="small", spec=data.spec(pb2)))
            stub.UploadPoints(rcknn_e2e.upload_chunks(pb2, "small", data.points, 2, 1000))
            stub.BuildIndex(pb2.BuildIndexRequest(index_id="small"))
            rcknn_e2e.wait_ready(pb2, stub, "small")

            watch = channel.unary_stream("/grpc.health.v1.Health/Watch", **IDENTITY)(b"")
            self.assertEqual(next(watch), HEALTH_SERVING)
            # A stream whose first answer has arrived is in flight on the server.
            requests = [pb2.SearchRequest(index_id="small", k=5, query_ids=[1, 2]),
                        pb2.SearchRequest(index_id="small", k=20,
                                          query_ids=list(range(data.n)) * 4)]
            stream = stub.SearchStream(iter(requests), timeout=120)
            answers = [next(stream)]
            server.process.send_signal(signal.SIGTERM)
            self.assertEqual(next(watch), HEALTH_NOT_SERVING)
            self.assertEqual(list(watch), [])  # the health watch ends with the shutdown
            answers.extend(stream)  # the in-flight stream is served to its end
            self.assertEqual(len(answers), 2)
            self.assertEqual(answers[1].num_queries, 4 * data.n)
            self.assertEqual(server.process.wait(timeout=60), 0, server.log())
            self.assertIn("shut down", server.log())
            channel.close()
        finally:
            server.kill()


if __name__ == "__main__":
    rcknn_e2e.main()
