#include "server/rcknn_service.h"

#include <chrono>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/knn_query.h"
#include "core/status_macros.h"
#include "server/logging.h"
#include "server/proto_conversion.h"
#include "server/search_answer.h"
#include "server/stream_reactors.h"

namespace rcknn::server {
namespace {

// WatchIndex reports progress at most this often, and only steps of at least kProgressStep.
constexpr absl::Duration kWatchInterval = absl::Milliseconds(100);
constexpr double kProgressStep = 0.01;

// Bytes of a non-negative varint.
int VarintBytes(uint64_t value) {
  int bytes = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++bytes;
  }
  return bytes;
}

}  // namespace

void RcknnService::UpdateIndexGauges() {
  IndexStateCounts counts;
  int64_t points = 0;
  int64_t memory_bytes = 0;
  for (const std::shared_ptr<IndexEntry>& entry : registry_->List()) {
    const IndexSnapshot snapshot = entry->Snapshot();
    switch (snapshot.state) {
      case IndexState::kLoading:
        ++counts.loading;
        break;
      case IndexState::kBuilding:
        ++counts.building;
        break;
      case IndexState::kReady:
        ++counts.ready;
        break;
      case IndexState::kFailed:
        ++counts.failed;
        break;
    }
    points += snapshot.num_points;
    memory_bytes += snapshot.memory_bytes;
  }
  metrics_->SetIndexCounts(counts);
  metrics_->SetIndexTotals(points, memory_bytes);
  metrics_->SetMemory(budget_->used(), budget_->limit());
}

grpc::Status RcknnService::CreateIndex(grpc::ServerContext* context,
                                       const v1::CreateIndexRequest* request,
                                       v1::IndexInfo* response) {
  const absl::Status status = DoCreateIndex(*request, response);
  if (status.ok()) UpdateIndexGauges();
  return ToGrpcStatus(status);
}

absl::Status RcknnService::DoCreateIndex(const v1::CreateIndexRequest& request,
                                         v1::IndexInfo* response) {
  RETURN_IF_ERROR(ValidateIndexId(request.index_id()));
  if (!request.has_spec()) return absl::InvalidArgumentError("spec: is required");
  v1::IndexSpec normalized;
  ASSIGN_OR_RETURN(core::IndexSpec spec, ToCoreSpec(request.spec(), &normalized));
  auto entry =
      std::make_shared<IndexEntry>(request.index_id(), std::move(normalized), std::move(spec));
  RETURN_IF_ERROR(registry_->Add(entry));
  if (store_ != nullptr) {
    if (absl::Status status = store_->CreateIndex(entry->id(), entry->spec()); !status.ok()) {
      (void)registry_->Remove(entry->id());
      return status;
    }
  }
  RCKNN_LOG(kInfo, "created index ", entry->id());
  FillIndexInfo(*entry, response);
  return absl::OkStatus();
}

grpc::ServerReadReactor<grpc::ByteBuffer>* RcknnService::UploadPoints(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  return new UploadPointsReactor(this, context, response);
}

absl::Status RcknnService::AcceptUploadChunk(const v1::UploadPointsRequest& chunk,
                                             UploadState* state) {
  if (state->entry == nullptr) {
    RETURN_IF_ERROR(WithPrefix(ValidateIndexId(chunk.index_id()), "first chunk: "));
    ASSIGN_OR_RETURN(state->entry, registry_->Get(chunk.index_id()));
    const IndexSnapshot snapshot = state->entry->Snapshot();
    if (snapshot.state != IndexState::kLoading) {
      return absl::FailedPreconditionError(
          absl::StrCat("index ", state->entry->id(), " is ", IndexStateName(snapshot.state),
                       "; points can only be uploaded before BuildIndex"));
    }
    state->existing = snapshot.num_points;
    state->staged.factor_columns = state->entry->factor_columns();
    const v1::IndexSpec& spec = state->entry->spec();
    if (state->staged.factor_columns == 0 && spec.factors_supplied() && spec.has_inducing_count()) {
      state->staged.factor_columns = spec.inducing_count();
    }
  } else if (!chunk.index_id().empty() && chunk.index_id() != state->entry->id()) {
    return absl::InvalidArgumentError(absl::StrCat("index_id: chunk ", state->chunks, " names ",
                                                   chunk.index_id(), " but the stream uploads to ",
                                                   state->entry->id()));
  }
  const IndexEntry& entry = *state->entry;
  const int64_t rows = chunk.coordinates().size() / entry.core_spec().dimension;
  const int64_t total = state->existing + state->staged.num_points + rows;
  if (total > options_.max_points_per_index) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "index ", entry.id(), " would hold ", total,
        " points, over the limit --max_points_per_index = ", options_.max_points_per_index));
  }
  const int64_t chunk_bytes = static_cast<int64_t>(
      (chunk.coordinates().size() + chunk.factors().size() + chunk.residual_variances().size()) *
      sizeof(double));
  RETURN_IF_ERROR(budget_->Grow(state->memory, chunk_bytes,
                                absl::StrCat("the upload to index ", entry.id())));
  RETURN_IF_ERROR(AppendUploadChunk(chunk, entry.core_spec(), state->chunks,
                                    state->existing + state->staged.num_points, &state->staged));
  ++state->chunks;
  return absl::OkStatus();
}

