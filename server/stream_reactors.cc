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
    // Applying the upload commits its file (write + fsync): not on a gRPC callback thread.
    service_->RunBlocking([this] {
      v1::UploadPointsResponse response;
      const absl::Status status = service_->FinishUpload(&state_, &response);
      if (status.ok()) Serialize(response, response_);
      FinishWith(status);  // last: the reactor may be deleted as soon as the call finishes
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
    : service_(service), context_(context) {
  // Under the lock: the worker starts by taking it, so worker_ is assigned before it can finish
  // the call (and OnDone look at worker_).
  absl::MutexLock lock(&mutex_);
  MaybeReadLocked();
  worker_ = std::thread([this] { Work(); });
}

void SearchStreamReactor::MaybeReadLocked() {
  if (reading_ || reads_done_ || static_cast<int>(queue_.size()) >= kReadAhead) return;
  reading_ = true;
  StartRead(&in_);
}

void SearchStreamReactor::OnReadDone(bool ok) {
  absl::MutexLock lock(&mutex_);
  reading_ = false;
  if (!ok) {
    reads_done_ = true;
    return;
  }
  v1::SearchRequest request;
  if (absl::Status status = Parse(in_, &request, absl::StrCat("request ", received_));
      !status.ok()) {
    read_error_ = status;
    reads_done_ = true;
    return;
  }
  ++received_;
  queue_.push_back(std::move(request));
  MaybeReadLocked();
}

void SearchStreamReactor::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mutex_);
  writing_ = false;
  if (!ok) write_failed_ = true;
}

void SearchStreamReactor::OnCancel() {
  absl::MutexLock lock(&mutex_);
  cancelled_ = true;
}

void SearchStreamReactor::OnDone() {
  // Finish is the worker's last act, but OnDone may run before the worker has returned from it,
  // or on the worker itself.
  if (worker_.get_id() == std::this_thread::get_id()) {
    worker_.detach();
  } else {
    worker_.join();
  }
  delete this;
}

void SearchStreamReactor::Work() {
  const absl::Time deadline = DeadlineOf(*context_);
  auto is_cancelled = [this] {
    absl::MutexLock lock(&mutex_);
    return cancelled_;
  };
  for (int64_t number = 0;; ++number) {
    v1::SearchRequest request;
    bool end = false;
    absl::Status end_status;
    {
      absl::MutexLock lock(&mutex_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return !queue_.empty() || reads_done_ || cancelled_ || write_failed_;
      };
      mutex_.Await(absl::Condition(&ready));
      if (cancelled_ || write_failed_) {
        // Nothing more reaches the client; finish so that the call can end.
        end = true;
        end_status = absl::CancelledError("the stream was cancelled");
      } else if (queue_.empty()) {
        end = true;  // every request was answered; OK unless the last read was garbage
        end_status = read_error_;
      } else {
        request = std::move(queue_.front());
        queue_.pop_front();
        MaybeReadLocked();
      }
    }
    if (end) {
      FinishWith(end_status);
      return;
    }
    v1::SearchResponse response;
    const absl::Status status = service_->RunSearch(request, deadline, is_cancelled, &response);
    if (!status.ok()) {
      FinishWith(WithPrefix(status, absl::StrCat("request ", number, ": ")));
      return;
    }
    absl::MutexLock lock(&mutex_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return !writing_; };
    mutex_.Await(absl::Condition(&idle));
    Serialize(response, &out_);
    writing_ = true;
    StartWrite(&out_);
  }
}

void SearchStreamReactor::FinishWith(const absl::Status& status) {
  {
    absl::MutexLock lock(&mutex_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return !writing_; };
    mutex_.Await(absl::Condition(&idle));
  }
  Finish(ToGrpcStatus(status));
}

}  // namespace rcknn::server
