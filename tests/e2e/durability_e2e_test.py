#!/usr/bin/python3
"""Durability of --data_dir against the real rcknn-server binary: restarts after SIGTERM and
after kill -9 (indexes come back in the same state with the same points, READY ones answer
bit-identically), kill -9 in the middle of an upload stream, while an upload file or the tree
file is being committed, and during a build (no acknowledged upload lost, nothing half-applied,
never a wrong answer), corrupt, truncated, foreign and missing files (that index FAILED with a
reason naming the file, the others serving, no file touched), and the lock against a second
server on the same directory.

  durability_e2e_test.py --server=BIN --proto_dir=DIR --data_dir=DIR --work_dir=DIR
"""
import array
import hashlib
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)
pb2, pb2_grpc = rcknn_e2e.generate_stubs(ARGS["proto_dir"], os.path.join(ARGS["work_dir"], "py"))

LOADING, BUILDING, READY, FAILED = (pb2.INDEX_STATE_LOADING, pb2.INDEX_STATE_BUILDING,
                                    pb2.INDEX_STATE_READY, pb2.INDEX_STATE_FAILED)
K = 10
# Points of the crash scenarios: big enough that a build takes seconds and an upload stream
# many chunks, so that a kill -9 can land inside them. Kills during file commits do not depend on
# timing: the server pauses there (--testonly_pause_before_commit).
BIG_N = 300_000


def fresh_dir(name):
    path = os.path.join(ARGS["work_dir"], name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def random_points(seed, n, dimension):
    rng = random.Random(seed)
    return array.array("d", (rng.gauss(0.0, 1.0) for _ in range(n * dimension)))


def euclidean_spec(dimension):
    return pb2.IndexSpec(metric=pb2.METRIC_EUCLIDEAN, dimension=dimension)


def brute_force_euclidean(points, query_ids, k):
    """Exact k nearest in 3-D (self excluded) as flat ids and distances, ascending (distance,
    id)."""
    xs, ys, zs = points[0::3], points[1::3], points[2::3]
    ids, dists = [], []
    for q in query_ids:
        x, y, z = points[3 * q:3 * q + 3]
        squared = [(u - x) ** 2 + (v - y) ** 2 + (w - z) ** 2 for u, v, w in zip(xs, ys, zs)]
        best = sorted((s, i) for i, s in enumerate(squared) if i != q)[:k]
        ids.extend(i for _, i in best)
        dists.extend(math.sqrt(s) for s, _ in best)
    return ids, dists


def file_hashes(root):
    """{relative path: sha256} of every file under root."""
    hashes = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


class Node:
    """One rcknn-server on a --data_dir with a stub; start() again after a stop."""

    def __init__(self, data_dir, name):
        self.data_dir = data_dir
        self.name = name
        self.starts = 0
        self.server = None
        self.channel = None
        self.stub = None

    def start(self, *flags):
        self.starts += 1
        self.server = rcknn_e2e.Server(
            ARGS["server"], os.path.join(ARGS["work_dir"], f"{self.name}.{self.starts}.log"),
            f"--data_dir={self.data_dir}", "--metrics_listen=", *flags)
        self.channel = grpc.insecure_channel(self.server.address, options=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20)])
        self.stub = pb2_grpc.RcknnStub(self.channel)
        return self

    def stop(self):
        """kill -9 if it runs: the clean-up after a failed check."""
        if self.server is not None and self.server.alive():
            self.kill()

    def kill(self):
        """kill -9."""
        self.server.kill()
        self.channel.close()

    def terminate(self):
        """SIGTERM with no client connected (an idle connection holds up the shutdown)."""
        self.channel.close()
        return self.server.terminate()

    def index_dir(self, index_id):
        return os.path.join(self.data_dir, "indexes", index_id)

    def create(self, index_id, spec):
        info = self.stub.CreateIndex(pb2.CreateIndexRequest(index_id=index_id, spec=spec))
        assert info.state == LOADING, info

    def upload(self, index_id, points, dimension, rows_per_chunk=5000, factors=None,
               variances=None, columns=0):
        requests = []
        n = len(points) // dimension
        for first in range(0, n, rows_per_chunk):
            last = min(n, first + rows_per_chunk)
            request = pb2.UploadPointsRequest(
                index_id=index_id if first == 0 else "",
                coordinates=points[first * dimension:last * dimension])
            if factors is not None:
                request.factors.extend(factors[first * columns:last * columns])
                request.residual_variances.extend(variances[first:last])
            requests.append(request)
        return self.stub.UploadPoints(iter(requests), timeout=120)

    def build(self, index_id):
        info = self.stub.BuildIndex(pb2.BuildIndexRequest(index_id=index_id))
        assert info.state == BUILDING, info
        return self.wait(index_id)

    def wait(self, index_id):
        """The final IndexInfo once index_id is no longer BUILDING."""
        return rcknn_e2e.wait_ready(pb2, self.stub, index_id, timeout=120)[-1]

    def infos(self):
        """{id: IndexInfo} after every restore and build has ended."""
        listed = self.stub.ListIndexes(pb2.ListIndexesRequest()).indexes
        return {i.index_id: (self.wait(i.index_id) if i.state == BUILDING else i) for i in listed}

    def search(self, index_id, **kwargs):
        return self.stub.Search(pb2.SearchRequest(index_id=index_id, **kwargs), timeout=120)

    def answers(self, index_id, query_ids, query_points=None, k=K):
        """The raw bytes of ids and distances of every query mode: compared bit for bit."""
        out = []
        for kwargs in ({"query_ids": query_ids},
                       {"query_ids": query_ids, "predecessor_mode": True},
                       {"query_ids": query_ids, "include_self": True}):
            response = self.search(index_id, k=k, **kwargs)
            out.append((array.array("q", response.neighbor_ids).tobytes(),
                        array.array("d", response.distances).tobytes()))
        if query_points is not None:
            response = self.search(index_id, k=k, query_points=query_points)
            out.append((array.array("q", response.neighbor_ids).tobytes(),
                        array.array("d", response.distances).tobytes()))
        return out