absl::Status RcknnService::FinishUpload(UploadState* state, v1::UploadPointsResponse* response) {
  if (state->entry == nullptr) {
    return absl::InvalidArgumentError(
        "index_id: the stream carried no chunk; the first chunk must name the index");
  }
  const int64_t received = state->staged.num_points;
  IndexEntry::PersistUpload persist;
  if (store_ != nullptr) {
    persist = [this, id = state->entry->id()](const PointBatch& batch, int64_t sequence) {
      return store_->WriteUpload(id, sequence, batch);
    };
  }
  ASSIGN_OR_RETURN(const int64_t total,
                   state->entry->Append(std::move(state->staged), options_.max_points_per_index,
                                        persist, std::move(state->memory)));
  response->set_points_received(received);
  response->set_total_points(total);
  UpdateIndexGauges();
  RCKNN_LOG(kDebug, "index ", state->entry->id(), ": received ", received, " points in ",
            state->chunks, " chunks, ", total, " in total");
  return absl::OkStatus();
}

grpc::Status RcknnService::BuildIndex(grpc::ServerContext* context,
                                      const v1::BuildIndexRequest* request,
                                      v1::IndexInfo* response) {
  const absl::Status status = DoBuildIndex(*request, response);
  if (status.ok()) UpdateIndexGauges();
  return ToGrpcStatus(status);
}

absl::Status RcknnService::DoBuildIndex(const v1::BuildIndexRequest& request,
                                        v1::IndexInfo* response) {
  RETURN_IF_ERROR(ValidateIndexId(request.index_id()));
  ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> entry, registry_->Get(request.index_id()));
  core::IndexSpec spec;
  MemoryReservation build_memory;
  ASSIGN_OR_RETURN(core::IndexData data,
                   entry->BeginBuild(BuildCheck(*entry, "building", &spec, &build_memory)));
  FillIndexInfo(*entry, response);
  RCKNN_LOG(kInfo, "building index ", entry->id(), " over ", data.points.rows(), " points");
  StartBuild(std::move(entry), std::move(spec), std::move(data), std::move(build_memory),
             /*restore=*/false);
  return absl::OkStatus();
}

std::function<absl::Status(int64_t)> RcknnService::BuildCheck(const IndexEntry& entry,
                                                              absl::string_view verb,
                                                              core::IndexSpec* spec,
                                                              MemoryReservation* memory) {
  return [this, &entry, verb, spec, memory](int64_t n) {
    ASSIGN_OR_RETURN(*spec,
                     SpecForBuild(entry.core_spec(), entry.spec().has_inducing_count(), n));
    ASSIGN_OR_RETURN(*memory, budget_->Reserve(core::KnnIndex::EstimateBuildBytes(*spec, n),
                                               absl::StrCat(verb, " index ", entry.id())));
    return absl::OkStatus();
  };
}

