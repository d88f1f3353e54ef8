// libFuzzer target: arbitrary bytes as each rcknn.v1 request message, through the validation and
// conversion the handlers of server/rcknn_service.cc run (server/proto_conversion.h) and the
// search plan of the index service (server/search_plan.h: validation against the index and
// overflow-checked answer sizes), and accepted searches through a small prebuilt
// core::KnnIndex.
//
// Every rejection must be an absl::Status: a crash, an escaping exception, an ASan or UBSan report
// or a broken invariant (checked with FuzzCheck, which aborts) is a finding. Input format:
// fuzz_requests.h.
#include "tests/fuzz/fuzz_requests.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/knn_index.h"
#include "core/knn_query.h"
#include "google/protobuf/stubs/logging.h"
#include "rcknn/v1/rcknn.pb.h"
#include "server/build_spec.h"
#include "server/index_registry.h"
#include "server/proto_conversion.h"
#include "server/search_plan.h"
#include "tbb/task_arena.h"

namespace rcknn::fuzz {
namespace {

// Searches larger than this are validated but not run, so each input stays fast.
constexpr int64_t kMaxSearchK = 64;
constexpr int64_t kMaxSearchQueries = 16;

void FuzzCheck(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "rcknn_fuzz_requests: invariant broken: %s\n", what);
    std::abort();
  }
}

// A rejection must be a status with a message; OK is never an error.
void CheckRejection(const absl::Status& status) {
  FuzzCheck(!status.ok(), "rejection is OK");
  FuzzCheck(!status.message().empty(), "rejection without a message");
  FuzzCheck(server::ToGrpcStatus(status).error_code() != grpc::StatusCode::OK,
            "rejection maps to grpc OK");
}

template <typename Message>
bool Parse(const uint8_t* data, size_t size, Message* message) {
  return message->ParseFromArray(data, static_cast<int>(size));
}

std::unique_ptr<core::KnnIndex> BuildIndex(core::Metric metric) {
  core::IndexSpec spec;
  spec.metric = metric;
  spec.dimension = kIndexDimension;
  spec.residual.kernel.type = core::KernelType::kMatern32;
  spec.residual.kernel.lengthscales = {0.7};
  spec.residual.inducing_count = 12;
  core::IndexData data;
  data.points.resize(kIndexPoints, kIndexDimension);
  // A fixed, irregular point set (a few duplicates, so ties are exercised).
  for (int i = 0; i < kIndexPoints; ++i) {
    const int j = i % 40;
    data.points(i, 0) = (j * 37 % 11) / 11.0;
    data.points(i, 1) = (j * 17 % 7) / 7.0;
    data.points(i, 2) = (j * 5 % 13) / 13.0 - 0.5;
  }
  absl::StatusOr<std::unique_ptr<core::KnnIndex>> index = core::KnnIndex::Build(spec, data);
  if (!index.ok()) {
    std::fprintf(stderr, "rcknn_fuzz_requests: building the index failed: %s\n",
                 index.status().ToString().c_str());
    std::abort();
  }
  return *std::move(index);
}

struct Fixture {
  tbb::task_arena arena{1};  // one worker: the fuzzer runs on one core
  std::unique_ptr<core::KnnIndex> residual = BuildIndex(core::Metric::kResidualCorrelation);
  std::unique_ptr<core::KnnIndex> euclidean = BuildIndex(core::Metric::kEuclidean);
};

// Invalid UTF-8 in string fields is a parse failure the fuzzer meets constantly; protobuf's log
// line about each would drown libFuzzer's output.
void IgnoreProtobufLog(google::protobuf::LogLevel level, const char* filename, int line,
                       const std::string& message) {}

Fixture& GetFixture() {
  static Fixture* fixture = new Fixture();
  return *fixture;
}

