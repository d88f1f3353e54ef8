#include "client/rcknn_client.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/base/config.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace rcknn::client {
namespace {

// Wire bytes of one answer entry at most: a double and a varint id (-1 padding takes 10).
constexpr int64_t kAnswerEntryBytes = 18;
// Wire bytes of one query id at most, and framing allowance per message.
constexpr int64_t kQueryIdBytes = 10;
constexpr int64_t kFramingBytes = 4096;

void AddStats(const v1::SearchStats& from, v1::SearchStats* to) {
  to->set_distance_evaluations(to->distance_evaluations() + from.distance_evaluations());
  to->set_heap_pushes(to->heap_pushes() + from.heap_pushes());
  to->set_nodes_visited(to->nodes_visited() + from.nodes_visited());
  to->set_subtrees_pruned(to->subtrees_pruned() + from.subtrees_pruned());
  to->set_subtrees_pruned_by_bound(to->subtrees_pruned_by_bound() +
                                   from.subtrees_pruned_by_bound());
  to->set_subtrees_pruned_by_predecessor(to->subtrees_pruned_by_predecessor() +
                                         from.subtrees_pruned_by_predecessor());
  to->set_brute_force_queries(to->brute_force_queries() + from.brute_force_queries());
  to->set_search_seconds(to->search_seconds() + from.search_seconds());
}

// Copies the answer of `response` (raw or packed layout) into rows [first, first + its
// num_queries) of `result`, whose arrays are already sized.
absl::Status CopyAnswer(const v1::SearchResponse& response, int64_t first, SearchResult* result) {
  const int64_t count = response.num_queries() * result->k;
  if (response.k() != result->k || first < 0 ||
      (first + response.num_queries()) * result->k > static_cast<int64_t>(result->ids.size())) {
    return absl::DataLossError(absl::StrCat("an answer of ", response.num_queries(), " x ",
                                            response.k(), " does not fit rows ", first, "..."));
  }
  int64_t* ids = result->ids.data() + first * result->k;
  double* distances = result->distances.data() + first * result->k;
  const auto raw_bytes = static_cast<size_t>(count) * 8;
  if (response.neighbor_ids_raw().size() == raw_bytes &&
      response.distances_raw().size() == raw_bytes && raw_bytes > 0) {
    std::memcpy(ids, response.neighbor_ids_raw().data(), raw_bytes);
    std::memcpy(distances, response.distances_raw().data(), raw_bytes);
#if defined(ABSL_IS_BIG_ENDIAN)
    for (char* bytes : {reinterpret_cast<char*>(ids), reinterpret_cast<char*>(distances)}) {
      for (int64_t i = 0; i < count; ++i) std::reverse(bytes + 8 * i, bytes + 8 * (i + 1));
    }
#endif
    return absl::OkStatus();
  }
  if (response.neighbor_ids_size() != count || response.distances_size() != count) {
    return absl::DataLossError(absl::StrCat("an answer of ", response.num_queries(), " x ",
                                            response.k(), " carries ", response.neighbor_ids_size(),
                                            " ids and ", response.neighbor_ids_raw().size(),
                                            " raw id bytes"));
  }
  std::copy(response.neighbor_ids().begin(), response.neighbor_ids().end(), ids);
  std::copy(response.distances().begin(), response.distances().end(), distances);
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> MakeChannel(const ClientOptions& options) {
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  arguments.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs;
    ssl.pem_cert_chain = options.tls_cert_chain;
    ssl.pem_private_key = options.tls_private_key;
    credentials = grpc::SslCredentials(ssl);
  }
  if (!options.token.empty()) {
    credentials =
        grpc::CompositeChannelCredentials(credentials, grpc::AccessTokenCredentials(options.token));
  }
  return grpc::CreateCustomChannel(options.target, credentials, arguments);
}

}  // namespace

void CallCanceller::Cancel() {
  absl::MutexLock lock(&mutex_);
  cancelled_ = true;
  for (grpc::ClientContext* context : contexts_) context->TryCancel();
}

bool CallCanceller::cancelled() const {
  absl::MutexLock lock(&mutex_);
  return cancelled_;
}