void RcknnService::StartBuild(std::shared_ptr<IndexEntry> entry, core::IndexSpec spec,
                              core::IndexData data, MemoryReservation build_memory,
                              bool restore) {
  // std::function needs a copyable callable: the data and the reservation travel in shared_ptrs.
  auto shared_data = std::make_shared<core::IndexData>(std::move(data));
  auto shared_memory = std::make_shared<MemoryReservation>(std::move(build_memory));
  tbb::task_arena* arena = pool_->arena();
  pool_->Run([this, entry, spec = std::move(spec), shared_data, shared_memory, arena,
              restore]() mutable {
    absl::StatusOr<std::unique_ptr<core::KnnIndex>> index;
    double build_seconds = -1.0;
    auto progress = [raw = entry.get()](double f) { raw->SetBuildProgress(f); };
    try {
      if (restore) {
        index = store_->RestoreTree(entry->id(), entry->uploads(), spec, std::move(*shared_data),
                                    arena, entry->build_cancellation(), progress, &build_seconds);
      } else {
        index = core::KnnIndex::Build(spec, std::move(*shared_data), arena,
                                      entry->build_cancellation(), progress);
      }
    } catch (const std::bad_alloc&) {
      index = absl::ResourceExhaustedError("the build ran out of memory");
    }
    shared_data.reset();
    if (!restore && index.ok() && store_ != nullptr) {
      // Durable before READY: a crash from here on finds either this whole file or none.
      // The duration is taken once, so that the file and GetIndex report the same one.
      build_seconds = entry->Snapshot().build_seconds;
      const absl::Status saved = entry->RunWrite([&] {
        return store_->WriteTree(entry->id(), entry->uploads(), build_seconds, **index);
      });
      if (!saved.ok() && !entry->deleted()) {
        index = absl::Status(saved.code(), absl::StrCat("the index was built but could not be "
                                                        "saved in --data_dir: ",
                                                        saved.message()));
      }
    }
    entry->FinishBuild(std::move(index), build_seconds, std::move(*shared_memory));
    const IndexSnapshot snapshot = entry->Snapshot();
    if (snapshot.state == IndexState::kReady && !restore) {
      metrics_->RecordBuild(snapshot.build_seconds);
    }
    UpdateIndexGauges();
    if (snapshot.state == IndexState::kReady) {
      RCKNN_LOG(kInfo, "index ", entry->id(), restore ? " restored" : " built",
                ", READY: ", snapshot.num_points, " points");
    } else if (!entry->deleted()) {
      RCKNN_LOG(kWarning, "index ", entry->id(), " FAILED: ", snapshot.error);
    }
  });
}

int64_t RcknnService::LoadStoredIndexes() {
  if (store_ == nullptr) return 0;
  std::vector<StoredIndex> stored = store_->LoadAll();
  for (StoredIndex& found : stored) {
    v1::IndexSpec normalized;
    absl::StatusOr<core::IndexSpec> spec = absl::DataLossError("the spec could not be read");
    if (found.status.ok()) {
      spec = ToCoreSpec(found.spec, &normalized);
      if (!spec.ok()) {
        found.status = absl::DataLossError(
            absl::StrCat("the saved spec is not valid: ", spec.status().message()));
      }
    }
    auto entry = std::make_shared<IndexEntry>(
        found.id, spec.ok() ? std::move(normalized) : found.spec,
        spec.ok() ? *std::move(spec) : core::IndexSpec());
    if (absl::Status added = registry_->Add(entry, /*enforce_limit=*/false); !added.ok()) {
      RCKNN_LOG(kError, "--data_dir: index ", found.id, " not loaded: ", added.message());
      continue;
    }
    absl::Status status = found.status;
    for (PointBatch& batch : found.uploads) {
      if (!status.ok()) break;
      const int64_t bytes = static_cast<int64_t>(
          (batch.coordinates.size() + batch.factors.size() + batch.residual_variances.size()) *
          sizeof(double));
      absl::StatusOr<MemoryReservation> memory =
          budget_->Reserve(bytes, absl::StrCat("loading index ", found.id));
      status = memory.status();
      if (status.ok()) {
        status = entry->Append(std::move(batch), options_.max_points_per_index, nullptr,
                               *std::move(memory))
                     .status();
      }
    }
    if (status.ok() && found.has_tree) {
      core::IndexSpec build_spec;
      MemoryReservation build_memory;
      absl::StatusOr<core::IndexData> data =
          entry->BeginBuild(BuildCheck(*entry, "restoring", &build_spec, &build_memory));
      status = data.status();
      if (status.ok()) {
        RCKNN_LOG(kInfo, "--data_dir: restoring index ", found.id, " (", entry->Snapshot().num_points,
                  " points)");
        StartBuild(entry, std::move(build_spec), *std::move(data), std::move(build_memory),
                   /*restore=*/true);
      }
    }
    if (!status.ok()) {
      entry->MarkFailed(status);
      RCKNN_LOG(kError, "--data_dir: index ", found.id, " FAILED: ", status.ToString(),
                " (its files are kept; DeleteIndex removes them)");
    } else if (!found.has_tree) {
      RCKNN_LOG(kInfo, "--data_dir: loaded index ", found.id, " (LOADING, ",
                entry->Snapshot().num_points, " points in ", found.uploads.size(), " uploads)");
    }
  }
  UpdateIndexGauges();
  return static_cast<int64_t>(stored.size());
}

