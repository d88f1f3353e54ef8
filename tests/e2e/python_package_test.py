#!/usr/bin/python3
"""The rcknn Python package (client/python) against the real rcknn-server binary: installed with
pip into a fresh virtual environment (Debian's grpcio, protobuf, numpy through
--system-site-packages), then the one-call job, the index API on the shipped data sets compared
with the exact answers, every exception type from a real bad request, chunking under a tiny
message limit, TLS / mutual TLS / bearer tokens, the raw answer layout and the interop layouts.

  python_package_test.py --server=BIN --source_dir=DIR --proto_dir=DIR --data_dir=DIR
                         --work_dir=DIR

Run by /usr/bin/python3, it makes the environment in WORK_DIR/venv, installs the package and runs
itself again with the environment's python (--in_venv) for the tests proper.
"""
import atexit
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rcknn_e2e  # pylint: disable=wrong-import-position

ARGS = rcknn_e2e.parse_args(sys.argv)


def install_and_rerun():
    """Fresh venv, pip install of client/python without build isolation (no PyPI), then this
    script again inside it."""
    work = os.path.abspath(ARGS["work_dir"])
    venv = os.path.join(work, "venv")
    subprocess.run(["rm", "-rf", venv], check=True)
    os.makedirs(work, exist_ok=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv], check=True)
    package = os.path.join(ARGS["source_dir"], "client", "python")
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--no-build-isolation",
                    "--no-index", "--quiet", package], check=True)
    python = os.path.join(venv, "bin", "python")
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:], "--in_venv"])


if "in_venv" not in ARGS:
    install_and_rerun()

# pylint: disable=wrong-import-position,wrong-import-order
import grpc
import numpy as np
import rcknn
from rcknn.v1 import rcknn_pb2 as pb2

WORK = os.path.abspath(ARGS["work_dir"])
SERVERS = []


def start_server(name, *flags):
    """An rcknn-server on a free port, stopped at the end whatever happens (tearDownModule, and
    atexit should the module never get there)."""
    server = rcknn_e2e.Server(ARGS["server"], os.path.join(WORK, name + ".log"),
                              "--metrics_listen=", *flags)
    SERVERS.append(server)
    return server


@atexit.register
def stop_servers():
    while SERVERS:
        SERVERS.pop().kill()


def tearDownModule():  # pylint: disable=invalid-name
    stop_servers()


# ctest's timeout sends SIGTERM: exit through atexit, which stops the servers.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


class Data:
    """A shipped data set as numpy arrays (see tests/data/*.manifest.json)."""

    def __init__(self, name):
        self.set = rcknn_e2e.Dataset(ARGS["data_dir"], name)
        s = self.set
        self.n, self.d, self.k = s.n, s.dimension, s.k
        self.points = np.array(s.points, dtype=np.float64).reshape(s.n, s.dimension)
        self.inducing = self.points[np.array(s.inducing_ids, dtype=np.int64)]
        self.query_ids = np.array(s.query_ids, dtype=np.int64)
        shape = (len(self.query_ids), s.k)
        self.knn_ids = np.array(s.knn_ids, dtype=np.int64).reshape(shape)
        self.knn_dists = np.array(s.knn_dists, dtype=np.float64).reshape(shape)
        self.pred_ids = np.array(s.pred_ids, dtype=np.int64).reshape(shape)
        self.pred_dists = np.array(s.pred_dists, dtype=np.float64).reshape(shape)
        kernels = {"rbf": rcknn.RBF, "matern12": rcknn.Matern12, "matern32": rcknn.Matern32,
                   "matern52": rcknn.Matern52}
        self.kernel = kernels[s.kernel](s.variance, s.lengthscale)


SMALL = Data("small")
DENSE = Data("dense")


def assert_answers(test, ids, dists, ref_ids, ref_dists):
    """docs/design.md section 3 with tol 1e-6 (tests/e2e/rcknn_e2e.compare_answers)."""
    test.assertEqual(ids.shape, ref_ids.shape)
    test.assertEqual(ids.dtype, np.int64)
    test.assertEqual(dists.dtype, np.float64)
    k = ref_ids.shape[1]
    problem = rcknn_e2e.compare_answers(ids.reshape(-1), dists.reshape(-1), ref_ids.reshape(-1),
                                        ref_dists.reshape(-1), k)
    test.assertEqual(problem, "")


def matern32(r):
    s = np.sqrt(3.0) * r
    return (1.0 + s) * np.exp(-s)


