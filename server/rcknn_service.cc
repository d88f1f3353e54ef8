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
    absl::StatusOr<core::OrderingRequest> converted = ToCoreOrderingRequest(*request);
    const absl::Status started =
        !converted.ok()
            ? converted.status()
            : service->StartComputeOrdering(
                  request->index_id(), request->name(), *std::move(converted), cancellation_,
                  [this, index_id = request->index_id(), response](
                      absl::StatusOr<std::shared_ptr<const StoredOrdering>> ordering) {
                    if (ordering.ok()) FillOrdering(index_id, **ordering, response);
                    result_ = ordering.status();
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

// WatchIndex: woken by the index's change notifications (IndexEntry::AddWatcher), so no thread
// waits or polls between reports. One write is in flight at a time; changes that arrive
// meanwhile are reported together once it completes (the latest state, never a stale one). The
// stream ends OK after the READY or FAILED report, NOT_FOUND once the index is deleted,
// UNAVAILABLE at shutdown (IndexService::BeginShutdown notifies every index) and CANCELLED when
// the client goes away.
class WatchIndexReactor final : public grpc::ServerWriteReactor<v1::IndexInfo> {
 public:
  WatchIndexReactor(IndexService* service, const v1::GetIndexRequest* request)
      : service_(service) {
    // Registered before the first report: a change after it is never missed.
    absl::StatusOr<std::unique_ptr<IndexWatch>> watch =
        [&]() -> absl::StatusOr<std::unique_ptr<IndexWatch>> {
      RETURN_IF_ERROR(ValidateIndexId(request->index_id()));
      return service->WatchIndex(request->index_id(), [this] { Report(); });
    }();
    if (!watch.ok()) {
      absl::MutexLock lock(&mutex_);
      FinishLocked(watch.status());
      return;
    }
    {
      absl::MutexLock lock(&mutex_);
      watch_ = *std::move(watch);
      entry_ = &watch_->entry();
    }
    Report();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mutex_);
    writing_ = false;
    if (!ok) {
      FinishLocked(absl::CancelledError("the watcher went away"));
    } else if (terminal_written_) {
      FinishLocked(absl::OkStatus());
    } else {
      ReportLocked();
    }
  }

  void OnCancel() override {
    absl::MutexLock lock(&mutex_);
    cancelled_ = true;
    if (!writing_) FinishLocked(absl::CancelledError("the watch was cancelled"));
  }

  void OnDone() override {
    // Once the watch is gone no notification is running or will run: `this` can go. (Not under
    // mutex_: a running notification holds it.)
    watch_.reset();
    delete this;
  }

 private:
  void Report() {
    absl::MutexLock lock(&mutex_);
    if (!writing_) ReportLocked();  // else OnWriteDone reports what changed meanwhile
  }

  // Writes the index's state if it changed since the last report; otherwise ends the stream if
  // the index is gone, the call cancelled or the server shutting down.
  void ReportLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    // A notification before the constructor has kept the watch: its own Report follows.
    if (finished_ || entry_ == nullptr) return;
    if (cancelled_) {
      FinishLocked(absl::CancelledError("the watch was cancelled"));
      return;
    }
    if (entry_->deleted()) {
      FinishLocked(absl::NotFoundError(absl::StrCat("index ", entry_->id(), " was deleted")));
      return;
    }
    const IndexSnapshot snapshot = entry_->Snapshot();
    if (first_ || snapshot.version != version_ ||
        snapshot.build_progress >= progress_ + IndexEntry::kProgressStep) {
      info_.Clear();
      FillIndexInfo(*entry_, &info_);
      first_ = false;
      version_ = snapshot.version;
      progress_ = snapshot.build_progress;
      terminal_written_ =
          snapshot.state == IndexState::kReady || snapshot.state == IndexState::kFailed;
      writing_ = true;
      StartWrite(&info_);
      return;
    }
    if (service_->shutting_down()) {
      FinishLocked(absl::UnavailableError("the server is shutting down"));
    }
  }

  void FinishLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (finished_) return;
    finished_ = true;
    Finish(ToGrpcStatus(status));
  }

  IndexService* const service_;
  absl::Mutex mutex_;
  std::unique_ptr<IndexWatch> watch_;  // null if the call failed before watching
  IndexEntry* entry_ ABSL_GUARDED_BY(mutex_) = nullptr;  // the watched index, once watch_ is set
  v1::IndexInfo info_ ABSL_GUARDED_BY(mutex_);  // the write in flight
  bool first_ ABSL_GUARDED_BY(mutex_) = true;
  uint64_t version_ ABSL_GUARDED_BY(mutex_) = 0;
  double progress_ ABSL_GUARDED_BY(mutex_) = 0.0;
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool terminal_written_ ABSL_GUARDED_BY(mutex_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace

grpc::ServerWriteReactor<v1::IndexInfo>* RcknnService::WatchIndex(
    grpc::CallbackServerContext* context, const v1::GetIndexRequest* request) {
  return new WatchIndexReactor(&service_, request);
}

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
    // Validated against the source's spec here; registered and committed on the I/O executor.
    absl::StatusOr<std::pair<IndexSpecRecord, core::TreeStart>> converted =
        [&]() -> absl::StatusOr<std::pair<IndexSpecRecord, core::TreeStart>> {
      RETURN_IF_ERROR(ValidateIndexId(request->index_id()));
      RETURN_IF_ERROR(ValidateIndexId(request->source_index_id(), "source_index_id"));
      ASSIGN_OR_RETURN(const core::TreeStart tree_start, ToCoreTreeStart(request->source_tree()));
      ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> source,
                       service_.GetIndex(request->source_index_id()));
      ASSIGN_OR_RETURN(v1::IndexSpec wanted, SpecFromSource(*request, WireSpec(source->spec())));
      ASSIGN_OR_RETURN(IndexSpecRecord spec, ToSpecRecord(wanted));
      return std::make_pair(std::move(spec), tree_start);
    }();
    if (!converted.ok()) {
      reactor->Finish(ToGrpcStatus(converted.status()));
      return reactor;
    }
    service_.RunBlocking([this, reactor, request, response,
                          converted = *std::move(converted)]() mutable {
      absl::StatusOr<std::shared_ptr<IndexEntry>> entry = service_.CreateIndexFromSource(
          request->index_id(), request->source_index_id(), std::move(converted.first),
          converted.second);
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
  absl::StatusOr<IndexSpecRecord> spec = [&]() -> absl::StatusOr<IndexSpecRecord> {
    RETURN_IF_ERROR(ValidateIndexId(request->index_id()));
    if (!request->has_spec()) return absl::InvalidArgumentError("spec: is required");
    if (request->expected_num_points() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("expected_num_points: is ",
                                                     request->expected_num_points(),
                                                     "; give a count >= 0 (0: unknown)"));
    }
    return ToSpecRecord(request->spec());
  }();
  if (!spec.ok()) {
    reactor->Finish(ToGrpcStatus(spec.status()));
    return reactor;
  }
  // Committing the spec file blocks on the disk.
  service_.RunBlocking([this, reactor, request, response, spec = *std::move(spec)]() mutable {
    absl::StatusOr<std::shared_ptr<IndexEntry>> entry =
        service_.CreateIndex(request->index_id(), std::move(spec));
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
  absl::StatusOr<std::shared_ptr<IndexEntry>> entry =
      [&]() -> absl::StatusOr<std::shared_ptr<IndexEntry>> {
    RETURN_IF_ERROR(ValidateIndexId(request->index_id()));
    if (request->inducing_points().empty()) return service_.BuildIndex(request->index_id());
    // The index's spec with the given points in place of its draw.
    ASSIGN_OR_RETURN(std::shared_ptr<IndexEntry> index, service_.GetIndex(request->index_id()));
    ASSIGN_OR_RETURN(v1::IndexSpec build_spec,
                     SpecWithInducingPoints(WireSpec(index->spec()), request->inducing_points()));
    ASSIGN_OR_RETURN(IndexSpecRecord record, ToSpecRecord(build_spec));
    return service_.BuildIndex(request->index_id(), std::move(record));
  }();
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
