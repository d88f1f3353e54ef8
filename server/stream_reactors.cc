#include "server/stream_reactors.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/proto_conversion.h"

namespace rcknn::server {
namespace {

// Parses `buffer` as a `Message`; INVALID_ARGUMENT naming what it should have been.
template <typename Message>
absl::Status Parse(grpc::ByteBuffer& buffer, Message* message, absl::string_view what) {
  if (grpc::SerializationTraits<Message>::Deserialize(&buffer, message).ok()) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": the message is not a valid ", Message::descriptor()->full_name()));
}

template <typename Message>
void Serialize(const Message& message, grpc::ByteBuffer* buffer) {
  buffer->Clear();  // gRPC serializes only into an empty buffer
  bool own_buffer = false;
  grpc::SerializationTraits<Message>::Serialize(message, buffer, &own_buffer);
}

}  // namespace

UploadPointsReactor::UploadPointsReactor(RcknnService* service,
                                         grpc::CallbackServerContext* context,
                                         grpc::ByteBuffer* response)
    : service_(service), context_(context), response_(response) {
  StartRead(&chunk_);
}

void UploadPointsReactor::OnReadDone(bool ok) {
  if (!ok) {
    // The end of the stream, or the call went away.
    if (context_->IsCancelled()) {
      FinishWith(absl::CancelledError("the upload was cancelled; nothing was applied"));
      return;
    }
    if (state_.entry == nullptr) {
      FinishWith(absl::InvalidArgumentError(
          "index_id: the stream carried no chunk; the first chunk must name the index"));
      return;
    }
    // Applying the upload commits its file (write + fsync): on the I/O executor.
    service_->index_service().RunBlocking([this] {
      const absl::StatusOr<UploadResult> result =
          service_->index_service().FinishUpload(&state_);
      if (result.ok()) {
        v1::UploadPointsResponse response;
        response.set_points_received(result->points_received);
        response.set_total_points(result->total_points);
        Serialize(response, response_);
      }
      FinishWith(result.status());  // last: the reactor may be deleted once the call finishes
    });
    return;
  }
  v1::UploadPointsRequest chunk;
  absl::Status status = Parse(chunk_, &chunk, absl::StrCat("chunk ", state_.chunks));
  if (status.ok()) status = service_->AcceptUploadChunk(chunk, &state_);
  if (!status.ok()) {
    FinishWith(status);
    return;
  }
  StartRead(&chunk_);
}

void UploadPointsReactor::FinishWith(const absl::Status& status) {
  // A failed stream applies nothing: what was staged, and the memory reserved for it, are dropped
  // before the client can see the status (OnDone, which deletes the reactor, runs later).
  state_ = UploadState();
  Finish(ToGrpcStatus(status));
}

SearchStreamReactor::SearchStreamReactor(RcknnService* service,
                                         grpc::CallbackServerContext* context)
    : service_(service), context_(context), deadline_(DeadlineOf(*context)) {
  absl::MutexLock lock(&mutex_);
  ProgressLocked();
}

void SearchStreamReactor::OnReadDone(bool ok) {
  absl::MutexLock lock(&mutex_);
  reading_ = false;
  if (!ok) {
    reads_done_ = true;
  } else {
    v1::SearchRequest request;
    if (absl::Status status = Parse(in_, &request, absl::StrCat("request ", received_));
        !status.ok()) {
      read_error_ = status;
      reads_done_ = true;
    } else {
      ++received_;
      queue_.push_back(std::move(request));
    }
  }
  ProgressLocked();
}

void SearchStreamReactor::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mutex_);
  writing_ = false;
  if (!ok) cancelled_ = true;  // nothing more reaches the client
  ProgressLocked();
}

void SearchStreamReactor::OnCancel() {
  absl::MutexLock lock(&mutex_);
  cancelled_ = true;
  handle_.Cancel();
  ProgressLocked();
}

void SearchStreamReactor::SearchDone(absl::Status status) {
  absl::MutexLock lock(&mutex_);
  searching_ = false;
  if (status.ok()) {
    answered_ = std::make_unique<grpc::ByteBuffer>();
    Serialize(*response_, answered_.get());
  } else if (error_.ok()) {
    error_ = WithPrefix(status, absl::StrCat("request ", started_ - 1, ": "));
  }
  response_.reset();
  request_.reset();
  ProgressLocked();
}

void SearchStreamReactor::ProgressLocked() {
  for (;;) {
    if (finished_) return;
    // The answer of the last search goes out once the previous write is done.
    if (answered_ != nullptr && !writing_ && !cancelled_) {
      out_ = std::move(*answered_);
      answered_.reset();
      writing_ = true;
      StartWrite(&out_);
    }
    const bool busy = starting_ || searching_;
    // The end: the first error, a cancel, or every request answered. Not while a search may
    // still call back (it references the reactor) or a write is in flight.
    const bool failed = !error_.ok() || cancelled_;
    const bool all_answered = reads_done_ && queue_.empty() && answered_ == nullptr;
    if ((failed || all_answered) && !busy && !writing_) {
      finished_ = true;
      Finish(ToGrpcStatus(cancelled_        ? absl::CancelledError("the stream was cancelled")
                          : !error_.ok() ? error_
                                         : read_error_));
      return;
    }
    if (!reading_ && !reads_done_ && static_cast<int>(queue_.size()) < kReadAhead) {
      reading_ = true;
      StartRead(&in_);
    }
    // The next search: one at a time, and not before the previous answer has left.
    if (failed || busy || answered_ != nullptr || queue_.empty()) return;
    request_ = std::make_unique<v1::SearchRequest>(std::move(queue_.front()));
    queue_.pop_front();
    response_ = std::make_unique<v1::SearchResponse>();
    ++started_;
    starting_ = true;
    const v1::SearchRequest* request = request_.get();
    v1::SearchResponse* response = response_.get();
    absl::StatusOr<QueryPool::CancelHandle> handle;
    {
      // The service may take a while (validation) and must not run under the lock; the call
      // cannot finish meanwhile (starting_), so the reactor stays alive.
      mutex_.Unlock();
      handle = service_->StartSearch(
          *request, deadline_, response,
          [this](absl::Status status) { SearchDone(std::move(status)); });
      mutex_.Lock();
    }
    starting_ = false;
    if (handle.ok()) {
      handle_ = *std::move(handle);
      // SearchDone may already have run; searching_ is set only if it has not.
      if (response_.get() == response) searching_ = true;
      if (cancelled_) handle_.Cancel();
    } else {
      error_ = WithPrefix(handle.status(), absl::StrCat("request ", started_ - 1, ": "));
      response_.reset();
      request_.reset();
    }
  }
}

}  // namespace rcknn::server
