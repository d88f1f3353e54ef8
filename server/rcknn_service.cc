#include "server/rcknn_service.h"

#include <atomic>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/knn_query.h"
#include "core/status_macros.h"
#include "server/proto_conversion.h"
#include "server/search_answer.h"
#include "server/stream_reactors.h"

namespace rcknn::server {
namespace {

// WatchIndex reports progress at most this often, and only steps of at least kProgressStep.
constexpr absl::Duration kWatchInterval = absl::Milliseconds(100);
constexpr double kProgressStep = 0.01;

// Unary Search: started by the handler, finished by the pool's callback; a client cancel (or
// the deadline, which gRPC reports the same way) cancels the batch mid-way. The call is
// finished by whichever of the two steps comes last, the handler storing the cancel handle or
// the callback: the reactor must not be deleted (OnDone) while the handler still uses it.
class SearchReactor final : public grpc::ServerUnaryReactor {
 public:
  SearchReactor(RcknnService* service, grpc::CallbackServerContext* context,
                const v1::SearchRequest* request, v1::SearchResponse* response) {
    absl::StatusOr<QueryPool::CancelHandle> handle =
        service->StartSearch(*request, DeadlineOf(*context), response, [this](absl::Status status) {
          result_ = std::move(status);
          Step();
        });
    if (!handle.ok()) {
      Finish(ToGrpcStatus(handle.status()));  // the callback never runs
      return;
    }
    {
      absl::MutexLock lock(&mutex_);
      handle_ = *std::move(handle);
      if (cancelled_) handle_.Cancel();
    }
    Step();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mutex_);
    cancelled_ = true;
    handle_.Cancel();
  }
  void OnDone() override { delete this; }

 private:
  void Step() {
    // acq_rel: the last step sees result_ written by the callback.
    if (steps_.fetch_sub(1, std::memory_order_acq_rel) == 1) Finish(ToGrpcStatus(result_));
  }

  std::atomic<int> steps_{2};
  absl::Status result_;  // written by the callback before its step
  absl::Mutex mutex_;
  QueryPool::CancelHandle handle_ ABSL_GUARDED_BY(mutex_);
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
};

// Unary ComputeOrdering: started by the handler, finished by the service's callback (after the
// computation on the pool and the commit on the I/O executor), whichever step comes last; a
// client cancel or the deadline stops the computation at its next check.
class ComputeOrderingReactor final : public grpc::ServerUnaryReactor {
 public:
  ComputeOrderingReactor(IndexService* service, grpc::CallbackServerContext* context,
                         const v1::ComputeOrderingRequest* request, v1::Ordering* response)
      : cancellation_(std::make_shared<core::Cancellation>(DeadlineOf(*context))) {
    const absl::Status started =
        service->StartComputeOrdering(*request, cancellation_, response, [this](absl::Status status) {
          result_ = std::move(status);
          Step();
        });
    if (!started.ok()) {
      Finish(ToGrpcStatus(started));  // the callback never runs
      return;
    }
    Step();
  }