grpc::Status RcknnService::GetIndex(grpc::ServerContext* context,
                                    const v1::GetIndexRequest* request, v1::IndexInfo* response) {
  if (absl::Status status = ValidateIndexId(request->index_id()); !status.ok()) {
    return ToGrpcStatus(status);
  }
  absl::StatusOr<std::shared_ptr<IndexEntry>> entry = registry_->Get(request->index_id());
  if (!entry.ok()) return ToGrpcStatus(entry.status());
  FillIndexInfo(**entry, response);
  return grpc::Status::OK;
}

grpc::Status RcknnService::WatchIndex(grpc::ServerContext* context,
                                      const v1::GetIndexRequest* request,
                                      grpc::ServerWriter<v1::IndexInfo>* writer) {
  return ToGrpcStatus(DoWatchIndex(context, *request, writer));
}

absl::Status RcknnService::DoWatchIndex(grpc::ServerContext* context,
                                        const v1::GetIndexRequest& request,
                                        grpc::ServerWriter<v1::IndexInfo>* writer) {
  RETURN_IF_ERROR(ValidateIndexId(request.index_id()));
  ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> entry, registry_->Get(request.index_id()));
  bool first = true;
  uint64_t version = 0;
  double progress = 0.0;
  for (;;) {
    if (context->IsCancelled()) return absl::CancelledError("the watch was cancelled");
    if (entry->deleted()) {
      return absl::NotFoundError(absl::StrCat("index ", entry->id(), " was deleted"));
    }
    const IndexSnapshot snapshot = entry->Snapshot();
    const bool terminal =
        snapshot.state == IndexState::kReady || snapshot.state == IndexState::kFailed;
    if (first || snapshot.version != version ||
        snapshot.build_progress >= progress + kProgressStep) {
      v1::IndexInfo info;
      FillIndexInfo(*entry, &info);
      if (!writer->Write(info)) return absl::CancelledError("the watcher went away");
      first = false;
      version = snapshot.version;
      progress = snapshot.build_progress;
    }
    if (terminal) return absl::OkStatus();
    if (shutting_down_.load()) return absl::UnavailableError("the server is shutting down");
    entry->AwaitChange(version, kWatchInterval);
  }
}

grpc::Status RcknnService::ListIndexes(grpc::ServerContext* context,
                                       const v1::ListIndexesRequest* request,
                                       v1::ListIndexesResponse* response) {
  for (const std::shared_ptr<IndexEntry>& entry : registry_->List()) {
    FillIndexInfo(*entry, response->add_indexes());
  }
  return grpc::Status::OK;
}

grpc::Status RcknnService::DeleteIndex(grpc::ServerContext* context,
                                       const v1::DeleteIndexRequest* request,
                                       v1::DeleteIndexResponse* response) {
  if (absl::Status status = ValidateIndexId(request->index_id()); !status.ok()) {
    return ToGrpcStatus(status);
  }
  absl::StatusOr<std::shared_ptr<IndexEntry>> removed = registry_->Remove(request->index_id());
  if (!removed.ok()) return ToGrpcStatus(removed.status());
  UpdateIndexGauges();
  if (store_ != nullptr) {
    // No write of the entry is under way once RunWrite returns: a later one sees it deleted.
    const absl::Status status = (*removed)->RunWrite(
        [&] { return store_->DeleteIndex(request->index_id()); }, /*even_if_deleted=*/true);
    if (!status.ok()) {
      RCKNN_LOG(kError, "index ", request->index_id(), " deleted, but not its files: ",
                status.ToString());
      return ToGrpcStatus(absl::Status(
          status.code(), absl::StrCat("index ", request->index_id(),
                                      " was deleted, but its files in --data_dir could not be "
                                      "removed and it will come back at the next start: ",
                                      status.message())));
    }
  }
  RCKNN_LOG(kInfo, "deleted index ", request->index_id());
  return grpc::Status::OK;
}