def small_factors():
    """V and p of the small set computed here (docs/design.md section 2), for the supplied-factor
    path: L = chol(K(U,U) + jitter s2 I), V = (L^-1 K(U, X))^T, p = max(s2 - |V_i|^2, 1e-9)."""
    s2, scale = SMALL.set.variance, SMALL.set.lengthscale

    def k(a, b):
        r = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)) / scale
        return s2 * matern32(r)

    u = SMALL.inducing
    chol = np.linalg.cholesky(k(u, u) + 1e-6 * s2 * np.eye(len(u)))
    v = np.linalg.solve(chol, k(u, SMALL.points)).T
    p = np.maximum(s2 - (v * v).sum(1), 1e-9)
    return v, p


class IndexApiTest(unittest.TestCase):
    """The index API and the one-call job on the shipped sets, compared with the exact answers."""

    @classmethod
    def setUpClass(cls):
        cls.server = start_server("api")
        cls.client = rcknn.connect(cls.server.address, timeout=120)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def index(self, name, data, points=None, **kwargs):
        """An index of `data`'s points (or `points`) with its shipped inducing points unless
        told otherwise, built; deleted when the test ends."""
        options = dict(kernel=data.kernel, inducing=data.inducing)
        options.update(kwargs)
        index = self.client.create_index(name, data.points if points is None else points,
                                         **options)
        self.addCleanup(index.delete)
        self.assertEqual(index.build().state, pb2.INDEX_STATE_READY)
        return index

    def test_vecchia_neighbors_one_call_and_the_index_is_gone(self):
        ids, dists = rcknn.vecchia_neighbors(SMALL.points, SMALL.k, kernel=SMALL.kernel,
                                             inducing=SMALL.inducing, server=self.server.address)
        self.assertEqual(ids.shape, (SMALL.n, SMALL.k))
        assert_answers(self, ids[SMALL.query_ids], dists[SMALL.query_ids], SMALL.pred_ids,
                       SMALL.pred_dists)
        self.assertTrue(np.all(ids[0] == -1) and np.all(np.isinf(dists[0])))
        self.assertEqual(self.client.list_indexes(), [])

    def test_vecchia_neighbors_deletes_the_index_when_it_fails(self):
        with self.assertRaises(rcknn.InvalidArgument):
            rcknn.vecchia_neighbors(SMALL.points, 0, kernel=SMALL.kernel, inducing=64,
                                    server=self.server.address)
        self.assertEqual(self.client.list_indexes(), [])

    def test_neighbors_and_predecessors_small_and_dense(self):
        for name, data in (("small", SMALL), ("dense", DENSE)):
            with self.subTest(name):
                index = self.index(name, data)
                ids, dists = index.neighbors(data.k, ids=data.query_ids)
                assert_answers(self, ids, dists, data.knn_ids, data.knn_dists)
                ids, dists = index.neighbors(data.k, ids=list(data.query_ids), predecessor=True)
                assert_answers(self, ids, dists, data.pred_ids, data.pred_dists)
                if data is not SMALL:
                    continue  # every point of dense: minutes on a loaded 2-core machine
                # Every point (ids=None): the rows of the query ids are the same answers.
                ids, dists = index.neighbors(data.k, predecessor=True)
                self.assertEqual(ids.shape, (data.n, data.k))
                assert_answers(self, ids[data.query_ids], dists[data.query_ids], data.pred_ids,
                               data.pred_dists)

    def test_reparameterize_reaches_the_shipped_answers_without_an_upload(self):
        # The small set's points under another kernel; re-parameterised to the shipped kernel
        # they must give the shipped exact answers.
        wrong = type(SMALL.kernel)(SMALL.set.variance * 2.0, SMALL.set.lengthscale * 1.7)
        source = self.client.create_index("reparam_source", SMALL.points, kernel=wrong,
                                          inducing=SMALL.inducing)

        def delete_source():
            with contextlib.suppress(rcknn.NotFound):
                source.delete()
        self.addCleanup(delete_source)
        source.build()
        for tree in ("auto", "refit", "rebuild"):
            with self.subTest(tree):
                index = source.reparameterize(kernel=SMALL.kernel, tree=tree,
                                              index_id=f"reparam_{tree}")
                self.addCleanup(index.delete)
                info = index.info()
                self.assertEqual(info.state, pb2.INDEX_STATE_READY)
                self.assertEqual(info.source_index_id, "reparam_source")
                self.assertEqual(info.num_points, SMALL.n)
                if tree != "auto":
                    self.assertEqual(info.tree_refitted, tree == "refit")
                ids, dists = index.neighbors(SMALL.k, ids=SMALL.query_ids)
                assert_answers(self, ids, dists, SMALL.knn_ids, SMALL.knn_dists)
                ids, dists = index.neighbors(SMALL.k, ids=SMALL.query_ids, predecessor=True)
                assert_answers(self, ids, dists, SMALL.pred_ids, SMALL.pred_dists)
        # A generated id; the new index outlives its source.
        index = source.reparameterize(kernel=SMALL.kernel)
        self.addCleanup(index.delete)
        self.assertTrue(index.id.startswith("reparam_source."), index.id)
        source.delete()
        ids, dists = index.neighbors(SMALL.k, ids=SMALL.query_ids)
        assert_answers(self, ids, dists, SMALL.knn_ids, SMALL.knn_dists)
        with self.assertRaises(rcknn.NotFound):
            source.reparameterize(kernel=SMALL.kernel)
        with self.assertRaises(rcknn.InvalidArgument):
            index.reparameterize(tree="sometimes")
        loading = self.client.create_index("reparam_loading", SMALL.points, kernel=SMALL.kernel,
                                           inducing=64)
        self.addCleanup(loading.delete)
        with self.assertRaises(rcknn.FailedPrecondition):
            loading.reparameterize(kernel=wrong)

    def test_orderings(self):
        index = self.index("ordered", SMALL)
        n = SMALL.n
        # The identity, supplied: predecessor answers under it are the plain (shipped) ones.
        identity = index.compute_ordering("identity", "supplied", permutation=np.arange(n))
        np.testing.assert_array_equal(identity, np.arange(n))
        ids, dists = index.neighbors(SMALL.k, ids=SMALL.query_ids, predecessor=True,
                                     ordering="identity")
        assert_answers(self, ids, dists, SMALL.pred_ids, SMALL.pred_dists)
        # Seeded random orderings: a permutation, the same for the same seed.
        first = index.compute_ordering("r1", "random", seed=3)
        again = index.compute_ordering("r1-again", "random", seed=3)
        np.testing.assert_array_equal(np.sort(first), np.arange(n))
        np.testing.assert_array_equal(first, again)
        self.assertFalse(np.array_equal(first, index.compute_ordering("r2", "random", seed=4)))
        maximin = index.compute_ordering("mm", "maximin_residual")
        np.testing.assert_array_equal(np.sort(maximin), np.arange(n))
        self.assertEqual(index.orderings, ["identity", "mm", "r1", "r1-again", "r2"])
        # Under an ordering: every neighbour comes earlier in it; ranks and ids agree.
        rank = np.empty(n, dtype=np.int64)
        rank[maximin] = np.arange(n)
        ids, dists = index.neighbors(SMALL.k, predecessor=True, ordering="mm")
        by_rank, rank_dists = index.neighbors(SMALL.k, predecessor=True, ordering="mm",
                                              ranks=True)
        valid = ids >= 0
        self.assertTrue(np.all(rank[ids[valid]] < np.broadcast_to(rank[:, None], ids.shape)[valid]))
        self.assertEqual(int(valid[maximin[0]].sum()), 0)  # rank 0 has no predecessor
        np.testing.assert_array_equal(np.where(by_rank >= 0, maximin[by_rank], -1), ids[maximin])
        np.testing.assert_array_equal(rank_dists, dists[maximin])
        with self.assertRaises(rcknn.InvalidArgument):
            index.compute_ordering("bad", "supplied", permutation=np.zeros(n, dtype=np.int64))
        with self.assertRaises(rcknn.AlreadyExists):
            index.compute_ordering("mm", "random")
        with self.assertRaises(rcknn.NotFound):
            index.neighbors(3, ids=[5], predecessor=True, ordering="missing")

    def test_kmeans_plus_plus_inducing_points(self):
        uniform = self.index("uniform", SMALL, inducing=64, inducing_seed=7)
        seeded = [self.index(f"kmeans{i}", SMALL, inducing=64, inducing_seed=7,
                             inducing_method="kmeans++", lloyd_iterations=lloyd)
                  for i, lloyd in enumerate((None, None, 2))]
        spec = seeded[0].info().spec
        self.assertEqual(spec.inducing_method, pb2.INDUCING_METHOD_KMEANS_PLUSPLUS)
        self.assertEqual(seeded[2].info().spec.lloyd_iterations, 2)
        answers = [index.neighbors(SMALL.k, ids=SMALL.query_ids) for index in
                   (uniform, *seeded)]
        # Reproducible with the seed; another choice of points than the uniform draw, and
        # Lloyd steps move them again.
        np.testing.assert_array_equal(answers[1][1], answers[2][1])
        self.assertFalse(np.array_equal(answers[0][1], answers[1][1]))
        self.assertFalse(np.array_equal(answers[1][1], answers[3][1]))
        with self.assertRaises(rcknn.InvalidArgument):
            self.client.create_index("bad", SMALL.points, kernel=SMALL.kernel,
                                     inducing_method="kmeans")

    def test_include_self_and_out_of_sample_search(self):
        index = self.index("small", SMALL)
        ids, dists = index.neighbors(SMALL.k, ids=SMALL.query_ids, include_self=True)
        self.assertTrue(np.all(ids[:, 0] == SMALL.query_ids) or
                        np.all(dists[:, 0] <= 1e-6))
        # A stored point's own coordinates, asked out-of-sample, find it at distance ~0.
        out_ids, out_dists = index.search(SMALL.points[SMALL.query_ids], SMALL.k)
        assert_answers(self, out_ids, out_dists, ids, dists)
        none_ids, none_dists = index.neighbors(4, ids=np.zeros(0, dtype=np.int32))
        self.assertEqual((none_ids.shape, none_dists.shape), ((0, 4), (0, 4)))
        self.assertEqual(index.state, "READY")
        self.assertEqual(self.client.index("small").num_points, SMALL.n)

    def test_any_float_dtype_and_layout(self):
        """float32, Fortran order and strided views upload the same values as a C-ordered
        float64 copy: the answers are the same bits."""
        base = SMALL.points.astype(np.float32)
        reference = self.index("reference", SMALL, points=base.astype(np.float64), inducing=64)
        want = reference.neighbors(10, ids=SMALL.query_ids)
        for name, points in (("float32", base), ("fortran", np.asfortranarray(base)),
                             ("strided", np.repeat(base, 2, axis=1)[:, ::2]),
                             ("float16", base.astype(np.float16))):
            with self.subTest(name):
                index = self.client.create_index(name, points, kernel=SMALL.kernel, inducing=64)
                self.addCleanup(index.delete)
                index.build()
                got = index.neighbors(10, ids=SMALL.query_ids)
                if name == "float16":  # other values: only the shape and dtypes agree
                    self.assertEqual((got[0].shape, got[0].dtype), (want[0].shape, np.int64))
                    continue
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])

    def test_supplied_factors(self):
        v, p = small_factors()
        index = self.client.create_index("factors", SMALL.points, kernel=SMALL.kernel,
                                         factors=v, residual_variances=p)
        self.addCleanup(index.delete)
        index.build()
        self.assertTrue(index.info().spec.factors_supplied)
        ids, dists = index.neighbors(SMALL.k, ids=SMALL.query_ids, predecessor=True)
        assert_answers(self, ids, dists, SMALL.pred_ids, SMALL.pred_dists)

    def test_every_kernel_ard_and_the_stored_spec(self):
        for cls, name in ((rcknn.RBF, "KERNEL_RBF"), (rcknn.Matern12, "KERNEL_MATERN12"),
                          (rcknn.Matern32, "KERNEL_MATERN32"), (rcknn.Matern52, "KERNEL_MATERN52")):
            with self.subTest(name):
                index = self.client.create_index(
                    name.lower().replace("_", "-"), SMALL.points[:500],
                    kernel=cls(2.0, [0.5, 0.25]), inducing=32, inducing_seed=5, jitter=1e-5)
                self.addCleanup(index.delete)
                spec = index.info().spec
                self.assertEqual(spec.kernel.type, pb2.KernelType.Value(name))
                self.assertEqual(spec.kernel.variance, 2.0)
                self.assertEqual(list(spec.kernel.lengthscales), [0.5, 0.25])
                self.assertEqual((spec.inducing_count, spec.inducing_seed, spec.jitter),
                                 (32, 5, 1e-5))
                index.build()
                ids, _ = index.neighbors(5, ids=[10, 20])
                self.assertEqual(ids.shape, (2, 5))

    def test_euclidean_metric_against_numpy(self):
        points = SMALL.points[:1000]
        index = self.client.create_index("euclid", points, kernel=None, metric="euclidean")
        self.addCleanup(index.delete)
        index.build()
        queries = np.array([3, 500, 999])
        ids, dists = index.neighbors(7, ids=queries)
        full = np.sqrt(((points[queries, None, :] - points[None, :, :]) ** 2).sum(-1))
        full[np.arange(3), queries] = np.inf  # self excluded
        order = np.lexsort((np.broadcast_to(np.arange(1000), full.shape), full), axis=1)[:, :7]
        assert_answers(self, ids, dists, order, np.take_along_axis(full, order, 1))

    def test_raw_layout_equals_the_repeated_fields(self):
        index = self.index("raw", SMALL)
        request = dict(index_id="raw", k=SMALL.k, query_ids=SMALL.query_ids.tolist(),
                       predecessor_mode=True)
        packed = self.client.stub.Search(pb2.SearchRequest(**request), timeout=60)
        raw = self.client.stub.Search(pb2.SearchRequest(**request, raw_answer=True), timeout=60)
        self.assertEqual(len(raw.neighbor_ids), 0)
        self.assertEqual(len(raw.distances), 0)
        self.assertEqual(len(packed.neighbor_ids_raw), 0)
        np.testing.assert_array_equal(np.frombuffer(raw.neighbor_ids_raw, "<i8"),
                                      np.array(packed.neighbor_ids, dtype=np.int64))
        np.testing.assert_array_equal(np.frombuffer(raw.distances_raw, "<f8"),
                                      np.array(packed.distances, dtype=np.float64))

    def test_progress_bars(self):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            index = self.client.create_index("progress", SMALL.points, kernel=SMALL.kernel,
                                             inducing=64, progress=True)
            self.addCleanup(index.delete)
            index.build(progress=True)
            index.neighbors(5, progress=True)
        for bar in ("upload", "build", "search"):
            self.assertIn(bar, stderr.getvalue())

    def test_interop_layouts_element_by_element(self):
        index = self.index("interop", SMALL)
        k = 8
        ids, dists = index.neighbors(k, predecessor=True)
        nn = rcknn.gpgp_nnarray(ids)
        self.assertEqual(nn.shape, (SMALL.n, k + 1))
        for i in range(SMALL.n):
            self.assertEqual(nn[i, 0], i + 1)
            # GpGp: row i (1-based) holds itself and min(i - 1, k) neighbours, then NA.
            self.assertEqual(int(np.count_nonzero(~np.isnan(nn[i]))), min(i, k) + 1)
            for j in range(k):
                if ids[i, j] < 0:
                    self.assertTrue(np.isnan(nn[i, j + 1]))
                else:
                    self.assertEqual(nn[i, j + 1], ids[i, j] + 1)
                    self.assertLess(nn[i, j + 1], i + 1)
        with self.assertRaises(rcknn.InvalidArgument):
            rcknn.gpgp_nnarray(index.neighbors(k)[0])  # not predecessors

        pattern = rcknn.sparse_pattern(ids, distances=dists, include_self=True)
        self.assertEqual(pattern.shape, (SMALL.n, SMALL.n))
        self.assertEqual(pattern.format, "csr")
        valid = ids >= 0
        self.assertEqual(pattern.nnz, int(valid.sum()) + SMALL.n)
        dense_rows = pattern[:50].toarray()
        for i in range(50):
            expected = {int(c): d for c, d in zip(ids[i][valid[i]], dists[i][valid[i]])}
            expected[i] = 0.0
            nonzero = set(np.flatnonzero(dense_rows[i])) | {i}
            self.assertEqual(nonzero, set(expected))
            for c, d in expected.items():
                self.assertEqual(dense_rows[i, c], d)
        ones = rcknn.sparse_pattern(ids[:10], num_points=SMALL.n)
        self.assertEqual(ones.shape, (10, SMALL.n))
        self.assertTrue(np.all(ones.data == 1.0))


