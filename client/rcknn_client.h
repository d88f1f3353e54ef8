// A C++ client of rcknn.v1.Rcknn over the generated stubs, with the chores done: uploads stream
// in chunks under the message size limit, builds can be followed to the end (WatchIndex), and a
// search of any number of queries is split into requests that fit one message each and sent on
// one SearchStream, the answers concatenated in order. Thread-safe (one channel, many calls).
#ifndef RCKNN_CLIENT_RCKNN_CLIENT_H_
#define RCKNN_CLIENT_RCKNN_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "grpcpp/channel.h"
#include "rcknn/v1/rcknn.grpc.pb.h"

namespace rcknn::client {

struct ClientOptions {
  std::string target = "127.0.0.1:50051";
  // The server's --max_message_bytes: requests and expected answers are kept under it.
  int64_t max_message_bytes = int64_t{64} << 20;
  // Upload chunks carry about this many bytes (well under the message limit, so that the
  // server can start on one while the next is on the wire).
  int64_t upload_chunk_bytes = int64_t{4} << 20;
  // At most this many queries per request (the server's --max_queries_per_search).
  int64_t max_queries_per_request = 1'000'000;
  // Ask for answers in the raw little-endian bytes layout (SearchRequest.raw_answer): decoding
  // is one memcpy per array instead of a varint parse. Answers in the repeated fields (a server
  // that predates the field) are read as well.
  bool raw_answers = true;
  // Deadline of each call; infinite by default.
  absl::Duration timeout = absl::InfiniteDuration();
  // TLS (docs/security.md): contents of PEM files, not paths. tls_root_certs empty:
  // the system's roots. tls_cert_chain and tls_private_key (both or neither): the client
  // certificate for mutual TLS.
  bool tls = false;
  std::string tls_root_certs;
  std::string tls_cert_chain;
  std::string tls_private_key;
  // Sent as `authorization: Bearer <token>` on every call; empty: none. Needs tls (gRPC sends
  // call credentials over secure channels only; without TLS every call fails).
  std::string token;
};

// Points (or queries) as a row-major n x dimension array.
struct PointsView {
  absl::Span<const double> values;
  int dimension = 0;
  int64_t rows() const {
    return dimension == 0 ? 0 : static_cast<int64_t>(values.size()) / dimension;
  }
};

// Cancels the calls it is given to (SearchQuery::canceller), from any thread: a call in flight
// ends CANCELLED as a TryCancel of its context would end it, and a call started after Cancel()
// ends CANCELLED without being sent. One canceller may serve several calls at once.
class CallCanceller {
 public:
  void Cancel();
  bool cancelled() const;

  // Keeps `context` registered with `canceller` (which may be null: nothing to do) while it
  // lives. cancelled() is true, and nothing registered, if Cancel() came first.
  class Registration {
   public:
    Registration(CallCanceller* canceller, grpc::ClientContext* context);
    ~Registration();
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    bool cancelled() const { return cancelled_; }

   private:
    CallCanceller* canceller_ = nullptr;  // null unless registered
    grpc::ClientContext* context_;
    bool cancelled_ = false;
  };

 private:
  mutable absl::Mutex mutex_;
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<grpc::ClientContext*> contexts_ ABSL_GUARDED_BY(mutex_);
};

struct SearchQuery {
  std::string index_id;
  int64_t k = 10;
  // Exactly one of the two.
  absl::Span<const int64_t> ids;
  PointsView points;
  bool predecessor_mode = false;
  bool include_self = false;
  // SearchRequest.ordering and ids_are_ranks (empty / false: upload order, ids).
  std::string ordering;
  bool ids_are_ranks = false;
  // SearchRequest.query_id_bounds (empty: none): one per query point, each query keeps only
  // neighbours with lower ids. With query points only.
  absl::Span<const int64_t> id_bounds;
  // Optional: cancels the search (every request of it) when its Cancel() is called.
  CallCanceller* canceller = nullptr;
};

// Progress of a long call: `done` of `total` rows (points uploaded, queries answered).
using ProgressCallback = std::function<void(int64_t done, int64_t total)>;

struct SearchResult {
  int64_t num_queries = 0;
  int64_t k = 0;
  std::vector<int64_t> ids;       // num_queries x k, row-major, padded with -1
  std::vector<double> distances;  // same shape, padded with +infinity
  v1::SearchStats stats;          // summed over the requests
  int64_t requests = 0;           // how many requests the search was split into
};

class RcknnClient {
 public:
  // Connects lazily: the first call reports UNAVAILABLE if nothing listens.
  explicit RcknnClient(const ClientOptions& options);
  RcknnClient(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel);