  void OnCancel() override { cancellation_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  void Step() {
    if (steps_.fetch_sub(1, std::memory_order_acq_rel) == 1) Finish(ToGrpcStatus(result_));
  }

  const std::shared_ptr<core::Cancellation> cancellation_;
  std::atomic<int> steps_{2};
  absl::Status result_;
};

}  // namespace

grpc::ServerUnaryReactor* RcknnService::ComputeOrdering(grpc::CallbackServerContext* context,
                                                        const v1::ComputeOrderingRequest* request,
                                                        v1::Ordering* response) {
  return new ComputeOrderingReactor(&service_, context, request, response);
}

grpc::ServerUnaryReactor* RcknnService::CreateIndex(grpc::CallbackServerContext* context,
                                                    const v1::CreateIndexRequest* request,
                                                    v1::IndexInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (!request->source_index_id().empty()) {
    // Validated against the source, registered and committed on the I/O executor.
    service_.RunBlocking([this, reactor, request, response] {
      absl::StatusOr<std::shared_ptr<IndexEntry>> entry = service_.CreateIndexFromSource(*request);
      if (entry.ok()) FillIndexInfo(**entry, response);
      reactor->Finish(ToGrpcStatus(entry.status()));
    });
    return reactor;
  }
  if (request->source_tree() != v1::SOURCE_TREE_UNSPECIFIED) {
    reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError(
        "source_tree: is used only with source_index_id")));
    return reactor;
  }
  v1::IndexSpec normalized;
  absl::StatusOr<core::IndexSpec> spec = [&]() -> absl::StatusOr<core::IndexSpec> {
    RETURN_IF_ERROR(ValidateIndexId(request->index_id()));
    if (!request->has_spec()) return absl::InvalidArgumentError("spec: is required");
    if (request->expected_num_points() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("expected_num_points: is ",
                                                     request->expected_num_points(),
                                                     "; give a count >= 0 (0: unknown)"));
    }
    return ToCoreSpec(request->spec(), &normalized);
  }();
  if (!spec.ok()) {
    reactor->Finish(ToGrpcStatus(spec.status()));
    return reactor;
  }
  // Committing the spec file blocks on the disk.
  service_.RunBlocking([this, reactor, request, response, normalized = std::move(normalized),
                        spec = *std::move(spec)]() mutable {
    absl::StatusOr<std::shared_ptr<IndexEntry>> entry =
        service_.CreateIndex(request->index_id(), std::move(normalized), std::move(spec));
    if (entry.ok()) FillIndexInfo(**entry, response);
    reactor->Finish(ToGrpcStatus(entry.status()));
  });
  return reactor;
}

grpc::ServerReadReactor<grpc::ByteBuffer>* RcknnService::UploadPoints(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  return new UploadPointsReactor(this, context, response);
}

absl::Status RcknnService::AcceptUploadChunk(const v1::UploadPointsRequest& chunk,
                                             UploadState* state) {
  if (state->entry == nullptr) {
    RETURN_IF_ERROR(WithPrefix(ValidateIndexId(chunk.index_id()), "first chunk: "));
    RETURN_IF_ERROR(service_.BeginUpload(chunk.index_id(), state));
  } else if (!chunk.index_id().empty() && chunk.index_id() != state->entry->id()) {
    return absl::InvalidArgumentError(absl::StrCat("index_id: chunk ", state->chunks, " names ",
                                                   chunk.index_id(), " but the stream uploads to ",
                                                   state->entry->id()));
  }
  const core::IndexSpec& spec = state->entry->core_spec();
  RETURN_IF_ERROR(service_.ReserveChunk(
      state, chunk.coordinates().size() / spec.dimension,
      int64_t{chunk.coordinates().size()} + chunk.factors().size() +
          chunk.residual_variances().size()));
  RETURN_IF_ERROR(AppendUploadChunk(chunk, spec, state->chunks,
                                    state->existing + state->staged.num_points, &state->staged));
  ++state->chunks;
  return absl::OkStatus();
}

grpc::Status RcknnService::BuildIndex(grpc::ServerContext* context,
                                      const v1::BuildIndexRequest* request,
                                      v1::IndexInfo* response) {
  if (absl::Status status = ValidateIndexId(request->index_id()); !status.ok()) {
    return ToGrpcStatus(status);
  }
  absl::StatusOr<std::shared_ptr<IndexEntry>> entry =
      service_.BuildIndex(request->index_id(), request->inducing_points());
  if (!entry.ok()) return ToGrpcStatus(entry.status());
  FillIndexInfo(**entry, response);
  return grpc::Status::OK;
}

grpc::Status RcknnService::GetPoints(grpc::ServerContext* context,
                                     const v1::GetPointsRequest* request,
                                     v1::GetPointsResponse* response) {
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(ValidateIndexId(request->index_id()));
    ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> entry, service_.GetIndex(request->index_id()));
    const double bytes = static_cast<double>(request->ids().size()) *
                             entry->core_spec().dimension * sizeof(double) +
                         256.0;
    if (bytes > static_cast<double>(service_.options().max_message_bytes)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "ids: the coordinates of ", request->ids().size(), " points would exceed "
          "--max_message_bytes = ", service_.options().max_message_bytes, "; ask for fewer"));
    }
    ASSIGN_OR_RETURN(std::vector<double> coordinates,
                     entry->Coordinates(absl::MakeConstSpan(request->ids().data(),
                                                            request->ids().size())));
    response->mutable_coordinates()->Add(coordinates.begin(), coordinates.end());
    return absl::OkStatus();
  };
  return ToGrpcStatus(run());
}

