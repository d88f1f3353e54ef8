#!/usr/bin/python3
"""rcknn-router over real rcknn-server shards on 127.0.0.1: 3 shards, the second with 2
replicas, and one plain rcknn-server holding the same data as the reference.

Every index is uploaded through the router (several streams, chunks that cross the shards'
range boundaries) and built with the router's own draw of the inducing points. The mid-regime set
declares its size (CreateIndexRequest.expected_num_points: three equal ranges); the dense set does
not, so it fills the shards in --shard_points ranges and the last shard takes the rest. Every
answer (by id, include_self, predecessor mode with queries on both sides of every shard boundary,
out-of-sample points, SearchStream) must equal the single server's by the rule of docs/design.md
section 3, and a predecessor query is sent only to the shards whose range starts below its id. Then: kill -9 of one replica while a batch runs (every search
still succeeds), kill -9 of both replicas of the shard (UNAVAILABLE naming it, never a partial
answer), their restart from their data directories (READY and exact again), and a restart of
the router itself (same indexes, same answers).

  router_e2e_test.py --server=BIN --router=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR
"""
import array
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
pb2, pb2_grpc = rcknn_e2e.generate_stubs(ARGS["proto_dir"], os.path.join(ARGS["work_dir"], "py"))
READY = pb2.INDEX_STATE_READY
SHARD_POINTS = 1500  # --shard_points: the dense set (6000 points) overflows into the last shard
SHARDS = 3
K = 12
TOL = 1e-6
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 << 20),
                   ("grpc.max_send_message_length", 256 << 20)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distances_agree(a, b):
    """docs/design.md section 3: within tol, in the distance or (near 0) in its square."""
    return abs(a - b) <= TOL or abs(a * a - b * b) <= TOL


def compare(got, want, k):
    """'' if two SearchResponses agree by the rule of docs/design.md section 3, else the first
    difference."""
    if got.num_queries != want.num_queries or got.k != want.k:
        return f"shape {got.num_queries}x{got.k} vs {want.num_queries}x{want.k}"
    ids, dists = got.neighbor_ids, got.distances
    ref_ids, ref_dists = want.neighbor_ids, want.distances
    for q in range(want.num_queries):
        row = range(q * k, (q + 1) * k)
        for j in row:
            a_inf, b_inf = dists[j] == float("inf"), ref_dists[j] == float("inf")
            if a_inf != b_inf or (not a_inf and not distances_agree(dists[j], ref_dists[j])):
                return f"query {q} rank {j - q * k}: distance {dists[j]} vs {ref_dists[j]}"
            if a_inf:
                if ids[j] != -1:
                    return f"query {q} rank {j - q * k}: padding id {ids[j]}"
                continue
            if ids[j] != ref_ids[j]:
                # A different id is fine only where two candidates tie within tol.
                tied = distances_agree(dists[j], ref_dists[(q + 1) * k - 1]) or any(
                    ref_ids[t] == ids[j] and distances_agree(ref_dists[t], dists[j]) for t in row)
                if not tied:
                    return f"query {q} rank {j - q * k}: id {ids[j]} vs {ref_ids[j]}"
    return ""