CallCanceller::Registration::Registration(CallCanceller* canceller, grpc::ClientContext* context)
    : context_(context) {
  if (canceller == nullptr) return;
  absl::MutexLock lock(&canceller->mutex_);
  if (canceller->cancelled_) {
    cancelled_ = true;
    return;
  }
  canceller->contexts_.push_back(context);
  canceller_ = canceller;
}

CallCanceller::Registration::~Registration() {
  if (canceller_ == nullptr) return;
  absl::MutexLock lock(&canceller_->mutex_);
  std::vector<grpc::ClientContext*>& contexts = canceller_->contexts_;
  contexts.erase(std::remove(contexts.begin(), contexts.end(), context_), contexts.end());
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

RcknnClient::RcknnClient(const ClientOptions& options)
    : RcknnClient(options, MakeChannel(options)) {}

RcknnClient::RcknnClient(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
    : options_(options), channel_(std::move(channel)), stub_(v1::Rcknn::NewStub(channel_)) {}

void RcknnClient::Prepare(grpc::ClientContext* context) const {
  if (options_.timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  }
}

absl::StatusOr<v1::IndexInfo> RcknnClient::CreateIndex(const std::string& index_id,
                                                       const v1::IndexSpec& spec,
                                                       int64_t expected_num_points) {
  v1::CreateIndexRequest request;
  request.set_index_id(index_id);
  *request.mutable_spec() = spec;
  request.set_expected_num_points(expected_num_points);
  return CreateIndex(request);
}

absl::StatusOr<v1::IndexInfo> RcknnClient::CreateIndex(const v1::CreateIndexRequest& request) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::IndexInfo info;
  if (grpc::Status status = stub_->CreateIndex(&context, request, &info); !status.ok()) {
    return FromGrpc(status);
  }
  return info;
}

absl::StatusOr<v1::UploadPointsResponse> RcknnClient::UploadPoints(
    const std::string& index_id, const PointsView& points, absl::Span<const double> factors,
    int64_t factor_columns, absl::Span<const double> residual_variances,
    const ProgressCallback& on_progress) {
  const int64_t n = points.rows();
  const int d = points.dimension;
  if (d < 1 || static_cast<int64_t>(points.values.size()) != n * d) {
    return absl::InvalidArgumentError(
        absl::StrCat("points: ", points.values.size(), " values are not rows of ", d));
  }
  const bool with_factors = !factors.empty() || !residual_variances.empty();
  if (with_factors &&
      (factor_columns < 1 || static_cast<int64_t>(factors.size()) != n * factor_columns ||
       static_cast<int64_t>(residual_variances.size()) != n)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "factors: expected ", n, " rows of ", factor_columns, " values and ", n,
        " residual variances, got ", factors.size(), " and ", residual_variances.size()));
  }
  const int64_t row_bytes = 9 * (d + (with_factors ? factor_columns + 1 : 0));
  const int64_t chunk_rows = std::max<int64_t>(
      1, std::min(options_.upload_chunk_bytes, options_.max_message_bytes - kFramingBytes) /
             row_bytes);
  grpc::ClientContext context;
  Prepare(&context);
  v1::UploadPointsResponse response;
  auto writer = stub_->UploadPoints(&context, &response);
  v1::UploadPointsRequest chunk;
  for (int64_t first = 0; first < n; first += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, n - first);
    chunk.Clear();
    if (first == 0) chunk.set_index_id(index_id);
    chunk.mutable_coordinates()->Add(points.values.data() + first * d,
                                     points.values.data() + (first + rows) * d);
    if (with_factors) {
      chunk.mutable_factors()->Add(factors.data() + first * factor_columns,
                                   factors.data() + (first + rows) * factor_columns);
      chunk.mutable_residual_variances()->Add(residual_variances.data() + first,
                                              residual_variances.data() + first + rows);
    }
    if (!writer->Write(chunk)) break;  // the server ended the stream: Finish says why
    if (on_progress) on_progress(first + rows, n);
  }
  if (n == 0) {
    chunk.set_index_id(index_id);
    writer->Write(chunk);
  }
  writer->WritesDone();
  if (grpc::Status status = writer->Finish(); !status.ok()) return FromGrpc(status);
  return response;
}