grpc::Status RcknnService::Search(grpc::ServerContext* context, const v1::SearchRequest* request,
                                  v1::SearchResponse* response) {
  return ToGrpcStatus(RunSearch(
      *request, DeadlineOf(*context), [context] { return context->IsCancelled(); }, response));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* RcknnService::SearchStream(
    grpc::CallbackServerContext* context) {
  return new SearchStreamReactor(this, context);
}

absl::Status RcknnService::RunSearch(const v1::SearchRequest& request, absl::Time deadline,
                                     const std::function<bool()>& is_cancelled,
                                     v1::SearchResponse* response) {
  RETURN_IF_ERROR(ValidateSearchRequest(request));
  const int64_t k = request.k();
  const bool by_id = !request.query_ids().empty();
  ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> entry, registry_->Get(request.index_id()));
  ASSIGN_OR_RETURN(std::shared_ptr<const core::KnnIndex> index, entry->ReadyIndex());
  const int64_t n = index->size();
  const int dimension = index->dimension();

  const int64_t num_queries =
      by_id ? request.query_ids().size() : request.query_points().size() / dimension;
  if (num_queries > options_.max_queries_per_search) {
    return absl::ResourceExhaustedError(absl::StrCat(
        by_id ? "query_ids" : "query_points", ": ", num_queries,
        " queries, over the limit --max_queries_per_search = ", options_.max_queries_per_search,
        "; split the batch (SearchStream takes one batch per message)"));
  }
  // The answer must fit in one message: a double and a varint id per entry (-1 padding takes
  // 10 bytes), or two 8-byte values in the raw layout, plus a little framing.
  const bool may_pad = request.predecessor_mode() || k >= n;
  const double entry_bytes =
      request.raw_answer()
          ? 16.0
          : 8.0 + (may_pad ? 10 : VarintBytes(static_cast<uint64_t>(n - 1)));
  const double answer_bytes =
      static_cast<double>(num_queries) * static_cast<double>(k) * entry_bytes + 256.0;
  if (answer_bytes > static_cast<double>(options_.max_message_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the answer (", num_queries, " queries x k = ", k, ", about ",
        static_cast<int64_t>(answer_bytes), " bytes) would exceed --max_message_bytes = ",
        options_.max_message_bytes, "; send fewer queries per request"));
  }

  ASSIGN_OR_RETURN(
      MemoryReservation answer_memory,
      budget_->Reserve(num_queries * (k * static_cast<int64_t>(sizeof(int64_t) + sizeof(double)) +
                                      static_cast<int64_t>(sizeof(int64_t))),
                       "the answer of this search"));

  core::QueryBatch batch;
  batch.ids = absl::MakeConstSpan(request.query_ids().data(), request.query_ids().size());
  batch.points = absl::MakeConstSpan(request.query_points().data(), request.query_points().size());
  core::KnnOptions options;
  options.k = k;
  options.include_self = request.include_self();
  options.predecessor_mode = request.predecessor_mode();
  RETURN_IF_ERROR(core::ValidateQuery(batch, options, n, dimension));

  const int64_t size = num_queries * k;
  response->set_num_queries(num_queries);
  response->set_k(k);
  AnswerArrays answer = request.raw_answer() ? RawAnswerArrays(size, response)
                                             : PackedAnswerArrays(size, response);
  core::TraversalStats stats;
  std::vector<int64_t> per_query_evaluations(static_cast<size_t>(num_queries));
  const absl::Time start = absl::Now();
  absl::Status status = pool_->Search(*index, batch, options, deadline, is_cancelled,
                                      answer.ids, answer.distances, &stats,
                                      absl::MakeSpan(per_query_evaluations));
  if (!status.ok()) {
    response->Clear();
    return status;
  }
  FinishAnswerArrays(&answer);
  // Once per batch, from the merged stats: never from inside the search.
  metrics_->RecordSearch(stats, per_query_evaluations);
  FillSearchStats(stats, absl::ToDoubleSeconds(absl::Now() - start), response->mutable_stats());
  return absl::OkStatus();
}

}  // namespace rcknn::server
