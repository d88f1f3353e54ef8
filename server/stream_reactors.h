// Callback reactors of the two streaming methods whose requests arrive as raw bytes
// (see server/rcknn_service.h): they parse each message themselves, so a message that is not a
// valid request ends the call with INVALID_ARGUMENT instead of looking like the end of the
// stream.
//
//  - UploadPointsReactor validates and stages each chunk as it arrives (quick, on the gRPC
//    thread) and applies the whole stream when it ends cleanly.
//  - SearchStreamReactor answers requests one at a time, in order: each is started on the
//    QueryPool and the pool's callback writes its answer and starts the next. No thread waits:
//    every step is a reaction or a pool callback. It reads ahead by at most kReadAhead
//    requests and keeps at most one search and one write in flight (the next search runs while
//    the previous answer is written). A client cancel cancels the search in flight.
#ifndef RCKNN_SERVER_STREAM_REACTORS_H_
#define RCKNN_SERVER_STREAM_REACTORS_H_

#include <cstdint>
#include <deque>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/server_callback.h"
#include "rcknn/v1/rcknn.pb.h"
#include "server/rcknn_service.h"

namespace rcknn::server {

class UploadPointsReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  UploadPointsReactor(RcknnService* service, grpc::CallbackServerContext* context,
                      grpc::ByteBuffer* response);

  void OnReadDone(bool ok) override;
  void OnDone() override { delete this; }

 private:
  void FinishWith(const absl::Status& status);

  RcknnService* const service_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_;
  grpc::ByteBuffer chunk_;
  UploadState state_;
};

class SearchStreamReactor final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  static constexpr int kReadAhead = 2;

  SearchStreamReactor(RcknnService* service, grpc::CallbackServerContext* context);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override { delete this; }

 private:
  // The pool's callback for the search in flight.
  void SearchDone(absl::Status status);
  // Does whatever can be done now: start a write, a search or a read, or finish the call.
  // Starting a search releases the lock around the service call.
  void ProgressLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  RcknnService* const service_;
  grpc::CallbackServerContext* const context_;
  const absl::Time deadline_;
  grpc::ByteBuffer in_;   // the read in flight
  grpc::ByteBuffer out_;  // the write in flight

  absl::Mutex mutex_;
  std::deque<v1::SearchRequest> queue_ ABSL_GUARDED_BY(mutex_);  // read, not started
  int64_t received_ ABSL_GUARDED_BY(mutex_) = 0;
  int64_t started_ ABSL_GUARDED_BY(mutex_) = 0;
  bool reading_ ABSL_GUARDED_BY(mutex_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mutex_) = false;
  // A search is being handed to the service (the lock is released meanwhile) or runs.
  bool starting_ ABSL_GUARDED_BY(mutex_) = false;
  bool searching_ ABSL_GUARDED_BY(mutex_) = false;
  // The search in flight: its request and answer, and its cancel handle.
  std::unique_ptr<v1::SearchRequest> request_ ABSL_GUARDED_BY(mutex_);
  std::unique_ptr<v1::SearchResponse> response_ ABSL_GUARDED_BY(mutex_);
  QueryPool::CancelHandle handle_ ABSL_GUARDED_BY(mutex_);
  // An answer waiting for the write in flight.
  std::unique_ptr<grpc::ByteBuffer> answered_ ABSL_GUARDED_BY(mutex_);
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;  // by the client, or a write failed
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Status read_error_ ABSL_GUARDED_BY(mutex_);
  absl::Status error_ ABSL_GUARDED_BY(mutex_);  // the first failed search ends the stream
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_STREAM_REACTORS_H_