absl::StatusOr<v1::IndexInfo> RcknnClient::BuildIndex(const std::string& index_id,
                                                      absl::Span<const double> inducing_points) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::BuildIndexRequest request;
  request.set_index_id(index_id);
  request.mutable_inducing_points()->Add(inducing_points.begin(), inducing_points.end());
  v1::IndexInfo info;
  if (grpc::Status status = stub_->BuildIndex(&context, request, &info); !status.ok()) {
    return FromGrpc(status);
  }
  return info;
}

absl::StatusOr<std::vector<double>> RcknnClient::GetPoints(const std::string& index_id,
                                                           absl::Span<const int64_t> ids) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetPointsRequest request;
  request.set_index_id(index_id);
  request.mutable_ids()->Add(ids.begin(), ids.end());
  v1::GetPointsResponse response;
  if (grpc::Status status = stub_->GetPoints(&context, request, &response); !status.ok()) {
    return FromGrpc(status);
  }
  return std::vector<double>(response.coordinates().begin(), response.coordinates().end());
}

absl::StatusOr<v1::IndexInfo> RcknnClient::WaitForIndex(
    const std::string& index_id, const std::function<void(const v1::IndexInfo&)>& on_update) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetIndexRequest request;
  request.set_index_id(index_id);
  auto reader = stub_->WatchIndex(&context, request);
  v1::IndexInfo info;
  bool any = false;
  while (reader->Read(&info)) {
    any = true;
    if (on_update) on_update(info);
  }
  if (grpc::Status status = reader->Finish(); !status.ok()) return FromGrpc(status);
  if (!any) return absl::InternalError("WatchIndex ended without a report");
  return info;
}

absl::StatusOr<v1::IndexInfo> RcknnClient::GetIndex(const std::string& index_id) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetIndexRequest request;
  request.set_index_id(index_id);
  v1::IndexInfo info;
  if (grpc::Status status = stub_->GetIndex(&context, request, &info); !status.ok()) {
    return FromGrpc(status);
  }
  return info;
}

absl::StatusOr<v1::Ordering> RcknnClient::ComputeOrdering(
    const v1::ComputeOrderingRequest& request) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::Ordering ordering;
  if (grpc::Status status = stub_->ComputeOrdering(&context, request, &ordering); !status.ok()) {
    return FromGrpc(status);
  }
  return ordering;
}

absl::StatusOr<std::vector<v1::IndexInfo>> RcknnClient::ListIndexes() {
  grpc::ClientContext context;
  Prepare(&context);
  v1::ListIndexesResponse response;
  if (grpc::Status status = stub_->ListIndexes(&context, v1::ListIndexesRequest(), &response);
      !status.ok()) {
    return FromGrpc(status);
  }
  return std::vector<v1::IndexInfo>(response.indexes().begin(), response.indexes().end());
}

absl::Status RcknnClient::DeleteIndex(const std::string& index_id) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::DeleteIndexRequest request;
  request.set_index_id(index_id);
  v1::DeleteIndexResponse response;
  return FromGrpc(stub_->DeleteIndex(&context, request, &response));
}

int64_t RcknnClient::QueriesPerRequest(int64_t k, int dimension) const {
  const int64_t budget = options_.max_message_bytes - kFramingBytes;
  const int64_t query_bytes = dimension > 0 ? 8 * dimension : kQueryIdBytes;
  // Divided, not multiplied: k is the caller's int64 and k x entry bytes may overflow.
  const int64_t by_answer = budget / kAnswerEntryBytes / std::max<int64_t>(k, 1);
  const int64_t by_request = budget / query_bytes;
  return std::max<int64_t>(1, std::min({by_answer, by_request, options_.max_queries_per_request}));
}