class ErrorTest(unittest.TestCase):
    """Every exception type from a real bad request."""

    @classmethod
    def setUpClass(cls):
        cls.server = start_server("errors", "--max_points_per_index=5000", "--log_level=debug")
        cls.client = rcknn.connect(cls.server.address, timeout=60)
        cls.ready = cls.client.create_index("ready", SMALL.points, kernel=SMALL.kernel,
                                            inducing=64)
        cls.ready.build()

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def assert_raises(self, cls, code, call, *args, **kwargs):
        with self.assertRaises(cls) as raised:
            call(*args, **kwargs)
        self.assertIsInstance(raised.exception, rcknn.Error)
        self.assertEqual(raised.exception.code, code)
        self.assertTrue(raised.exception.message)
        return raised.exception

    def test_codes(self):
        code = grpc.StatusCode
        error = self.assert_raises(rcknn.InvalidArgument, code.INVALID_ARGUMENT,
                                   self.ready.neighbors, 0, ids=[1])
        self.assertTrue(error.message.startswith("k:"), error.message)
        self.assert_raises(rcknn.InvalidArgument, code.INVALID_ARGUMENT, self.ready.neighbors,
                           5, ids=[SMALL.n + 7])
        self.assert_raises(rcknn.NotFound, code.NOT_FOUND, self.client.index, "missing")
        self.assert_raises(rcknn.AlreadyExists, code.ALREADY_EXISTS, self.client.create_index,
                           "ready", SMALL.points, kernel=SMALL.kernel)
        loading = self.client.create_index("loading", SMALL.points[:100], kernel=SMALL.kernel,
                                           inducing=10)
        self.addCleanup(loading.delete)
        self.assert_raises(rcknn.FailedPrecondition, code.FAILED_PRECONDITION,
                           loading.neighbors, 5, ids=[1])
        error = self.assert_raises(rcknn.ResourceExhausted, code.RESOURCE_EXHAUSTED,
                                   self.client.create_index, "too-big",
                                   np.zeros((6000, 2)), kernel=SMALL.kernel)
        self.assertIn("--max_points_per_index", error.message)
        self.client.index("too-big").delete()
        with rcknn.connect(self.server.address, timeout=1e-6) as hurried:
            self.assert_raises(rcknn.DeadlineExceeded, code.DEADLINE_EXCEEDED,
                               rcknn.Index(hurried, "ready").neighbors, 30,
                               ids=np.arange(SMALL.n))

    def test_unavailable(self):
        with socket_closed_port() as address:
            with rcknn.connect(address, timeout=5) as nobody:
                self.assert_raises(rcknn.Unavailable, grpc.StatusCode.UNAVAILABLE,
                                   nobody.list_indexes)

    def test_local_checks_name_the_argument(self):
        for bad, text in ((np.zeros(5), "2-D"), (np.array([[1.0, np.nan]]), "not finite"),
                          (np.array([["a", "b"]]), "dtype")):
            with self.assertRaises(rcknn.InvalidArgument) as raised:
                self.client.create_index("bad", bad, kernel=SMALL.kernel)
            self.assertIn(text, str(raised.exception))
        with self.assertRaises(rcknn.InvalidArgument):
            self.ready.search(np.zeros((3, 5)), 3)  # wrong dimension: the server says so

    def test_ctrl_c_cancels_the_call(self):
        """SIGINT during a long search: KeyboardInterrupt in the caller, the server keeps
        serving (the RPC was cancelled, not left running to its end)."""
        big = self.client.create_index("slow", DENSE.points[:5000], kernel=DENSE.kernel,
                                       inducing=256)
        self.addCleanup(big.delete)
        big.build()
        script = (
            "import sys, rcknn\n"
            "index = rcknn.connect(sys.argv[1]).index('slow')\n"
            "print('started', flush=True)\n"
            "try:\n"
            "    for _ in range(1000):\n"
            "        index.neighbors(500, ids=list(range(5000)) * 4)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n")
        child = subprocess.Popen([sys.executable, "-c", script, self.server.address],
                                 stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(child.stdout.readline().strip(), "started")
            time.sleep(1.0)
            child.send_signal(signal.SIGINT)
            out, _ = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        self.assertIn("interrupted", out)
        # The server saw the call end CANCELLED (code 1), from the client.
        deadline = time.time() + 10
        while time.time() < deadline and not re.search(r"Search\S* -> 1 in", self.server.log()):
            time.sleep(0.05)
        self.assertRegex(self.server.log(), r"Search\S* -> 1 in")
        started = time.time()
        self.assertEqual(self.ready.neighbors(3, ids=[5])[0].shape, (1, 3))
        self.assertLess(time.time() - started, 10)


    def test_ctrl_c_during_vecchia_neighbors_deletes_the_temporary_index(self):
        server = start_server("ctrl-c")  # no point limit
        client = rcknn.connect(server.address, timeout=60)
        self.addCleanup(client.close)
        script = (
            "import sys, numpy as np, rcknn\n"
            "points = np.random.default_rng(3).normal(size=(40000, 2))\n"
            "try:\n"
            "    rcknn.vecchia_neighbors(points, 200, kernel=rcknn.RBF(1.0, 0.5), inducing=512,\n"
            "                            server=sys.argv[1])\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n")
        child = subprocess.Popen([sys.executable, "-c", script, server.address],
                                 stdout=subprocess.PIPE, text=True)
        try:
            # Interrupt once the temporary index exists on the server.
            deadline = time.time() + 60
            while time.time() < deadline and not any(
                    info.index_id.startswith("vecchia-tmp-")
                    for info in client.list_indexes()):
                time.sleep(0.02)
            self.assertTrue(any(info.index_id.startswith("vecchia-tmp-")
                                for info in client.list_indexes()))
            time.sleep(0.5)
            child.send_signal(signal.SIGINT)
            out, _ = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        self.assertIn("interrupted", out)
        self.assertEqual([info.index_id for info in client.list_indexes()
                          if info.index_id.startswith("vecchia-tmp-")], [])


@contextlib.contextmanager
def socket_closed_port():
    """An address where nothing listens."""
    import socket  # pylint: disable=import-outside-toplevel
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield f"127.0.0.1:{port}"


class ChunkingTest(unittest.TestCase):
    """A server with a 64 KiB message limit: uploads and searches split into many messages give
    the same bits as one big request on a server with the default limit."""

    @classmethod
    def setUpClass(cls):
        cls.big = start_server("big")
        cls.tiny = start_server("tiny", "--max_message_bytes=65536")

    def answers(self, address, **connect):
        with rcknn.connect(address, timeout=120, **connect) as client:
            index = client.create_index("chunks", SMALL.points, kernel=SMALL.kernel,
                                        inducing=SMALL.inducing)
            try:
                index.build()
                pred = index.neighbors(SMALL.k, predecessor=True)
                pred_requests = index.last_stats["requests"]
                out = index.search(SMALL.points[:1000] + 0.01, SMALL.k)
                return pred, out, pred_requests, client.max_message_bytes
            finally:
                index.delete()

    def test_tiny_limit_same_answers(self):
        pred, out, requests, _ = self.answers(self.big.address)
        self.assertEqual(requests, 1)
        for connect in ({"max_message_bytes": 65536}, {}):
            with self.subTest(connect=connect):
                # Told the limit, or learning it from the server's refusal.
                tiny_pred, tiny_out, tiny_requests, limit = self.answers(self.tiny.address,
                                                                         **connect)
                self.assertEqual(limit, 65536)
                self.assertGreater(tiny_requests, 10)
                for got, want in ((tiny_pred, pred), (tiny_out, out)):
                    np.testing.assert_array_equal(got[0], want[0])
                    # Bit for bit: the server evaluates every distance canonically, whatever the
                    # batch (docs/design.md), and the client's chunking moves no value.
                    np.testing.assert_array_equal(got[1].view(np.int64), want[1].view(np.int64))
        assert_answers(self, pred[0][SMALL.query_ids], pred[1][SMALL.query_ids], SMALL.pred_ids,
                       SMALL.pred_dists)


class Router:
    """rcknn-router on a port picked by the kernel over `shards` (addresses), its log in WORK."""

    def __init__(self, shards):
        self.log_path = os.path.join(WORK, "router.log")
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [ARGS["router"], "--listen=127.0.0.1:0", "--metrics_listen=",
             "--shards=" + ",".join(shards)], stdout=self.log_file, stderr=subprocess.STDOUT)
        SERVERS.append(self)
        self.address = None
        deadline = time.time() + 30
        while time.time() < deadline and self.process.poll() is None:
            with open(self.log_path) as f:
                match = re.search(r"listening on (\S+)", f.read())
            if match:
                self.address = match.group(1)
                return
            time.sleep(0.01)
        self.kill()
        with open(self.log_path) as f:
            raise RuntimeError("rcknn-router did not start:\n" + f.read())

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log_file.close()