// CreateIndex: spec -> core spec; the normalized spec is accepted again; BuildIndex's checks.
// Returns the accepted core spec, with the normalized spec in `*normalized`.
absl::StatusOr<core::IndexSpec> FuzzSpec(const v1::IndexSpec& spec, int variant,
                                         v1::IndexSpec* normalized_out) {
  v1::IndexSpec& normalized = *normalized_out;
  absl::StatusOr<core::IndexSpec> core_spec = server::ToCoreSpec(spec, &normalized);
  if (!core_spec.ok()) {
    CheckRejection(core_spec.status());
    FuzzCheck(core_spec.status().code() == absl::StatusCode::kInvalidArgument,
              "ToCoreSpec rejection is not INVALID_ARGUMENT");
    return core_spec;
  }
  FuzzCheck(core_spec->dimension == spec.dimension(), "dimension changed");
  // What GetIndex reports must be a spec CreateIndex accepts.
  v1::IndexSpec again;
  absl::StatusOr<core::IndexSpec> reparsed = server::ToCoreSpec(normalized, &again);
  FuzzCheck(reparsed.ok(), "the normalized spec is rejected");
  // BuildIndex's checks against the number of uploaded points.
  const int64_t n_choices[] = {1, 2, 7, 512, 513, 100000};
  const int64_t n = n_choices[variant % 6];
  absl::StatusOr<core::IndexSpec> build =
      server::SpecForBuild(*core_spec, spec.has_inducing_count(), n);
  if (!build.ok()) {
    CheckRejection(build.status());
    return core_spec;
  }
  if (build->metric == core::Metric::kResidualCorrelation && !build->factors_supplied &&
      !build->residual.inducing_points.has_value()) {
    FuzzCheck(build->residual.inducing_count >= 1 && build->residual.inducing_count <= n,
              "SpecForBuild inducing_count outside [1, n]");
  }
  return core_spec;
}

// DoCreateIndex up to the registry, then the IndexInfo that CreateIndex and GetIndex answer.
void FuzzCreateIndex(const v1::CreateIndexRequest& request, int variant) {
  const absl::Status id_status = server::ValidateIndexId(request.index_id());
  if (!id_status.ok()) CheckRejection(id_status);
  v1::IndexSpec normalized;
  absl::StatusOr<core::IndexSpec> spec = FuzzSpec(request.spec(), variant, &normalized);
  if (!id_status.ok() || !request.has_spec() || !spec.ok()) return;
  server::IndexSpecRecord record;
  record.core = *std::move(spec);
  record.inducing_count_set = normalized.has_inducing_count();
  record.wire = normalized.SerializeAsString();
  server::IndexEntry entry(request.index_id(), std::move(record));
  v1::IndexInfo info;
  server::FillIndexInfo(entry, &info);
  FuzzCheck(info.index_id() == request.index_id(), "IndexInfo names another index");
  FuzzCheck(info.state() == v1::INDEX_STATE_LOADING, "a new index is not LOADING");
  FuzzCheck(info.spec().dimension() == request.spec().dimension(), "IndexInfo dimension changed");
}

// UploadPoints: the chunk checks of AcceptUploadChunk, against one of four index specs, twice (the
// second chunk sees the factor row length the first one fixed).
void FuzzUploadChunk(const v1::UploadPointsRequest& chunk, int variant) {
  if (absl::Status status =
          server::WithPrefix(server::ValidateIndexId(chunk.index_id()), "first chunk: ");
      !status.ok()) {
    CheckRejection(status);
  }
  core::IndexSpec spec;
  spec.dimension = 1 + (variant & 3);
  spec.factors_supplied = (variant & 4) != 0;
  server::PointBatch staged;
  staged.factor_columns = (variant & 8) != 0 && spec.factors_supplied ? 2 : 0;
  for (int64_t chunk_number = 0; chunk_number < 2; ++chunk_number) {
    const int64_t before = staged.num_points;
    absl::Status status =
        server::AppendUploadChunk(chunk, spec, chunk_number, staged.num_points, &staged);
    if (!status.ok()) {
      CheckRejection(status);
      FuzzCheck(staged.num_points == before, "a rejected chunk changed the staged points");
      return;
    }
    FuzzCheck(static_cast<int64_t>(staged.coordinates.size()) == staged.num_points * spec.dimension,
              "staged coordinates are not num_points x dimension");
    if (spec.factors_supplied) {
      FuzzCheck(
          static_cast<int64_t>(staged.factors.size()) == staged.num_points * staged.factor_columns,
          "staged factors are not num_points x factor_columns");
      FuzzCheck(static_cast<int64_t>(staged.residual_variances.size()) == staged.num_points,
                "staged residual variances are not one per point");
    } else {
      FuzzCheck(staged.factors.empty() && staged.residual_variances.empty(),
                "factors staged without factors_supplied");
    }
  }
}

// The id-only requests: BuildIndex, GetIndex / WatchIndex, DeleteIndex.
void FuzzIndexId(const std::string& id) {
  absl::Status status = server::ValidateIndexId(id);
  if (!status.ok()) {
    CheckRejection(status);
    return;
  }
  FuzzCheck(!id.empty() && id.size() <= static_cast<size_t>(server::kMaxIndexIdLength),
            "accepted id of bad length");
}