def durable_fields(info):
    """What a restart must preserve of an IndexInfo."""
    return (info.state, info.num_points, info.spec.SerializeToString(deterministic=True),
            info.error, info.build_seconds if info.state == READY else None)


class UploadThread(threading.Thread):
    """One UploadPoints stream of prepared chunks on its own thread; `outcome` is the response
    or the grpc.RpcError. `sent` is set when `signal_after` chunks have been handed to gRPC,
    `all_sent` once gRPC asked for the chunk after the last one."""

    def __init__(self, stub, requests, signal_after):
        super().__init__(daemon=True)
        self.stub, self.requests, self.signal_after = stub, requests, signal_after
        self.sent, self.all_sent = threading.Event(), threading.Event()
        self.outcome = None

    def chunks(self):
        for count, request in enumerate(self.requests, 1):
            yield request
            if count == self.signal_after:
                self.sent.set()
        self.all_sent.set()

    def run(self):
        try:
            self.outcome = self.stub.UploadPoints(self.chunks(), timeout=300)
        except grpc.RpcError as error:
            self.outcome = error

    def acknowledged(self):
        return isinstance(self.outcome, pb2.UploadPointsResponse)


def upload_requests(index_id, points, dimension, rows_per_chunk):
    return list(rcknn_e2e.upload_chunks(pb2, index_id, points, dimension, rows_per_chunk))


def pause_flag(pause_dir):
    """The server's test-only hook: before committing a file it creates
    <pause_dir>/<index>.<file>.paused and waits (for <...>.resume, which these tests never
    create: they kill -9 it there)."""
    return f"--testonly_pause_before_commit={pause_dir}"


def wait_for_pause(node, pause_dir, index_id, file_name, thread=None, timeout=120):
    """Waits until the server paused before committing `file_name` of `index_id`; True if it
    did, False if it exited, `thread` (the call that writes the file) ended, or the time ran
    out."""
    marker = os.path.join(pause_dir, f"{index_id}.{file_name}.paused")
    deadline = time.monotonic() + timeout
    while (time.monotonic() < deadline and node.server.alive() and
           (thread is None or thread.is_alive() or os.path.exists(marker))):
        if os.path.exists(marker):
            return True
        time.sleep(0.005)
    return False


