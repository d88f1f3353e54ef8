"""Helpers for the end-to-end tests: Python stubs generated from the repository's proto at test
time, the real rcknn-server binary on a free port, and the shipped data sets.

Only Debian's python3-grpcio and python3-protobuf are used: no C++ code of this repository is in
the client.
"""
import array
import atexit
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

PROTOC = "/usr/bin/protoc"
GRPC_PYTHON_PLUGIN = "/usr/bin/grpc_python_plugin"


def generate_stubs(proto_dir, out_dir):
    """Compiles rcknn/v1/rcknn.proto into out_dir and returns (rcknn_pb2, rcknn_pb2_grpc)."""
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run(
        [PROTOC, f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
         f"--plugin=protoc-gen-grpc_python={GRPC_PYTHON_PLUGIN}", "rcknn/v1/rcknn.proto"],
        check=True)
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    from rcknn.v1 import rcknn_pb2, rcknn_pb2_grpc  # pylint: disable=import-outside-toplevel
    return rcknn_pb2, rcknn_pb2_grpc


# Every Server this process started, for main()'s check that none outlives the tests.
_STARTED = []


class Server:
    """rcknn-server on 127.0.0.1 with ports picked by the kernel (--listen=127.0.0.1:0, and
    --metrics_listen=127.0.0.1:0 unless a flag says otherwise; metrics_address is then
    "127.0.0.1:port", else None). Its log goes to a file (a pipe nobody reads could fill and
    block it).

    A test must stop every server it starts on every path, failures in set-up included: start
    it with start_server (which registers the cleanup), or use it as a context manager
    (`with Server(...) as server:`), or stop it in a finally block. main() fails the run if one
    is still running when the tests end."""

    def __init__(self, binary, log_path, *flags):
        self.log_path = log_path
        self.log_file = open(log_path, "w")
        # A fresh --data_dir next to the log unless the caller names one: indexes of one test
        # must not reappear in another.
        if not any(f.startswith("--data_dir") for f in flags):
            flags = (f"--data_dir={tempfile.mkdtemp(prefix='data.', dir=os.path.dirname(os.path.abspath(log_path)))}",
                     *flags)
        self.process = subprocess.Popen(
            [binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0", "--threads=2",
             *flags],
            stdout=self.log_file, stderr=subprocess.STDOUT)
        _STARTED.append(self)
        self.address = None
        self.metrics_address = None
        deadline = time.time() + 30
        while time.time() < deadline and self.process.poll() is None:
            match = re.search(r"listening on (\S+)", self.log())
            if match:
                self.address = match.group(1)
                metrics = re.search(r"metrics at http://(\S+)/metrics", self.log())
                self.metrics_address = metrics.group(1) if metrics else None
                break
            time.sleep(0.01)
        if self.address is None:
            self.kill()
            raise RuntimeError("rcknn-server did not start:\n" + self.log())

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def alive(self):
        return self.process.poll() is None

    def terminate(self, timeout=60):
        """SIGTERM, then waits; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.log_file.close()
        return code

    def kill(self):
        """SIGKILL if still running, then waits. Harmless on a stopped server."""
        if self.alive():
            self.process.kill()
            self.process.wait()
        self.log_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        return False


def start_server(owner, *args):
    """Server(*args), killed by a cleanup of `owner` on every path: `owner` is a TestCase (a
    per-test cleanup) or, from setUpClass, its class (a class cleanup, which runs even when
    setUpClass fails after this call). Stopping it earlier (terminate) is fine."""
    server = Server(*args)
    if isinstance(owner, type):
        owner.addClassCleanup(server.kill)
    else:
        owner.addCleanup(server.kill)
    return server


def _kill_leftovers():
    """Servers still running: killed; returns them."""
    leftovers = [server for server in _STARTED if server.alive()]
    for server in leftovers:
        server.kill()
    return leftovers


# Last resort when a script dies before main() (an exception at import, say).
atexit.register(_kill_leftovers)


def main():
    """unittest.main for an e2e script; the run fails if a server it started is still running
    after the tests (a missing cleanup), and such servers are killed."""
    program = unittest.main(argv=sys.argv[:1], verbosity=2, exit=False)
    leftovers = _kill_leftovers()
    for server in leftovers:
        print(f"rcknn_e2e: rcknn-server pid {server.process.pid} (log {server.log_path}) was "
              "still running after the tests: a test did not stop it", file=sys.stderr)
    sys.exit(0 if program.result.wasSuccessful() and not leftovers else 1)


def make_test_certs(source_dir, out_dir):
    """Throwaway CA, server (127.0.0.1, localhost), client and unrelated CA certificates made by
    tests/server/make_test_certs.sh with openssl into out_dir; returns out_dir."""
    subprocess.run(["/bin/sh", os.path.join(source_dir, "tests", "server", "make_test_certs.sh"),
                    out_dir], check=True)
    return out_dir


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class _CallDetails(
        collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a channel (as `rcknn --token`)."""

    def __init__(self, token):
        self.metadata = ("authorization", "Bearer " + token)

    def _details(self, details):
        return _CallDetails(details.method, details.timeout,
                            list(details.metadata or []) + [self.metadata], details.credentials,
                            getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def connect(address, tls_ca=None, tls_cert=None, tls_key=None, token=None, options=None):
    """A channel to rcknn-server with the options of the rcknn tool: tls_ca (PEM path) turns TLS
    on, tls_cert/tls_key (PEM paths) add the client certificate for mutual TLS, token is sent as
    `authorization: Bearer <token>` metadata on every call."""
    options = list(options or [])
    if tls_ca is None:
        if tls_cert is not None:
            raise ValueError("tls_cert needs tls_ca")
        channel = grpc.insecure_channel(address, options=options)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(tls_ca),
            private_key=_read(tls_key) if tls_key else None,
            certificate_chain=_read(tls_cert) if tls_cert else None)
        channel = grpc.secure_channel(address, credentials, options=options)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