// The number N in "<prefix>N bytes" of `message`, or -1 if the message says "<prefix>more than
// ..." (a size past int64), or -2 if it holds no such phrase.
__int128 ReportedBytes(absl::string_view message, absl::string_view prefix) {
  const size_t at = message.find(prefix);
  if (at == absl::string_view::npos) return -2;
  absl::string_view rest = message.substr(at + prefix.size());
  if (absl::StartsWith(rest, "more than ")) return -1;
  __int128 value = 0;
  size_t digits = 0;
  while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') {
    value = value * 10 + (rest[digits] - '0');
    if (value > (__int128{1} << 100)) return -2;
    ++digits;
  }
  if (digits == 0 || !absl::StartsWith(rest.substr(digits), " bytes")) return -2;
  return value;
}

// A size as the plan must report it: exact when it fits int64, else "more than".
__int128 Expected(__int128 bytes) {
  return bytes > std::numeric_limits<int64_t>::max() ? -1 : bytes;
}

// Search: the handler's check (the index id) and the service's search plan (server/search_plan.h)
// against the prebuilt index, with the default limits or small ones (variant bit 1), in the
// packed or the raw answer layout (bit 2), then
// the search itself when the request is accepted and small. The plan's sizes, and every size a
// rejection states, must equal exact (128-bit) arithmetic: a huge k must never wrap.
void FuzzSearch(const v1::SearchRequest& request, int variant) {
  Fixture& fixture = GetFixture();
  const core::KnnIndex& index = (variant & 1) != 0 ? *fixture.euclidean : *fixture.residual;
  const int64_t n = index.size();
  const int dimension = index.dimension();

  const absl::Status id_status = server::ValidateIndexId(request.index_id());
  if (!id_status.ok()) CheckRejection(id_status);

  core::QueryBatch batch;
  batch.ids = absl::MakeConstSpan(request.query_ids().data(), request.query_ids().size());
  batch.points = absl::MakeConstSpan(request.query_points().data(), request.query_points().size());
  core::KnnOptions options;
  options.k = request.k();
  options.include_self = request.include_self();
  options.predecessor_mode = request.predecessor_mode();
  server::SearchLimits limits;
  if ((variant & 2) != 0) {
    limits.max_message_bytes = 4096;
    limits.max_queries_per_search = 8;
  }
  // Bit 2 of the variant: the raw answer layout (SearchRequest.raw_answer).
  const server::AnswerLayout layout =
      (variant & 4) != 0 ? server::AnswerLayout::kRaw : server::AnswerLayout::kPacked;
  const absl::StatusOr<server::SearchPlan> plan =
      server::PlanSearch(batch, options, n, dimension, limits, layout);
  const absl::Status valid = core::ValidateQuery(batch, options, n, dimension);
  FuzzCheck(valid.ok() || (!plan.ok() && plan.status() == valid),
            "the plan accepted what ValidateQuery rejects");
  if (!valid.ok()) {
    CheckRejection(valid);
    FuzzCheck(valid.code() == absl::StatusCode::kInvalidArgument,
              "ValidateQuery rejection is not INVALID_ARGUMENT");
    return;
  }
  const __int128 num_queries = core::NumQueries(batch, dimension);
  const __int128 k = options.k;
  // Packed: 8 bytes of distance and a varint id of at most 10 bytes (-1 padding), fewer when
  // every id is below n; raw: 16.
  const __int128 entry = server::AnswerEntryBytes(n, options.k, options.predecessor_mode, layout);
  FuzzCheck(layout == server::AnswerLayout::kRaw ? entry == 16 : entry >= 9 && entry <= 18,
            "an entry size out of range");
  const __int128 query_bytes = k * entry + server::kAnswerFramingBytes;
  const __int128 answer_bytes = num_queries * k * entry + server::kAnswerFramingBytes;
  if (!plan.ok()) {
    CheckRejection(plan.status());
    FuzzCheck(plan.status().code() == absl::StatusCode::kResourceExhausted,
              "a valid query's plan rejection is not RESOURCE_EXHAUSTED");
    const absl::string_view message = plan.status().message();
    if (absl::StartsWith(message, "k: ")) {
      FuzzCheck(query_bytes > limits.max_message_bytes, "k refused though one answer fits");
      FuzzCheck(ReportedBytes(message, "an answer of ") == Expected(query_bytes),
                "the size reported for k is wrong");
    } else if (absl::StartsWith(message, "the answer (")) {
      FuzzCheck(query_bytes <= limits.max_message_bytes, "the size of k was not named");
      FuzzCheck(answer_bytes > limits.max_message_bytes, "answer refused though it fits");
      FuzzCheck(ReportedBytes(message, "would take ") == Expected(answer_bytes),
                "the answer size reported is wrong");
    } else {
      FuzzCheck(absl::StrContains(message, "--max_queries_per_search") &&
                    num_queries > limits.max_queries_per_search,
                "an unexpected plan rejection");
    }
    return;
  }
  FuzzCheck(plan->num_queries == num_queries && plan->k == k, "the plan's shape is wrong");
  FuzzCheck(plan->answer_entries == num_queries * k, "the plan's entries are wrong");
  FuzzCheck(plan->message_bytes == answer_bytes && answer_bytes <= limits.max_message_bytes,
            "the plan's message size is wrong");
  FuzzCheck(plan->memory_bytes == num_queries * k * 16 + num_queries * 8,
            "the plan's memory is wrong");
  if (!id_status.ok() || options.k > kMaxSearchK || plan->num_queries > kMaxSearchQueries) return;

  const int64_t size = plan->answer_entries;
  std::vector<int64_t> ids(static_cast<size_t>(size), -2);
  std::vector<double> distances(static_cast<size_t>(size), -1.0);
  std::vector<int64_t> evaluations(static_cast<size_t>(plan->num_queries));
  core::TraversalStats stats;
  const absl::Status searched = index.Search(batch, options, &fixture.arena, nullptr, ids.data(),
                                             distances.data(), &stats, absl::MakeSpan(evaluations));
  FuzzCheck(searched.ok(), "a validated search failed");
  for (int64_t q = 0; q < plan->num_queries; ++q) {
    const int64_t query_id = batch.by_id() ? batch.ids[q] : -1;
    for (int64_t j = 0; j < options.k; ++j) {
      const int64_t id = ids[q * options.k + j];
      FuzzCheck(id >= -1 && id < n, "neighbour id out of range");
      if (id >= 0) FuzzCheck(core::Qualifies(id, query_id, options), "neighbour does not qualify");
    }
  }
  v1::SearchStats out;
  server::FillSearchStats(stats, 0.0, &out);
}

}  // namespace
}  // namespace rcknn::fuzz

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  google::protobuf::SetLogHandler(&rcknn::fuzz::IgnoreProtobufLog);
  rcknn::fuzz::GetFixture();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using rcknn::fuzz::RequestKind;
  namespace v1 = rcknn::v1;
  if (size < 1) return 0;
  const auto kind = static_cast<RequestKind>(data[0] % rcknn::fuzz::kNumRequestKinds);
  const int variant = data[0] / rcknn::fuzz::kNumRequestKinds;
  const uint8_t* body = data + 1;
  const size_t body_size = size - 1;
  switch (kind) {
    case RequestKind::kCreateIndex: {
      v1::CreateIndexRequest request;
      if (rcknn::fuzz::Parse(body, body_size, &request)) {
        rcknn::fuzz::FuzzCreateIndex(request, variant);
      }
      break;
    }
    case RequestKind::kUploadPoints: {
      v1::UploadPointsRequest request;
      if (rcknn::fuzz::Parse(body, body_size, &request)) {
        rcknn::fuzz::FuzzUploadChunk(request, variant);
      }
      break;
    }
    case RequestKind::kBuildIndex: {
      v1::BuildIndexRequest request;
      if (rcknn::fuzz::Parse(body, body_size, &request)) {
        rcknn::fuzz::FuzzIndexId(request.index_id());
      }
      break;
    }
    case RequestKind::kGetIndex: {
      v1::GetIndexRequest request;
      if (rcknn::fuzz::Parse(body, body_size, &request)) {
        rcknn::fuzz::FuzzIndexId(request.index_id());
      }
      break;
    }
    case RequestKind::kDeleteIndex: {
      v1::DeleteIndexRequest request;
      if (rcknn::fuzz::Parse(body, body_size, &request)) {
        rcknn::fuzz::FuzzIndexId(request.index_id());
      }
      break;
    }
    case RequestKind::kSearch: {
      v1::SearchRequest request;
      if (rcknn::fuzz::Parse(body, body_size, &request)) rcknn::fuzz::FuzzSearch(request, variant);
      break;
    }
    case RequestKind::kListIndexes: {
      v1::ListIndexesRequest request;
      rcknn::fuzz::Parse(body, body_size, &request);
      break;
    }
    case RequestKind::kIndexSpec: {
      v1::IndexSpec spec;
      v1::IndexSpec normalized;
      if (rcknn::fuzz::Parse(body, body_size, &spec)) {
        rcknn::fuzz::FuzzSpec(spec, variant, &normalized).IgnoreError();
      }
      break;
    }
  }
  return 0;
}