  const ClientOptions& options() const { return options_; }
  v1::Rcknn::Stub& stub() { return *stub_; }

  // `expected_num_points` (0: not declared): CreateIndexRequest.expected_num_points, which sizes
  // the shards' ranges behind rcknn-router.
  absl::StatusOr<v1::IndexInfo> CreateIndex(const std::string& index_id, const v1::IndexSpec& spec,
                                            int64_t expected_num_points = 0);
  // CreateIndex with the whole request (source_index_id: an index over another's points).
  absl::StatusOr<v1::IndexInfo> CreateIndex(const v1::CreateIndexRequest& request);
  // One UploadPoints stream of chunks. `factors` (n x factor_columns) and
  // `residual_variances` (n) only for specs with factors_supplied. `on_progress` (optional) is
  // called after each chunk is written, with the rows sent so far.
  absl::StatusOr<v1::UploadPointsResponse> UploadPoints(
      const std::string& index_id, const PointsView& points, absl::Span<const double> factors = {},
      int64_t factor_columns = 0, absl::Span<const double> residual_variances = {},
      const ProgressCallback& on_progress = nullptr);
  // Starts the build; returns at once (state BUILDING). `inducing_points` (row-major, empty:
  // the spec's draw): BuildIndexRequest.inducing_points.
  absl::StatusOr<v1::IndexInfo> BuildIndex(const std::string& index_id,
                                           absl::Span<const double> inducing_points = {});
  // GetPoints: the coordinates of stored points `ids`, row-major, dimension values each.
  absl::StatusOr<std::vector<double>> GetPoints(const std::string& index_id,
                                                absl::Span<const int64_t> ids);
  // Follows WatchIndex until READY or FAILED, calling `on_update` for each report. Returns the
  // final IndexInfo (FAILED is a value here, not an error).
  absl::StatusOr<v1::IndexInfo> WaitForIndex(
      const std::string& index_id,
      const std::function<void(const v1::IndexInfo&)>& on_update = nullptr);
  absl::StatusOr<v1::IndexInfo> GetIndex(const std::string& index_id);
  absl::StatusOr<std::vector<v1::IndexInfo>> ListIndexes();
  absl::Status DeleteIndex(const std::string& index_id);
  // ComputeOrdering; the answer carries the permutation (rank -> id).
  absl::StatusOr<v1::Ordering> ComputeOrdering(const v1::ComputeOrderingRequest& request);

  // Any number of queries. One request goes as a unary Search; more go on one SearchStream.
  // `on_progress` (optional) is called after each answer, with the queries answered so far.
  absl::StatusOr<SearchResult> Search(const SearchQuery& query,
                                      const ProgressCallback& on_progress = nullptr);

  // Queries per request for `k` neighbours and `dimension`-long query points (0: by id).
  int64_t QueriesPerRequest(int64_t k, int dimension) const;

 private:
  void Prepare(grpc::ClientContext* context) const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Rcknn::Stub> stub_;
};

// The gRPC status as an absl::Status (the codes share their numbering).
absl::Status FromGrpc(const grpc::Status& status);

}  // namespace rcknn::client

#endif  // RCKNN_CLIENT_RCKNN_CLIENT_H_