class RestartTest(unittest.TestCase):
    """Indexes of every kind survive SIGTERM and kill -9 restarts unchanged."""

    def test_restart(self):
        data_dir = fresh_dir("restart")
        node = Node(data_dir, "restart").start()
        self.addCleanup(node.stop)
        small = rcknn_e2e.Dataset(ARGS["data_dir"], "small")
        queries = {}

        # Residual correlation, the shipped inducing points, three uploads.
        node.create("res", small.spec(pb2))
        for first, last in ((0, 1500), (1500, 3000), (3000, small.n)):
            node.upload("res", small.points[first * 2:last * 2], 2, 700)
        info = node.build("res")
        self.assertEqual((info.state, info.num_points), (READY, small.n), info.error)
        response = node.search("res", k=small.k, query_ids=small.query_ids)
        self.assertEqual(rcknn_e2e.compare_answers(
            list(response.neighbor_ids), list(response.distances), list(small.knn_ids),
            list(small.knn_dists), small.k), "")
        queries["res"] = (list(small.query_ids[:64]), list(small.points[:40]))

        # Residual correlation, inducing points drawn by the server (seeded), two uploads.
        drawn = random_points(11, 3000, 2)
        spec = pb2.IndexSpec(
            metric=pb2.METRIC_RESIDUAL_CORRELATION, dimension=2, inducing_count=64,
            inducing_seed=5,
            kernel=pb2.KernelSpec(type=pb2.KERNEL_RBF, variance=2.0, lengthscales=[0.7, 0.4]))
        node.create("drawn", spec)
        node.upload("drawn", drawn[:2 * 1000], 2, 300)
        node.upload("drawn", drawn[2 * 1000:], 2, 300)
        self.assertEqual(node.build("drawn").state, READY)
        queries["drawn"] = (list(range(0, 3000, 47)), list(drawn[:40]))

        # Euclidean, three uploads.
        euc = random_points(12, 20000, 3)
        node.create("euc", euclidean_spec(3))
        for first, last in ((0, 8000), (8000, 8001), (8001, 20000)):
            node.upload("euc", euc[first * 3:last * 3], 3, 3000)
        self.assertEqual(node.build("euc").state, READY)
        queries["euc"] = (list(range(0, 20000, 331)), list(euc[:60]))

        # Residual correlation with client-supplied factors V (8 columns) and variances p.
        rng = random.Random(13)
        columns, n_sup = 8, 2000
        sup_points = random_points(14, n_sup, 2)
        factors = array.array("d", (rng.gauss(0.0, 0.3) for _ in range(n_sup * columns)))
        variances = array.array("d", (rng.uniform(0.05, 1.0) for _ in range(n_sup)))
        spec = pb2.IndexSpec(
            metric=pb2.METRIC_RESIDUAL_CORRELATION, dimension=2, factors_supplied=True,
            kernel=pb2.KernelSpec(type=pb2.KERNEL_MATERN52, variance=1.0, lengthscales=[1.0]))
        node.create("sup", spec)
        node.upload("sup", sup_points[:2 * 1200], 2, 400, factors[:1200 * columns],
                    variances[:1200], columns)
        node.upload("sup", sup_points[2 * 1200:], 2, 400, factors[1200 * columns:],
                    variances[1200:], columns)
        self.assertEqual(node.build("sup").state, READY)
        queries["sup"] = (list(range(0, n_sup, 37)), None)

        # Left LOADING with two uploads.
        loading = random_points(15, 2000, 3)
        node.create("loading", euclidean_spec(3))
        node.upload("loading", loading[:3 * 500], 3, 200)
        node.upload("loading", loading[3 * 500:3 * 1200], 3, 200)

        before = {i: durable_fields(v) for i, v in node.infos().items()}
        self.assertEqual(sorted(before), ["drawn", "euc", "loading", "res", "sup"])
        self.assertEqual(before["loading"][:2], (LOADING, 1200))
        answers = {i: node.answers(i, *queries[i]) for i in queries}

        for how in ("SIGTERM", "kill -9"):
            with self.subTest(restart=how):
                if how == "SIGTERM":
                    self.assertEqual(node.terminate(), 0, node.server.log())
                else:
                    node.kill()
                node.start()
                after = {i: durable_fields(v) for i, v in node.infos().items()}
                self.assertEqual(after, before)
                for index_id in queries:
                    self.assertEqual(node.answers(index_id, *queries[index_id]),
                                     answers[index_id], index_id)
                self.assertEqual(sorted(os.listdir(node.index_dir("loading"))),
                                 ["spec.rcknn", "upload-000001.rcknn", "upload-000002.rcknn"])

        # The LOADING index takes more points and builds.
        response = node.upload("loading", loading[3 * 1200:], 3, 200)
        self.assertEqual((response.points_received, response.total_points), (800, 2000))
        info = node.build("loading")
        self.assertEqual((info.state, info.num_points), (READY, 2000), info.error)
        query_ids = list(range(0, 2000, 97))
        response = node.search("loading", k=K, query_ids=query_ids)
        ids, dists = brute_force_euclidean(loading, query_ids, K)
        self.assertEqual(rcknn_e2e.compare_answers(list(response.neighbor_ids),
                                                   list(response.distances), ids, dists, K), "")
        self.assertEqual(sorted(os.listdir(node.index_dir("loading"))),
                         ["spec.rcknn", "tree.rcknn", "upload-000001.rcknn",
                          "upload-000002.rcknn", "upload-000003.rcknn"])
        self.assertEqual(node.terminate(), 0, node.server.log())


