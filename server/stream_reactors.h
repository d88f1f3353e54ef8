// Callback reactors of the two streaming methods whose requests arrive as raw bytes
// (see server/rcknn_service.h): they parse each message themselves, so a message that is not a
// valid request ends the call with INVALID_ARGUMENT instead of looking like the end of the
// stream.
//
//  - UploadPointsReactor validates and stages each chunk as it arrives (quick, on the gRPC
//    thread) and applies the whole stream when it ends cleanly.
//  - SearchStreamReactor answers requests one at a time, in order, on a thread of its own that
//    waits for the QueryPool (reactions must not block gRPC's threads). It reads ahead by at
//    most kReadAhead requests and keeps one write in flight.
#ifndef RCKNN_SERVER_STREAM_REACTORS_H_
#define RCKNN_SERVER_STREAM_REACTORS_H_

#include <cstdint>
#include <deque>
#include <thread>

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
  void OnDone() override;

 private:
  void Work();
  // Starts the next read unless one is pending, reading is over or the queue is full.
  void MaybeReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Waits for the write in flight, then finishes the call (the worker's last act).
  void FinishWith(const absl::Status& status);

  RcknnService* const service_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer in_;   // the read in flight
  grpc::ByteBuffer out_;  // the write in flight

  absl::Mutex mutex_;
  std::deque<v1::SearchRequest> queue_ ABSL_GUARDED_BY(mutex_);
  int64_t received_ ABSL_GUARDED_BY(mutex_) = 0;
  bool reading_ ABSL_GUARDED_BY(mutex_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mutex_) = false;
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mutex_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Status read_error_ ABSL_GUARDED_BY(mutex_);
  std::thread worker_;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_STREAM_REACTORS_H_