def read_array(path, typecode):
    values = array.array(typecode)
    with open(path, "rb") as f:
        values.frombytes(f.read())
    if sys.byteorder != "little":
        values.byteswap()
    return values


class Dataset:
    """One shipped data set of tests/data (see its manifest)."""

    def __init__(self, data_dir, name):
        prefix = os.path.join(data_dir, name + ".")
        with open(prefix + "manifest.json") as f:
            self.manifest = json.load(f)
        m = self.manifest
        self.n, self.dimension, self.k = m["n"], m["dimension"], m["k"]
        self.kernel, self.variance, self.lengthscale = m["kernel"], m["variance"], m["lengthscale"]
        self.points = read_array(prefix + "points.f64", "d")
        self.inducing_ids = read_array(prefix + "inducing_ids.i64", "q")
        self.query_ids = read_array(prefix + "query_ids.i64", "q")
        self.knn_ids = read_array(prefix + "knn_ids.i64", "q")
        self.knn_dists = read_array(prefix + "knn_dists.f64", "d")
        self.pred_ids = read_array(prefix + "pred_ids.i64", "q")
        self.pred_dists = read_array(prefix + "pred_dists.f64", "d")

    def spec(self, pb2):
        """The spec reproducing the shipped answers: the shipped inducing points, explicitly."""
        d = self.dimension
        inducing = []
        for i in self.inducing_ids:
            inducing.extend(self.points[i * d:(i + 1) * d])
        return pb2.IndexSpec(
            metric=pb2.METRIC_RESIDUAL_CORRELATION, dimension=d,
            kernel=pb2.KernelSpec(type=pb2.KernelType.Value("KERNEL_" + self.kernel.upper()),
                                  variance=self.variance, lengthscales=[self.lengthscale]),
            inducing_points=inducing)


TOL = 1e-6  # docs/design.md section 3


def distances_agree(a, b, tol=TOL):
    """Two evaluations of one distance agree (docs/design.md section 3; the twin of
    testing::DistancesAgree): |a - b| <= tol or |a^2 - b^2| <= tol, the second form because
    d = sqrt(1 - |rho|) magnifies the rounding of rho near d = 0."""
    return a == b or abs(a - b) <= tol or abs(a * a - b * b) <= tol


def compare_answers(ids, dists, ref_ids, ref_dists, k, tol=TOL):
    """'' if a num_queries x k answer agrees with a reference by the rule of docs/design.md
    section 3, with what a client knows (the twin of testing::CompareAnswers): per row, the
    distances agree rank by rank (distances_agree), padding (-1, +inf) sits where the
    reference's does, no id repeats, and every returned id's distance is the reference's
    distance for it when the reference returned it too, and at most the reference's k-th
    distance otherwise (rule 2, with the reported distance standing for the true one). Else the
    first difference."""
    assert len(ids) == len(ref_ids) == len(dists) == len(ref_dists)
    inf = float("inf")
    for q in range(len(ids) // k):
        row = slice(q * k, (q + 1) * k)
        a_ids, a_d, b_ids, b_d = ids[row], dists[row], ref_ids[row], ref_dists[row]
        kth = -inf
        for j in range(k):
            if (a_ids[j] == -1) != (b_d[j] == inf):
                return f"query {q} rank {j}: id {a_ids[j]} ({a_d[j]}) vs reference {b_d[j]}"
            if a_ids[j] == -1:
                if a_d[j] != inf:
                    return f"query {q} rank {j}: padding id -1 with distance {a_d[j]}"
                continue
            if not distances_agree(a_d[j], b_d[j], tol):
                return f"query {q} rank {j}: distance {a_d[j]} vs reference {b_d[j]}"
            kth = b_d[j]
        reference = {i: d for i, d in zip(b_ids, b_d) if i != -1}
        seen = set()
        for j in range(k):
            if a_ids[j] == -1:
                continue
            if a_ids[j] in seen:
                return f"query {q}: id {a_ids[j]} repeats"
            seen.add(a_ids[j])
            if a_ids[j] in reference:
                if not distances_agree(a_d[j], reference[a_ids[j]], tol):
                    return (f"query {q} id {a_ids[j]}: distance {a_d[j]}, reference "
                            f"{reference[a_ids[j]]}")
            elif a_d[j] > kth and not distances_agree(a_d[j], kth, tol):
                return (f"query {q} rank {j}: id {a_ids[j]} at {a_d[j]} beyond the reference "
                        f"k-th {kth}")
    return ""


def upload_chunks(pb2, index_id, values, dimension, rows_per_chunk):
    """UploadPointsRequest chunks of rows_per_chunk points."""
    n = len(values) // dimension
    for first in range(0, n, rows_per_chunk):
        rows = min(rows_per_chunk, n - first)
        yield pb2.UploadPointsRequest(
            index_id=index_id if first == 0 else "",
            coordinates=values[first * dimension:(first + rows) * dimension])


def wait_ready(pb2, stub, index_id, timeout=120):
    """Follows WatchIndex to the end; returns the list of IndexInfo reports."""
    return list(stub.WatchIndex(pb2.GetIndexRequest(index_id=index_id), timeout=timeout))


def parse_args(argv):
    args = {}
    for arg in argv[1:]:
        key, _, value = arg.lstrip("-").partition("=")
        args[key] = value
    for key in ("server", "proto_dir", "data_dir", "work_dir"):
        if key not in args:
            raise SystemExit(f"usage: {argv[0]} --server=BIN --proto_dir=DIR --data_dir=DIR "
                             "--work_dir=DIR")
    return args