class LockTest(unittest.TestCase):
    def test_second_server_on_the_same_data_dir_is_refused(self):
        data_dir = fresh_dir("lock")
        node = Node(data_dir, "lock").start()
        self.addCleanup(node.stop)
        node.create("kept", euclidean_spec(2))
        second = subprocess.run(
            [ARGS["server"], "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
             f"--data_dir={data_dir}"], capture_output=True, text=True, timeout=60)
        output = second.stdout + second.stderr
        self.assertEqual(second.returncode, 1, output)
        self.assertIn(f"--data_dir {data_dir} is in use by another rcknn-server", output)
        self.assertIn("LOCK is locked", output)
        self.assertTrue(node.server.alive())
        self.assertEqual(node.infos()["kept"].state, LOADING)
        self.assertEqual(node.terminate(), 0, node.server.log())


class CrashTest(unittest.TestCase):
    """kill -9 in the middle of uploads, of a build and of the commits of their files."""

    @classmethod
    def setUpClass(cls):
        cls.big = random_points(21, BIG_N, 3)

    def assert_reference_answers(self, node, index_id, reference_id, query_ids):
        self.assertEqual(node.answers(index_id, query_ids, list(self.big[:30])),
                         node.answers(reference_id, query_ids, list(self.big[:30])))

    def test_kill_during_uploads(self):
        node = Node(fresh_dir("crash_upload"), "crash_upload").start()
        self.addCleanup(node.stop)
        part1, part2 = self.big[:3 * 3000], self.big[3 * 3000:3 * 5000]
        node.create("up", euclidean_spec(3))
        self.assertEqual(node.upload("up", part1, 3, 1000).total_points, 3000)
        self.assertEqual(node.upload("up", part2, 3, 1000).total_points, 5000)

        # Killed while the client is still streaming: the stream was never acknowledged.
        thread = UploadThread(node.stub, upload_requests("up", self.big, 3, 1000),
                              signal_after=BIG_N // 1000 // 2)
        thread.start()
        self.assertTrue(thread.sent.wait(120))
        node.kill()
        thread.join(60)
        self.assertFalse(thread.is_alive())
        self.assertFalse(thread.acknowledged(), thread.outcome)
        # gRPC Python reports a connection lost mid-stream as either code.
        self.assertIn(thread.outcome.code(),
                      (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED))
        node.start()
        info = node.infos()["up"]
        self.assertEqual((info.state, info.num_points), (LOADING, 5000), info.error)
        self.assertEqual(sorted(os.listdir(node.index_dir("up"))),
                         ["spec.rcknn", "upload-000001.rcknn", "upload-000002.rcknn"])

        # Killed while the upload's file is being committed: the server, restarted with the
        # test-only pause, stops with the whole stream received and upload-000003.rcknn.tmp
        # written, before the commit, and is killed there. The stream was never acknowledged,
        # and after the restart the upload is absent and its temporary file gone.
        self.assertEqual(node.terminate(), 0, node.server.log())
        pause_dir = fresh_dir("crash_upload.pause")
        node.start(pause_flag(pause_dir))
        thread = UploadThread(node.stub, upload_requests("up", self.big, 3, 20000),
                              signal_after=1)
        thread.start()
        self.assertTrue(wait_for_pause(node, pause_dir, "up", "upload-000003.rcknn", thread),
                        "the server did not pause before committing upload-000003.rcknn:\n" +
                        node.server.log())
        self.assertIn("upload-000003.rcknn.tmp", os.listdir(node.index_dir("up")))
        node.kill()
        thread.join(60)
        self.assertFalse(thread.is_alive())
        self.assertFalse(thread.acknowledged(), thread.outcome)
        node.start()
        info = node.infos()["up"]
        self.assertEqual((info.state, info.num_points), (LOADING, 5000), info.error)
        self.assertEqual(sorted(os.listdir(node.index_dir("up"))),
                         ["spec.rcknn", "upload-000001.rcknn", "upload-000002.rcknn"])

        # The points that survived are exactly the acknowledged ones, in order: same answers,
        # bit for bit, as an index that never crashed, and as a brute force.
        node.create("ref", euclidean_spec(3))
        node.upload("ref", part1, 3, 1000)
        node.upload("ref", part2, 3, 1000)
        for index_id in ("up", "ref"):
            info = node.build(index_id)
            self.assertEqual((info.state, info.num_points), (READY, 5000), info.error)
        self.assert_reference_answers(node, "up", "ref", list(range(0, 5000, 250)))
        response = node.search("up", k=K, query_ids=[0, 2999, 3000, 4999])
        ids, dists = brute_force_euclidean(self.big[:3 * 5000], [0, 2999, 3000, 4999], K)
        self.assertEqual(rcknn_e2e.compare_answers(
            list(response.neighbor_ids), list(response.distances), ids, dists, K), "")
        self.assertEqual(node.terminate(), 0, node.server.log())

    def test_kill_during_build_and_tree_write(self):
        node = Node(fresh_dir("crash_build"), "crash_build").start()
        self.addCleanup(node.stop)
        half = 3 * (BIG_N // 2)
        for index_id in ("b1", "b2"):
            node.create(index_id, euclidean_spec(3))
            node.upload(index_id, self.big[:half], 3, 20000)
            self.assertEqual(node.upload(index_id, self.big[half:], 3, 20000).total_points, BIG_N)

        # kill -9 while BUILDING, before the tree is written.
        node.stub.BuildIndex(pb2.BuildIndexRequest(index_id="b1"))
        for info in node.stub.WatchIndex(pb2.GetIndexRequest(index_id="b1"), timeout=120):
            if info.state != BUILDING or info.build_progress > 0.0:
                break
        self.assertEqual(info.state, BUILDING, "the build ended before the kill: make it bigger")
        node.kill()
        self.assertNotIn("tree.rcknn", os.listdir(node.index_dir("b1")),
                         "the build ended before the kill: make it bigger")
        pause_dir = fresh_dir("crash_build.pause")
        node.start(pause_flag(pause_dir))
        infos = node.infos()
        self.assertEqual({i: (v.state, v.num_points) for i, v in infos.items()},
                         {"b1": (LOADING, BIG_N), "b2": (LOADING, BIG_N)})
        self.assertEqual(sorted(os.listdir(node.index_dir("b1"))),
                         ["spec.rcknn", "upload-000001.rcknn", "upload-000002.rcknn"])

        # kill -9 while the tree file is being committed: written to tree.rcknn.tmp, paused
        # before the commit (the test-only hook of this start), killed there.
        node.stub.BuildIndex(pb2.BuildIndexRequest(index_id="b2"))
        self.assertTrue(wait_for_pause(node, pause_dir, "b2", "tree.rcknn"),
                        "the server did not pause before committing the tree:\n" +
                        node.server.log())
        self.assertIn("tree.rcknn.tmp", os.listdir(node.index_dir("b2")))
        node.kill()
        self.assertNotIn("tree.rcknn", os.listdir(node.index_dir("b2")))
        node.start()
        infos = node.infos()
        self.assertEqual((infos["b2"].state, infos["b2"].num_points), (LOADING, BIG_N),
                         infos["b2"].error)
        self.assertEqual((infos["b1"].state, infos["b1"].num_points), (LOADING, BIG_N))
        self.assertFalse([n for n in os.listdir(node.index_dir("b2")) if n.endswith(".tmp")])

        # Both build again; b2 answers exactly as b1.
        for index_id in ("b1", "b2"):
            info = node.build(index_id)
            self.assertEqual((info.state, info.num_points), (READY, BIG_N), info.error)
        query_ids = [0, 1, 777, BIG_N // 2, BIG_N - 1] + list(range(5, BIG_N, BIG_N // 50))
        self.assert_reference_answers(node, "b2", "b1", query_ids)
        response = node.search("b1", k=K, query_ids=query_ids[:3])
        ids, dists = brute_force_euclidean(self.big, query_ids[:3], K)
        self.assertEqual(rcknn_e2e.compare_answers(
            list(response.neighbor_ids), list(response.distances), ids, dists, K), "")
        self.assertEqual(node.terminate(), 0, node.server.log())


def flip(path, position):
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(position % size)
        byte = f.read(1)[0]
        f.seek(position % size)
        f.write(bytes([byte ^ 0x5A]))


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def replace_with_garbage(path):
    with open(path, "wb") as f:
        f.write(random.Random(31).randbytes(5000))


class CorruptFileTest(unittest.TestCase):
    """A damaged file fails only its own index, with a reason naming it, and is left as it is."""

    HEADER = 48

    def setUp(self):
        self.data_dir = fresh_dir("corrupt")
        self.pristine = os.path.join(ARGS["work_dir"], "corrupt.victim")
        shutil.rmtree(self.pristine, ignore_errors=True)
        node = Node(self.data_dir, "corrupt").start()
        self.addCleanup(node.stop)
        self.small = rcknn_e2e.Dataset(ARGS["data_dir"], "small")
        node.create("victim", self.small.spec(pb2))
        node.upload("victim", self.small.points[:4000], 2, 500)
        node.upload("victim", self.small.points[4000:], 2, 500)
        self.assertEqual(node.build("victim").state, READY)
        self.other_points = random_points(41, 3000, 3)
        node.create("other", euclidean_spec(3))
        node.upload("other", self.other_points, 3, 1000)
        self.assertEqual(node.build("other").state, READY)
        node.create("idle", euclidean_spec(3))
        node.upload("idle", self.other_points[:900], 3, 100)
        self.queries = list(range(0, 3000, 101))
        self.other_answers = node.answers("other", self.queries, list(self.other_points[:30]))
        self.assertEqual(node.terminate(), 0)
        shutil.copytree(node.index_dir("victim"), self.pristine)
        self.node = node

    def test_damaged_files(self):
        victim = self.node.index_dir("victim")
        other = self.node.index_dir("other")
        sizes = {name: os.path.getsize(os.path.join(victim, name)) for name in os.listdir(victim)}
        checksum = "payload checksum mismatch"
        middle, last = "middle", "last"
        # (position, what the reason must say) of each byte flipped. An upload's payload is the
        # owner id (14 bytes), sequence, count and factor columns, then the coordinates' length
        # at payload offset 38 and the coordinates; it ends with the (empty) variances' length.
        flips = {
            "spec.rcknn": [(0, "bad magic"), (20, "header checksum mismatch"),
                           (44, "reserved header bytes are not zero"),
                           (self.HEADER + 9, checksum), (self.HEADER + 40, checksum),
                           (middle, checksum), (last, checksum)],
            "upload-000001.rcknn": [(0, "bad magic"), (12, "header checksum mismatch"),
                                    (self.HEADER + 40, checksum), (self.HEADER + 60, checksum),
                                    (middle, checksum), (last, checksum)],
            "upload-000002.rcknn": [(3, "bad magic"), (30, "header checksum mismatch"),
                                    (self.HEADER + 100, checksum), (last, checksum)],
            "tree.rcknn": [(0, "bad magic"), (20, "header checksum mismatch"),
                           (self.HEADER + 40, checksum), (middle, checksum), (last, checksum)],
        }
        cases = []
        for name, positions in flips.items():
            size = sizes[name]
            for position, problem in positions:
                offset = {middle: size // 2, last: size - 1}.get(position, position)
                cases.append((name, f"byte {offset} of {name} flipped",
                              lambda p, o=offset: flip(p, o), problem))
            cases.append((name, f"{name} cut short by one byte",
                          lambda p, s=size: truncate(p, s - 1), "truncated"))
        cases += [
            ("spec.rcknn", "spec.rcknn cut to 10 bytes", lambda p: truncate(p, 10), "truncated"),
            ("upload-000002.rcknn", "upload-000002.rcknn empty", lambda p: truncate(p, 0),
             "truncated"),
            ("tree.rcknn", "tree.rcknn cut in half",
             lambda p: truncate(p, sizes["tree.rcknn"] // 2), "truncated"),
            ("upload-000001.rcknn", "upload-000001.rcknn garbage", replace_with_garbage,
             "bad magic"),
            ("tree.rcknn", "tree.rcknn garbage", replace_with_garbage, "bad magic"),
            ("tree.rcknn", "tree.rcknn of index other",
             lambda p: shutil.copyfile(os.path.join(other, "tree.rcknn"), p),
             'belongs to index "other"'),
            ("upload-000001.rcknn", "upload-000001.rcknn of index other",
             lambda p: shutil.copyfile(os.path.join(other, "upload-000001.rcknn"), p),
             'belongs to index "other"'),
            ("spec.rcknn", "spec.rcknn of index other",
             lambda p: shutil.copyfile(os.path.join(other, "spec.rcknn"), p),
             'belongs to index "other"'),
            ("upload-000001.rcknn", "upload-000001.rcknn missing", os.remove, "missing"),
            ("upload-000001.rcknn", "upload-000002.rcknn renamed upload-000001.rcknn",
             lambda p: os.replace(os.path.join(victim, "upload-000002.rcknn"), p),
             "holds upload 2, not 1"),
        ]
        for name, what, damage, problem in cases:
            with self.subTest(what):
                shutil.rmtree(victim)
                shutil.copytree(self.pristine, victim)
                damage(os.path.join(victim, name))
                files = file_hashes(os.path.join(self.data_dir, "indexes"))
                self.node.start()
                try:
                    infos = self.node.infos()
                    self.assertEqual(sorted(infos), ["idle", "other", "victim"])
                    self.assertEqual(infos["victim"].state, FAILED, what)
                    self.assertIn(os.path.join(victim, name), infos["victim"].error)
                    problems = problem if isinstance(problem, tuple) else (problem,)
                    self.assertTrue(any(p in infos["victim"].error for p in problems),
                                    (problems, infos["victim"].error))
                    self.assertEqual((infos["other"].state, infos["other"].num_points),
                                     (READY, 3000))
                    self.assertEqual((infos["idle"].state, infos["idle"].num_points),
                                     (LOADING, 300))
                    self.assertEqual(
                        self.node.answers("other", self.queries, list(self.other_points[:30])),
                        self.other_answers)
                    with self.assertRaises(grpc.RpcError) as error:
                        self.node.search("victim", k=K, query_ids=[1])
                    self.assertEqual(error.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
                    self.assertEqual(self.node.terminate(), 0, self.node.server.log())
                    self.assertEqual(file_hashes(os.path.join(self.data_dir, "indexes")), files)
                finally:
                    self.node.stop()

        # The undamaged copy is READY again; DeleteIndex removes a FAILED index's directory.
        shutil.rmtree(victim)
        shutil.copytree(self.pristine, victim)
        self.node.start()
        self.assertEqual(self.node.infos()["victim"].state, READY)
        self.assertEqual(self.node.terminate(), 0)
        flip(os.path.join(victim, "tree.rcknn"), -1)
        self.node.start()
        self.assertEqual(self.node.infos()["victim"].state, FAILED)
        self.node.stub.DeleteIndex(pb2.DeleteIndexRequest(index_id="victim"))
        self.assertFalse(os.path.exists(victim))
        self.assertEqual(os.listdir(os.path.join(self.data_dir, "trash")), [])
        with self.assertRaises(grpc.RpcError) as error:
            self.node.stub.GetIndex(pb2.GetIndexRequest(index_id="victim"))
        self.assertEqual(error.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(sorted(self.node.infos()), ["idle", "other"])
        self.assertEqual(self.node.terminate(), 0)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