grpc::Status RcknnService::GetIndex(grpc::ServerContext* context,
                                    const v1::GetIndexRequest* request, v1::IndexInfo* response) {
  if (absl::Status status = ValidateIndexId(request->index_id()); !status.ok()) {
    return ToGrpcStatus(status);
  }
  absl::StatusOr<std::shared_ptr<IndexEntry>> entry = service_.GetIndex(request->index_id());
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
  ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> entry, service_.GetIndex(request.index_id()));
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
    if (service_.shutting_down()) return absl::UnavailableError("the server is shutting down");
    entry->AwaitChange(version, kWatchInterval);
  }
}

grpc::Status RcknnService::ListIndexes(grpc::ServerContext* context,
                                       const v1::ListIndexesRequest* request,
                                       v1::ListIndexesResponse* response) {
  for (const std::shared_ptr<IndexEntry>& entry : service_.ListIndexes()) {
    FillIndexInfo(*entry, response->add_indexes());
  }
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* RcknnService::DeleteIndex(grpc::CallbackServerContext* context,
                                                    const v1::DeleteIndexRequest* request,
                                                    v1::DeleteIndexResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status status = ValidateIndexId(request->index_id()); !status.ok()) {
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  }
  // Removing the files blocks on the disk.
  service_.RunBlocking([this, reactor, request] {
    reactor->Finish(ToGrpcStatus(service_.DeleteIndex(request->index_id())));
  });
  return reactor;
}

grpc::ServerUnaryReactor* RcknnService::Search(grpc::CallbackServerContext* context,
                                               const v1::SearchRequest* request,
                                               v1::SearchResponse* response) {
  return new SearchReactor(this, context, request, response);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* RcknnService::SearchStream(
    grpc::CallbackServerContext* context) {
  return new SearchStreamReactor(this, context);
}

absl::StatusOr<QueryPool::CancelHandle> RcknnService::StartSearch(
    const v1::SearchRequest& request, absl::Time deadline, v1::SearchResponse* response,
    std::function<void(absl::Status)> done) {
  RETURN_IF_ERROR(ValidateIndexId(request.index_id()));
  SearchCall call;
  call.index_id = request.index_id();
  call.queries.ids = absl::MakeConstSpan(request.query_ids().data(), request.query_ids().size());
  call.queries.points =
      absl::MakeConstSpan(request.query_points().data(), request.query_points().size());
  call.queries.id_bounds =
      absl::MakeConstSpan(request.query_id_bounds().data(), request.query_id_bounds().size());
  call.options.k = request.k();
  call.options.include_self = request.include_self();
  call.options.predecessor_mode = request.predecessor_mode();
  call.ordering = request.ordering();
  call.ids_are_ranks = request.ids_are_ranks();
  call.deadline = deadline;
  call.layout = request.raw_answer() ? AnswerLayout::kRaw : AnswerLayout::kPacked;
  // Packed fields or raw bytes (server/search_answer.h), written in place by the search; the
  // arrays (and any staging) live until the search's callback.
  auto answer = std::make_shared<AnswerArrays>();
  auto allocate = [response, answer, raw = request.raw_answer()](int64_t num_queries, int64_t k) {
    // The search plan has checked that num_queries x k fits one message.
    const int64_t size = num_queries * k;
    response->set_num_queries(num_queries);
    response->set_k(k);
    *answer = raw ? RawAnswerArrays(size, response) : PackedAnswerArrays(size, response);
    return AnswerBuffers{answer->ids, answer->distances};
  };
  return service_.StartSearch(
      call, allocate,
      [response, answer, done = std::move(done)](absl::Status status,
                                                 const SearchOutcome& outcome) {
        if (status.ok()) {
          FinishAnswerArrays(answer.get());
          FillSearchStats(outcome.stats, outcome.seconds, response->mutable_stats());
        } else {
          response->Clear();
        }
        done(std::move(status));
      });
}

}  // namespace rcknn::server
