// Helpers for in-process server tests: a real RcknnServer on 127.0.0.1 port 0 and a real stub.
#ifndef RCKNN_TESTS_SERVER_SERVER_TEST_UTIL_H_
#define RCKNN_TESTS_SERVER_SERVER_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/metric_space.h"
#include "grpcpp/grpcpp.h"
#include "rcknn/v1/rcknn.grpc.pb.h"
#include "server/rcknn_server.h"
#include "server/server_options.h"
#include "tests/testing/shared_data.h"

namespace rcknn::testing {

struct TestServer {
  std::unique_ptr<server::RcknnServer> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Rcknn::Stub> stub;
};

// Starts a server on 127.0.0.1:0 without a metrics endpoint, with `options` (threads defaults
// to 2 here), and connects.
// Aborts the test program if the server cannot start.
TestServer StartTestServer(server::ServerOptions options = {});

// The spec of a shipped data set, with its inducing points given explicitly so that the answers
// equal the shipped ones.
v1::IndexSpec SpecOf(const Dataset& set);

// A residual-correlation spec with `m` inducing points drawn with `seed`.
v1::IndexSpec ResidualSpec(int dimension, v1::KernelType type, double variance, double lengthscale,
                           int64_t m, uint64_t seed = 1);

grpc::Status CreateIndex(v1::Rcknn::Stub& stub, const std::string& id, const v1::IndexSpec& spec);

// Uploads `points` in chunks of `chunk_points` rows on one stream.
grpc::Status UploadPoints(v1::Rcknn::Stub& stub, const std::string& id,
                          const core::RowMatrix& points, int64_t chunk_points,
                          v1::UploadPointsResponse* response = nullptr);

// BuildIndex, then WatchIndex until READY or FAILED; returns the last IndexInfo.
v1::IndexInfo BuildAndWait(v1::Rcknn::Stub& stub, const std::string& id);

// Create + upload + build + wait; the final state must be READY (checked by the caller).
v1::IndexInfo CreateReadyIndex(v1::Rcknn::Stub& stub, const std::string& id,
                               const v1::IndexSpec& spec, const core::RowMatrix& points,
                               int64_t chunk_points = 1000);

v1::SearchRequest IdSearch(const std::string& id, int64_t k, const std::vector<int64_t>& ids,
                           bool predecessor_mode = false);

// "" if two answers of num_queries x k agree: distances within `tol` rank by rank (padding
// equal), and ids equal except where two candidates tie within `tol`. Else the first difference.
// (Distances of one pair may differ in the last bits between two evaluations, DESIGN.md
// section 3, so answers are compared this way rather than bit by bit.)
std::string CompareAnswers(const int64_t* ids_a, const double* dists_a, const int64_t* ids_b,
                           const double* dists_b, int64_t num_queries, int64_t k,
                           double tol = 1e-9);

}  // namespace rcknn::testing

#endif  // RCKNN_TESTS_SERVER_SERVER_TEST_UTIL_H_