class Process:
    """One rcknn-server or rcknn-router, its log in a file; 'listening on' means started."""

    def __init__(self, name, argv):
        self.name = name
        self.argv = argv
        self.starts = 0
        self.process = None
        self.log_file = None
        self.log_path = None

    def start(self):
        self.starts += 1
        self.log_path = os.path.join(ARGS["work_dir"], f"{self.name}.{self.starts}.log")
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(self.argv, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline and self.process.poll() is None:
            with open(self.log_path) as f:
                if re.search(r"listening on (\S+)", f.read()):
                    return self
            time.sleep(0.01)
        self.stop()
        with open(self.log_path) as f:
            raise RuntimeError(f"{self.name} did not start:\n" + f.read())

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """kill -9."""
        if self.alive():
            self.process.kill()
            self.process.wait()
        if self.log_file is not None:
            self.log_file.close()

    def terminate(self):
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        if self.log_file is not None:
            self.log_file.close()

    stop = kill


def server_process(name):
    data_dir = os.path.join(ARGS["work_dir"], name + ".data")
    shutil.rmtree(data_dir, ignore_errors=True)
    port = free_port()
    proc = Process(name, [ARGS["server"], f"--listen=127.0.0.1:{port}", "--metrics_listen=",
                          "--threads=1", f"--data_dir={data_dir}"])
    proc.address = f"127.0.0.1:{port}"
    return proc


def normal_points(seed, n, dimension):
    rng = random.Random(seed)
    return array.array("d", (rng.gauss(0.0, 1.0) for _ in range(n * dimension)))


def residual_spec(dimension, kernel, variance, lengthscale, m, seed):
    return pb2.IndexSpec(metric=pb2.METRIC_RESIDUAL_CORRELATION, dimension=dimension,
                         kernel=pb2.KernelSpec(type=kernel, variance=variance,
                                               lengthscales=[lengthscale]),
                         inducing_count=m, inducing_seed=seed)


class Case:
    def __init__(self, name, spec, points):
        self.name, self.spec, self.points = name, spec, points
        self.dimension = spec.dimension
        self.n = len(points) // spec.dimension
        self.expected = 0  # CreateIndexRequest.expected_num_points through the router

    def shard_starts(self):
        """The first global id of every shard's range (router/shard_layout.h)."""
        per_shard = -(-self.expected // SHARDS) if self.expected else SHARD_POINTS
        return [s * per_shard for s in range(SHARDS)]


def cases():
    small = rcknn_e2e.Dataset(ARGS["data_dir"], "small")
    # The shipped mid-regime set, with the seeded draw (not the shipped inducing points): the
    # router must draw exactly as one server does.
    mid_spec = small.spec(pb2)
    del mid_spec.inducing_points[:]
    mid_spec.inducing_count = 128
    mid_spec.inducing_seed = 11
    dense = Case("dense", residual_spec(2, pb2.KERNEL_RBF, 1.0, 0.5, 48, 3),
                 normal_points(5, 6000, 2))
    mid = Case("mid", mid_spec, small.points)
    mid.expected = mid.n
    return [mid, dense]


class RouterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(ARGS["work_dir"], exist_ok=True)
        cls.processes = []
        try:
            cls.shard0 = server_process("shard0")
            cls.shard1a = server_process("shard1a")
            cls.shard1b = server_process("shard1b")
            cls.shard2 = server_process("shard2")
            cls.single = server_process("single")
            cls.processes = [cls.shard0, cls.shard1a, cls.shard1b, cls.shard2, cls.single]
            for p in cls.processes:
                p.start()
            router_port = free_port()
            cls.metrics_port = free_port()
            shards = (f"{cls.shard0.address},{cls.shard1a.address}|{cls.shard1b.address},"
                      f"{cls.shard2.address}")
            cls.router = Process("router", [ARGS["router"], f"--listen=127.0.0.1:{router_port}",
                                            f"--metrics_listen=127.0.0.1:{cls.metrics_port}",
                                            f"--shards={shards}",
                                            f"--shard_points={SHARD_POINTS}"])
            cls.router.address = f"127.0.0.1:{router_port}"
            cls.processes.append(cls.router)
            cls.router.start()
            cls.router_channel = grpc.insecure_channel(cls.router.address, options=CHANNEL_OPTIONS)
            cls.single_channel = grpc.insecure_channel(cls.single.address, options=CHANNEL_OPTIONS)
            cls.via_router = pb2_grpc.RcknnStub(cls.router_channel)
            cls.via_single = pb2_grpc.RcknnStub(cls.single_channel)
            cls.cases = cases()
            for case in cls.cases:
                for stub in (cls.via_router, cls.via_single):
                    stub.CreateIndex(pb2.CreateIndexRequest(
                        index_id=case.name, spec=case.spec, expected_num_points=case.expected),
                        timeout=30)
                    # Two streams, chunks of 700 rows: chunks across range boundaries.
                    half = case.n // 2 * case.dimension
                    for part in (case.points[:half], case.points[half:]):
                        stub.UploadPoints(rcknn_e2e.upload_chunks(pb2, case.name, part,
                                                                  case.dimension, 700), timeout=60)
                    stub.BuildIndex(pb2.BuildIndexRequest(index_id=case.name), timeout=30)
                for stub in (cls.via_router, cls.via_single):
                    reports = rcknn_e2e.wait_ready(pb2, stub, case.name)
                    assert reports[-1].state == READY, reports[-1]
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for p in getattr(cls, "processes", []):
            p.kill()

    # -- helpers ---------------------------------------------------------------------------

    def query_ids(self, case):
        """Ids on both sides of every shard's range boundary, the ends, and random ones."""
        ids = {0, 1, case.n - 1, case.n - 2}
        for b in case.shard_starts()[1:]:
            ids.update((b - 1, b, b + 1))
        rng = random.Random(case.n)
        ids.update(rng.randrange(case.n) for _ in range(40))
        return sorted(i for i in ids if 0 <= i < case.n)

    def requests(self, case):
        ids = self.query_ids(case)
        points = normal_points(case.n + 1, 30, case.dimension)
        # Some query points exactly at data points: distance 0 to those.
        for j, i in enumerate((0, 777, case.n - 1)):
            points[j * case.dimension:(j + 1) * case.dimension] = \
                case.points[i * case.dimension:(i + 1) * case.dimension]
        out = []
        for pred in (False, True):
            for self_too in (False, True):
                out.append(pb2.SearchRequest(index_id=case.name, k=K, query_ids=ids,
                                             predecessor_mode=pred, include_self=self_too))
        out.append(pb2.SearchRequest(index_id=case.name, k=K, query_points=points))
        out.append(pb2.SearchRequest(index_id=case.name, k=case.n + 5, query_ids=ids[:5]))
        return out

    def expect_same_answers(self, case, what=""):
        for request in self.requests(case):
            got = self.via_router.Search(request, timeout=60)
            want = self.via_single.Search(request, timeout=60)
            diff = compare(got, want, request.k)
            self.assertEqual(diff, "", f"{what}{case.name}: {request.predecessor_mode=} "
                                       f"{request.include_self=} points={len(request.query_points)}")

    def wait_router_ready(self, case, timeout=60):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                self.via_router.Search(pb2.SearchRequest(index_id=case.name, k=1, query_ids=[0]),
                                       timeout=10)
                return
            except grpc.RpcError as e:  # restoring shards answer FAILED_PRECONDITION or UNAVAILABLE
                last = e
                time.sleep(0.1)
        self.fail(f"{case.name} never answered again through the router: {last}")

    # -- tests (run in name order) ---------------------------------------------------------

    def test_1_index_info_is_aggregated(self):
        for case in self.cases:
            got = self.via_router.GetIndex(pb2.GetIndexRequest(index_id=case.name), timeout=10)
            want = self.via_single.GetIndex(pb2.GetIndexRequest(index_id=case.name), timeout=10)
            self.assertEqual(got.state, READY)
            self.assertEqual(got.num_points, case.n)
            self.assertEqual(got.spec.inducing_count, want.spec.inducing_count)
            self.assertEqual(got.spec.inducing_seed, want.spec.inducing_seed)
            self.assertEqual(got.build_progress, 1.0)
        listed = self.via_router.ListIndexes(pb2.ListIndexesRequest(), timeout=10)
        self.assertEqual([i.index_id for i in listed.indexes], sorted(c.name for c in self.cases))

    def test_1_health_and_reflection(self):
        """The router serves gRPC health and reflection like a server (raw bytes: no stubs)."""
        identity = {"request_serializer": lambda x: x, "response_deserializer": lambda x: x}
        check = self.router_channel.unary_unary("/grpc.health.v1.Health/Check", **identity)
        serving = b"\x08\x01"
        self.assertEqual(check(b"", timeout=10), serving)
        self.assertEqual(check(b"\x0a\x0e" + b"rcknn.v1.Rcknn", timeout=10), serving)
        for version in ("v1alpha", "v1"):
            reflect = self.router_channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo", **identity)
            symbol = b"rcknn.v1.Rcknn"
            replies = list(reflect(iter([b"\x3a\x00",
                                         b"\x22" + bytes([len(symbol)]) + symbol]), timeout=10))
            self.assertEqual(len(replies), 2, version)
            self.assertIn(b"rcknn.v1.Rcknn", replies[0])
            self.assertIn(b"grpc.health.v1.Health", replies[0])
            self.assertIn(b"rcknn/v1/rcknn.proto", replies[1])

    def test_2_every_mode_equals_one_server(self):
        for case in self.cases:
            self.expect_same_answers(case)

    def shard_searches(self):
        """rcknn_router_shard_calls_total for Search, per shard, from the router's /metrics."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=10).read().decode()
        counts = [0.0] * SHARDS
        for line in text.splitlines():
            if line.startswith("rcknn_router_shard_calls_total{") and \
                    'grpc_method="Search"' in line:
                shard = int(re.search(r'shard="(\d+)"', line).group(1))
                counts[shard] += float(line.rsplit(" ", 1)[1])
        return counts

    def test_2_predecessor_queries_fan_out_to_earlier_shards_only(self):
        for case in self.cases:
            starts = case.shard_starts()
            for last in range(SHARDS):  # queries in shard `last`'s range only
                end = starts[last + 1] if last + 1 < SHARDS else case.n
                ids = [starts[last] + 1, (starts[last] + end) // 2, end - 1]
                before = self.shard_searches()
                request = pb2.SearchRequest(index_id=case.name, k=K, query_ids=ids,
                                            predecessor_mode=True)
                got = self.via_router.Search(request, timeout=60)
                self.assertEqual(compare(got, self.via_single.Search(request, timeout=60), K), "")
                after = self.shard_searches()
                called = [s for s in range(SHARDS) if after[s] > before[s]]
                self.assertEqual(called, list(range(last + 1)),
                                 f"{case.name}: predecessor queries {ids} went to shards {called}")

    def test_3_search_stream_equals_one_server(self):
        case = self.cases[0]
        requests = self.requests(case)
        got = list(self.via_router.SearchStream(iter(requests), timeout=60))
        self.assertEqual(len(got), len(requests))
        for request, response in zip(requests, got):
            self.assertEqual(compare(response, self.via_single.Search(request, timeout=60),
                                     request.k), "")

    def test_3_raw_answer_layout(self):
        case = self.cases[0]
        request = self.requests(case)[0]
        packed = self.via_router.Search(request, timeout=60)
        request.raw_answer = True
        raw = self.via_router.Search(request, timeout=60)
        self.assertEqual(len(raw.neighbor_ids), 0)
        ids = array.array("q")
        ids.frombytes(raw.neighbor_ids_raw)
        dists = array.array("d")
        dists.frombytes(raw.distances_raw)
        self.assertEqual(list(ids), list(packed.neighbor_ids))
        self.assertEqual(list(dists), list(packed.distances))

    def test_4_errors_name_the_field(self):
        case = self.cases[0]
        with self.assertRaises(grpc.RpcError) as caught:
            self.via_router.Search(pb2.SearchRequest(index_id=case.name, k=3,
                                                     query_ids=[0, case.n]), timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("query_ids[1]", caught.exception.details())
        with self.assertRaises(grpc.RpcError) as caught:
            self.via_router.Search(pb2.SearchRequest(index_id="nope", k=3, query_ids=[0]),
                                   timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as caught:
            self.via_router.UploadPoints(iter([pb2.UploadPointsRequest(
                index_id=case.name, coordinates=[0.0, 1.0])]), timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        with self.assertRaises(grpc.RpcError) as caught:
            self.via_router.CreateIndex(pb2.CreateIndexRequest(index_id=case.name,
                                                               spec=case.spec), timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.ALREADY_EXISTS)
        for expected in (-1, 10**13):  # the shards' names must fit the server's limit
            with self.assertRaises(grpc.RpcError) as caught:
                self.via_router.CreateIndex(pb2.CreateIndexRequest(
                    index_id="too.big", spec=case.spec, expected_num_points=expected), timeout=10)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("expected_num_points", caught.exception.details())
        # Re-parameterised indexes are refused (the shards' requests would drop the source),
        # and nothing is created on any shard.
        for field, request in (
                ("source_index_id", pb2.CreateIndexRequest(index_id="copy", spec=case.spec,
                                                           source_index_id=case.name)),
                ("source_tree", pb2.CreateIndexRequest(index_id="copy", spec=case.spec,
                                                       source_tree=pb2.SOURCE_TREE_REFIT))):
            with self.assertRaises(grpc.RpcError) as caught:
                self.via_router.CreateIndex(request, timeout=10)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertTrue(caught.exception.details().startswith(field),
                            caught.exception.details())
        shard = pb2_grpc.RcknnStub(grpc.insecure_channel(self.shard0.address))
        names = [i.index_id for i in shard.ListIndexes(pb2.ListIndexesRequest(), timeout=10).indexes]
        self.assertFalse(any(n.startswith("copy.") for n in names), names)

    def test_5_replica_failover_and_unavailable_shard(self):
        case = self.cases[1]
        requests = self.requests(case)
        want = [self.via_single.Search(r, timeout=60) for r in requests]
        failures = []
        done = threading.Event()
        rounds = [0]

        def hammer():
            while not done.is_set() or rounds[0] < 6:
                for r, w in zip(requests, want):
                    try:
                        diff = compare(self.via_router.Search(r, timeout=60), w, r.k)
                    except grpc.RpcError as e:
                        diff = f"{e.code()}: {e.details()}"
                    if diff:
                        failures.append(diff)
                rounds[0] += 1

        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.3)
        self.shard1a.kill()  # mid-batch
        done.set()
        thread.join(timeout=120)
        self.assertEqual(failures, [], "searches failed while one replica of shard 1 died")

        self.shard1b.kill()
        for r in requests[:2]:
            with self.assertRaises(grpc.RpcError) as caught:
                self.via_router.Search(r, timeout=30)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
            self.assertIn("shard 1", caught.exception.details())
        with self.assertRaises(grpc.RpcError) as caught:
            self.via_router.GetIndex(pb2.GetIndexRequest(index_id=case.name), timeout=30)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)

        # Back from their data directories: READY and exact again.
        self.shard1a.start()
        self.shard1b.start()
        for c in self.cases:
            self.wait_router_ready(c)
            self.expect_same_answers(c, "after the shard's restart: ")

    def test_6_router_restart_changes_nothing(self):
        before = {c.name: self.via_router.GetIndex(pb2.GetIndexRequest(index_id=c.name),
                                                   timeout=10) for c in self.cases}
        self.router.terminate()
        self.router.start()
        for c in self.cases:
            after = self.via_router.GetIndex(pb2.GetIndexRequest(index_id=c.name), timeout=30)
            self.assertEqual(after.num_points, before[c.name].num_points)
            self.assertEqual(after.state, READY)
            self.assertEqual(after.spec, before[c.name].spec)
            self.expect_same_answers(c, "after the router's restart: ")

    def test_6_cli_declares_the_expected_size(self):
        """rcknn create --expected_points through the router: 3 equal ranges of its size."""
        subprocess.run([ARGS["client"], f"--server={self.router.address}", "create",
                        "--index=cli", "--dim=2", "--expected_points=3000"], check=True,
                       capture_output=True, timeout=60)
        shard = pb2_grpc.RcknnStub(grpc.insecure_channel(self.shard2.address))
        names = [i.index_id for i in shard.ListIndexes(pb2.ListIndexesRequest(), timeout=10).indexes]
        self.assertIn("cli.rcknn-shard-2-of-3-range-1000", names)
        self.via_router.DeleteIndex(pb2.DeleteIndexRequest(index_id="cli"), timeout=30)

    def test_7_delete_through_the_router(self):
        self.via_router.DeleteIndex(pb2.DeleteIndexRequest(index_id="mid"), timeout=30)
        listed = self.via_router.ListIndexes(pb2.ListIndexesRequest(), timeout=10)
        self.assertEqual([i.index_id for i in listed.indexes], ["dense"])
        shard = pb2_grpc.RcknnStub(grpc.insecure_channel(self.shard0.address))
        names = [i.index_id for i in shard.ListIndexes(pb2.ListIndexesRequest(), timeout=10).indexes]
        self.assertFalse(any(n.startswith("mid.") for n in names), names)

    def shard_call_codes(self):
        """rcknn_router_shard_calls_total from the router's /metrics, summed by grpc_code."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=10).read().decode()
        codes = {}
        for line in text.splitlines():
            if line.startswith("rcknn_router_shard_calls_total{"):
                code = re.search(r'grpc_code="(\w+)"', line).group(1)
                codes[code] = codes.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
        return codes

    def test_8_deadline_and_cancellation_reach_the_shards(self):
        """The client's deadline and its cancellation end the router's shard calls too (they
        would otherwise run to the end and count OK)."""
        case = next(c for c in self.cases if c.name == "dense")
        heavy = pb2.SearchRequest(index_id=case.name, k=200, query_ids=list(range(case.n)))

        def ended():  # shard calls cut short, by their own deadline or the parent's cancellation
            codes = self.shard_call_codes()
            return codes.get("DEADLINE_EXCEEDED", 0.0) + codes.get("CANCELLED", 0.0)

        for what in ("deadline", "cancellation"):
            before = ended()
            if what == "cancellation":
                future = self.via_router.Search.future(heavy, timeout=60)
                time.sleep(0.2)
                future.cancel()
                self.assertEqual(future.code(), grpc.StatusCode.CANCELLED)
            else:
                with self.assertRaises(grpc.RpcError) as caught:
                    self.via_router.Search(heavy, timeout=0.2)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
            deadline = time.time() + 20
            while ended() == before and time.time() < deadline:
                time.sleep(0.05)
            self.assertGreater(ended(), before,
                               f"{what}: no shard call was cut short: {self.shard_call_codes()}")
        # The shards are free again: a normal search answers.
        self.expect_same_answers(case, "after the cancelled searches: ")
    def test_9_tls_mutual_tls_and_tokens(self):
        """The router's own port with --tls_cert/--tls_key/--tls_client_ca/--auth_token_file,
        as a server's: a client with the CA, its certificate and a token gets the one server's
        answers; no token is UNAUTHENTICATED, a read-only token cannot write, plaintext and a
        client without a certificate do not connect."""
        source_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        certs = rcknn_e2e.make_test_certs(source_dir, os.path.join(ARGS["work_dir"], "certs"))
        cert = lambda name: os.path.join(certs, name)  # pylint: disable=unnecessary-lambda-assignment
        tokens = os.path.join(ARGS["work_dir"], "router_tokens")
        with open(tokens, "w") as f:
            f.write("admin-secret\nreadonly reader-secret\n")
        port = free_port()
        shards = (f"{self.shard0.address},{self.shard1a.address}|{self.shard1b.address},"
                  f"{self.shard2.address}")
        secure = Process("router_tls", [
            ARGS["router"], f"--listen=127.0.0.1:{port}", "--metrics_listen=",
            f"--shards={shards}", f"--shard_points={SHARD_POINTS}",
            f"--tls_cert={cert('server.pem')}", f"--tls_key={cert('server.key')}",
            f"--tls_client_ca={cert('ca.pem')}", f"--auth_token_file={tokens}"])
        self.processes.append(secure)
        secure.start()
        address = f"127.0.0.1:{port}"

        def stub(token=None, client_cert=True, tls=True):
            return pb2_grpc.RcknnStub(rcknn_e2e.connect(
                address, tls_ca=cert("ca.pem") if tls else None,
                tls_cert=cert("client.pem") if client_cert and tls else None,
                tls_key=cert("client.key") if client_cert and tls else None, token=token,
                options=CHANNEL_OPTIONS))

        case = next(c for c in self.cases if c.name == "dense")
        for token in ("admin-secret", "reader-secret"):
            for request in self.requests(case)[:2]:
                self.assertEqual(compare(stub(token).Search(request, timeout=60),
                                         self.via_single.Search(request, timeout=60),
                                         request.k), "")
        for code, call in (
                (grpc.StatusCode.UNAUTHENTICATED, stub().ListIndexes),
                (grpc.StatusCode.UNAUTHENTICATED, stub("wrong").ListIndexes),
                (grpc.StatusCode.UNAVAILABLE, stub("admin-secret", tls=False).ListIndexes),
                (grpc.StatusCode.UNAVAILABLE,
                 stub("admin-secret", client_cert=False).ListIndexes)):
            with self.assertRaises(grpc.RpcError) as caught:
                call(pb2.ListIndexesRequest(), timeout=10)
            self.assertEqual(caught.exception.code(), code, caught.exception.details())
        with self.assertRaises(grpc.RpcError) as caught:
            stub("reader-secret").DeleteIndex(pb2.DeleteIndexRequest(index_id=case.name),
                                              timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.via_router.GetIndex(pb2.GetIndexRequest(index_id=case.name),
                                                  timeout=10).state, READY)
        secure.kill()


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
