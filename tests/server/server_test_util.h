// Helpers for in-process server tests: a real RcknnServer on 127.0.0.1 port 0 and a real stub.
#ifndef RCKNN_TESTS_SERVER_SERVER_TEST_UTIL_H_
#define RCKNN_TESTS_SERVER_SERVER_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/rcknn_client.h"
#include "core/metric_space.h"
#include "gmock/gmock.h"
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

// Every call made by the helpers below, and by the clients of MakeClient, waits at most this
// long: a hang fails the test instead of blocking it.
inline constexpr absl::Duration kCallTimeout = absl::Seconds(60);

// A client library instance on the test server's address, with kCallTimeout on every call
// (unless `options.timeout` is set shorter) and no message size limit of its own beyond the
// server's default.
std::unique_ptr<client::RcknnClient> MakeClient(const TestServer& server,
                                                client::ClientOptions options = {});

// A test server and a client library instance on it that a test can stop and start again over
// the same options (a data directory's lock is released before the next server takes it).
// The client is MakeClient's with `client_options`.
class ClientOnServer {
 public:
  void Start(server::ServerOptions options, client::ClientOptions client_options = {});
  // Shuts the server down without grace and drops the client; nothing runs afterwards.
  void Stop();
  void Restart();
  bool running() const { return test_.server != nullptr; }
  client::RcknnClient& client() { return *client_; }
  server::RcknnServer& server() { return *test_.server; }
  const TestServer& test() const { return test_; }

 private:
  server::ServerOptions options_;
  client::ClientOptions client_options_;
  TestServer test_;
  std::unique_ptr<client::RcknnClient> client_;
};

// Client options whose uploads go in chunks of `rows` rows of `values_per_row` numbers each (the
// coordinates, plus the factor row and the residual variance when supplied): the client library
// sizes a chunk at 9 bytes per number (ClientOptions::upload_chunk_bytes).
client::ClientOptions UploadInChunksOf(int64_t rows, int values_per_row);

// The status of a call, whatever form it comes in.
inline absl::Status StatusOf(const absl::Status& status) { return status; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& value) {
  return value.status();
}
inline absl::Status StatusOf(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// StatusIs(code, substring): matches an absl::Status, absl::StatusOr<T> or grpc::Status with
// that code whose message contains `substring`.
class StatusIsMatcher {
 public:
  StatusIsMatcher(absl::StatusCode code, std::string substring)
      : code_(code), substring_(std::move(substring)) {}

  template <typename T>
  bool MatchAndExplain(const T& value, ::testing::MatchResultListener* listener) const {
    const absl::Status status = StatusOf(value);
    *listener << "whose status is " << status;
    return status.code() == code_ && absl::StrContains(status.message(), substring_);
  }
  void DescribeTo(std::ostream* os) const {
    *os << "has code " << absl::StatusCodeToString(code_) << " and a message containing \""
        << substring_ << "\"";
  }
  void DescribeNegationTo(std::ostream* os) const {
    *os << "does not have code " << absl::StatusCodeToString(code_) << " or a message containing \""
        << substring_ << "\"";
  }

 private:
  absl::StatusCode code_;
  std::string substring_;
};

inline ::testing::PolymorphicMatcher<StatusIsMatcher> StatusIs(absl::StatusCode code,
                                                               std::string substring = "") {
  return ::testing::MakePolymorphicMatcher(StatusIsMatcher(code, std::move(substring)));
}
inline ::testing::PolymorphicMatcher<StatusIsMatcher> StatusIs(grpc::StatusCode code,
                                                               std::string substring = "") {
  return StatusIs(static_cast<absl::StatusCode>(code), std::move(substring));
}

// The spec of a shipped data set, with its inducing points given explicitly so that the answers
// equal the shipped ones.
v1::IndexSpec SpecOf(const Dataset& set);

// A residual-correlation spec with `m` inducing points drawn with `seed`.
v1::IndexSpec ResidualSpec(int dimension, v1::KernelType type, double variance, double lengthscale,
                           int64_t m, uint64_t seed = 1);

// Sets the deadline of `context` to kCallTimeout from now.
void SetDeadline(grpc::ClientContext& context);

// Raw-stub helpers, each call with kCallTimeout, for what does not go through the client library
// (the gRPC overhead benchmark, requests the library never builds).
grpc::Status CreateIndex(v1::Rcknn::Stub& stub, const std::string& id, const v1::IndexSpec& spec);

// Uploads all of `points` in chunks of `chunk_points` rows on one stream, naming the index on the
// first chunk only.
grpc::Status UploadPoints(v1::Rcknn::Stub& stub, const std::string& id,
                          const core::RowMatrix& points, int64_t chunk_points);

// BuildIndex alone: returns when the build has started (or was refused), not when it ends.
grpc::Status BuildIndex(v1::Rcknn::Stub& stub, const std::string& id);

// WatchIndex until the stream ends (the index is READY or FAILED): the last IndexInfo, with
// "WatchIndex: <message>" in error() if the stream ended with an error.
v1::IndexInfo AwaitBuilt(v1::Rcknn::Stub& stub, const std::string& id);

// BuildIndex, then AwaitBuilt; returns the last IndexInfo, or one whose error() names the
// failed BuildIndex call.
v1::IndexInfo BuildAndWait(v1::Rcknn::Stub& stub, const std::string& id);

grpc::Status Search(v1::Rcknn::Stub& stub, const v1::SearchRequest& request,
                    v1::SearchResponse* response);

// Create + upload + build + wait; the final state must be READY (checked by the caller).
v1::IndexInfo CreateReadyIndex(v1::Rcknn::Stub& stub, const std::string& id,
                               const v1::IndexSpec& spec, const core::RowMatrix& points,
                               int64_t chunk_points = 1000);

v1::SearchRequest IdSearch(const std::string& id, int64_t k, const std::vector<int64_t>& ids,
                           bool predecessor_mode = false);

// ids begin, begin + 1, ..., end - 1.
std::vector<int64_t> Range(int64_t begin, int64_t end);

// Waits, without a fixed sleep, until `condition()` holds; false if `timeout` passes first.
template <typename Condition>
bool WaitFor(Condition condition, absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time end = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > end) return false;
    std::this_thread::yield();
  }
  return true;
}