absl::StatusOr<SearchResult> RcknnClient::Search(const SearchQuery& query,
                                                 const ProgressCallback& on_progress) {
  const bool by_id = !query.ids.empty();
  const int d = by_id ? 0 : query.points.dimension;
  const int64_t nq = by_id ? static_cast<int64_t>(query.ids.size()) : query.points.rows();
  if (!by_id && (d < 1 || static_cast<int64_t>(query.points.values.size()) != nq * d)) {
    return absl::InvalidArgumentError("query_points: give rows of `dimension` values");
  }
  const int64_t per_request = QueriesPerRequest(query.k, d);
  auto make_request = [&](int64_t first, int64_t count) {
    v1::SearchRequest request;
    request.set_index_id(query.index_id);
    request.set_k(query.k);
    request.set_predecessor_mode(query.predecessor_mode);
    request.set_include_self(query.include_self);
    request.set_ordering(query.ordering);
    request.set_ids_are_ranks(query.ids_are_ranks);
    request.set_raw_answer(options_.raw_answers);
    if (by_id) {
      request.mutable_query_ids()->Add(query.ids.data() + first, query.ids.data() + first + count);
    } else {
      request.mutable_query_points()->Add(query.points.values.data() + first * d,
                                          query.points.values.data() + (first + count) * d);
    }
    // Bounds go with their queries; a count that does not match them is the server's to refuse.
    if (!query.id_bounds.empty()) {
      const int64_t end = std::min<int64_t>(first + count, query.id_bounds.size());
      if (first < end) {
        request.mutable_query_id_bounds()->Add(query.id_bounds.data() + first,
                                               query.id_bounds.data() + end);
      }
    }
    return request;
  };

  SearchResult result;
  result.num_queries = nq;
  result.k = query.k;
  // The answer's arrays are sized once the server has accepted k (its first answer): nq x k may
  // overflow for a huge k, and such a search is refused by the server naming k.
  auto size_answer = [&]() -> absl::Status {
    int64_t entries = 0;
    if (__builtin_mul_overflow(nq, query.k, &entries)) {
      return absl::DataLossError("the server accepted a k whose answer cannot be held");
    }
    result.ids.resize(static_cast<size_t>(entries));
    result.distances.resize(static_cast<size_t>(entries));
    return absl::OkStatus();
  };
  auto cancelled = [] { return absl::CancelledError("cancelled by the caller"); };
  if (nq <= per_request) {
    grpc::ClientContext context;
    Prepare(&context);
    const CallCanceller::Registration registration(query.canceller, &context);
    if (registration.cancelled()) return cancelled();
    v1::SearchResponse response;
    if (grpc::Status status = stub_->Search(&context, make_request(0, nq), &response);
        !status.ok()) {
      return FromGrpc(status);
    }
    if (response.num_queries() != nq) {
      return absl::DataLossError(
          absl::StrCat("the server answered ", response.num_queries(), " of ", nq, " queries"));
    }
    if (absl::Status sized = size_answer(); !sized.ok()) return sized;
    if (absl::Status copied = CopyAnswer(response, 0, &result); !copied.ok()) return copied;
    result.stats = response.stats();
    result.requests = 1;
    if (on_progress) on_progress(nq, nq);
    return result;
  }

  grpc::ClientContext context;
  Prepare(&context);
  const CallCanceller::Registration registration(query.canceller, &context);
  if (registration.cancelled()) return cancelled();
  auto stream = stub_->SearchStream(&context);
  // Requests go out from a second thread while answers are read here, so neither side waits
  // on flow control for the other.
  std::thread writer([&] {
    for (int64_t first = 0; first < nq; first += per_request) {
      if (!stream->Write(make_request(first, std::min(per_request, nq - first)))) break;
    }
    stream->WritesDone();
  });
  v1::SearchResponse response;
  int64_t answered = 0;
  absl::Status copied;
  while (copied.ok() && stream->Read(&response)) {
    if (result.requests == 0) copied = size_answer();
    if (copied.ok()) copied = CopyAnswer(response, answered, &result);
    answered += response.num_queries();
    AddStats(response.stats(), &result.stats);
    ++result.requests;
    if (on_progress) on_progress(answered, nq);
  }
  if (!copied.ok()) context.TryCancel();
  writer.join();
  if (grpc::Status status = stream->Finish(); !status.ok() && copied.ok()) {
    return FromGrpc(status);
  }
  if (!copied.ok()) return copied;
  if (answered != nq) {
    return absl::DataLossError(absl::StrCat("the stream answered ", answered, " of ", nq, " queries"));
  }
  return result;
}

}  // namespace rcknn::client