@unittest.skipUnless(ARGS.get("router"), "no --router")
class RouterTest(unittest.TestCase):
    """The package through rcknn-router over 2 shards: create_index declares the size
    (CreateIndexRequest.expected_num_points), so the shards get equal id ranges, and the answers
    are the exact ones."""

    @classmethod
    def setUpClass(cls):
        cls.shards = [start_server("shard0"), start_server("shard1")]
        cls.router = Router([shard.address for shard in cls.shards])
        cls.client = rcknn.connect(cls.router.address, timeout=120)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def shard_index_names(self, shard):
        with rcknn.connect(self.shards[shard].address, timeout=30) as direct:
            return [info.index_id for info in direct.list_indexes()]

    def test_declared_size_balances_the_shards_and_answers_are_exact(self):
        index = self.client.create_index("routed", SMALL.points, kernel=SMALL.kernel,
                                         inducing=SMALL.inducing)
        self.addCleanup(index.delete)
        half = -(-SMALL.n // 2)
        self.assertIn(f"routed.rcknn-shard-1-of-2-range-{half}", self.shard_index_names(1))
        self.assertEqual(index.build().num_points, SMALL.n)
        ids, dists = index.neighbors(SMALL.k, ids=SMALL.query_ids, predecessor=True)
        assert_answers(self, ids, dists, SMALL.pred_ids, SMALL.pred_dists)

    def test_expected_points_given(self):
        index = self.client.create_index("declared", SMALL.points[:10], kernel=SMALL.kernel,
                                         inducing=4, expected_points=1000)
        self.addCleanup(index.delete)
        self.assertIn("declared.rcknn-shard-1-of-2-range-500", self.shard_index_names(1))
        with self.assertRaises(rcknn.InvalidArgument) as raised:
            self.client.create_index("negative", SMALL.points[:10], kernel=SMALL.kernel,
                                     inducing=4, expected_points=-1)
        self.assertIn("expected_points", str(raised.exception))


class SecurityTest(unittest.TestCase):
    """TLS, mutual TLS and bearer tokens (certificates made now by make_test_certs.sh)."""

    @classmethod
    def setUpClass(cls):
        cls.certs = rcknn_e2e.make_test_certs(ARGS["source_dir"], os.path.join(WORK, "certs"))
        tokens = os.path.join(WORK, "tokens")
        with open(tokens, "w") as f:
            f.write("admin-secret\nreadonly reader-secret\n")
        cls.mutual = start_server("mutual", f"--tls_cert={cls.cert('server.pem')}",
                                  f"--tls_key={cls.cert('server.key')}",
                                  f"--tls_client_ca={cls.cert('ca.pem')}",
                                  f"--auth_token_file={tokens}")
        cls.tls = start_server("tls", f"--tls_cert={cls.cert('server.pem')}",
                               f"--tls_key={cls.cert('server.key')}")

    @classmethod
    def cert(cls, name):
        return os.path.join(cls.certs, name)

    def connect(self, token=None, client_cert=True, ca="ca.pem"):
        return rcknn.connect(self.mutual.address, tls_ca=self.cert(ca),
                             tls_cert=self.cert("client.pem") if client_cert else None,
                             tls_key=self.cert("client.key") if client_cert else None,
                             token=token, timeout=30)

    def test_mutual_tls_and_tokens(self):
        ids, dists = rcknn.vecchia_neighbors(
            SMALL.points, SMALL.k, kernel=SMALL.kernel, inducing=SMALL.inducing,
            server=self.mutual.address, tls_ca=self.cert("ca.pem"),
            tls_cert=self.cert("client.pem"), tls_key=self.cert("client.key"),
            token="admin-secret", timeout=60)
        assert_answers(self, ids[SMALL.query_ids], dists[SMALL.query_ids], SMALL.pred_ids,
                       SMALL.pred_dists)
        with self.connect(token="admin-secret") as admin:
            index = admin.create_index("shared", SMALL.points[:500], kernel=SMALL.kernel,
                                       inducing=32)
            try:
                index.build()
                with self.connect(token="reader-secret") as reader:
                    shared = reader.index("shared")
                    self.assertEqual(shared.neighbors(3, ids=[4])[0].shape, (1, 3))
                    with self.assertRaises(rcknn.PermissionDenied) as raised:
                        reader.create_index("nope", SMALL.points[:10], kernel=SMALL.kernel)
                    self.assertEqual(raised.exception.code, grpc.StatusCode.PERMISSION_DENIED)
                    with self.assertRaises(rcknn.PermissionDenied):
                        shared.delete()
            finally:
                index.delete()
        for token in ("wrong-secret", None):
            with self.connect(token=token) as anonymous:
                with self.assertRaises(rcknn.Unauthenticated):
                    anonymous.list_indexes()
        with self.connect(token="admin-secret", client_cert=False) as no_cert:
            with self.assertRaises(rcknn.Unavailable):
                no_cert.list_indexes()
        with self.connect(token="admin-secret", ca="other_ca.pem") as wrong_ca:
            with self.assertRaises(rcknn.Unavailable):
                wrong_ca.list_indexes()

    def test_tls_with_pem_bytes(self):
        with open(self.cert("ca.pem"), "rb") as f:
            ca = f.read()
        with rcknn.connect(self.tls.address, tls_ca=ca, timeout=30) as client:
            self.assertEqual(client.list_indexes(), [])
        with self.assertRaises(ValueError):
            rcknn.connect(self.tls.address, token="x")  # a token needs TLS


if __name__ == "__main__":
    # --only=TestClass[.test_name] runs a subset.
    unittest.main(argv=[sys.argv[0], *([ARGS["only"]] if ARGS.get("only") else [])],
                  verbosity=2)