// A sparse-regime index (inducing points far apart relative to the data) whose searches scan
// most points: a batch of every one of its kHeavyPoints ids takes seconds on two threads.
inline constexpr int64_t kHeavyPoints = 16384;
inline constexpr int64_t kHeavyK = 30;
v1::IndexSpec HeavySpec();

// Creates, uploads (the first `points` of one fixed N(0, 1) draw) and builds the heavy index
// `id` through the client library; the final IndexInfo (READY, checked by the caller).
v1::IndexInfo CreateHeavyIndex(const TestServer& server, const std::string& id,
                               int64_t points = kHeavyPoints);

// All rows of `points` (or rows [first, first + rows)) as the client library takes them.
client::PointsView View(const core::RowMatrix& points);
client::PointsView View(const core::RowMatrix& points, int64_t first, int64_t rows);

// Through the client library: BuildIndex, then WaitForIndex; the final IndexInfo (READY or
// FAILED), or the first call's error.
absl::StatusOr<v1::IndexInfo> BuildAndWait(client::RcknnClient& client, const std::string& id);

// Through the client library: CreateIndex, UploadPoints (all of `points`), BuildIndex and
// WaitForIndex; the final IndexInfo (READY or FAILED, checked by the caller), or the first call's
// error.
absl::StatusOr<v1::IndexInfo> CreateReadyIndex(client::RcknnClient& client, const std::string& id,
                                               const v1::IndexSpec& spec,
                                               const core::RowMatrix& points);

// The IndexInfo of `id` through the client library; a failed call fails the test and gives an
// empty IndexInfo.
v1::IndexInfo InfoOf(client::RcknnClient& client, const std::string& id);

// The ids ListIndexes reports, in its order (by id); empty if the call failed (a test failure).
std::vector<std::string> ListIds(client::RcknnClient& client);

// A search of `ids` of `index_id` for the client library (`ids` must outlive it).
client::SearchQuery IdQuery(const std::string& index_id, const std::vector<int64_t>& ids,
                            int64_t k);

}  // namespace rcknn::testing

#endif  // RCKNN_TESTS_SERVER_SERVER_TEST_UTIL_H_
