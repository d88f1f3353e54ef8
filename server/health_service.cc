#include "server/health_service.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace rcknn::server {
namespace {

using grpc::health::v1::HealthCheckResponse;

// How often a Watch looks whether its client went away.
constexpr absl::Duration kWatchPoll = absl::Milliseconds(200);

}  // namespace

bool HealthService::Known(const std::string& service) {
  return service.empty() || service == "rcknn.v1.Rcknn";
}

void HealthService::SetServing(bool serving) {
  absl::MutexLock lock(&mutex_);
  if (!shutting_down_) serving_ = serving;
}

void HealthService::BeginShutdown() {
  absl::MutexLock lock(&mutex_);
  serving_ = false;
  shutting_down_ = true;
}

grpc::Status HealthService::Check(grpc::ServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  HealthCheckResponse* response) {
  if (!Known(request->service())) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("unknown service ", request->service()));
  }
  absl::MutexLock lock(&mutex_);
  response->set_status(serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING);
  return grpc::Status::OK;
}

grpc::Status HealthService::Watch(grpc::ServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::ServerWriter<HealthCheckResponse>* writer) {
  HealthCheckResponse response;
  if (!Known(request->service())) {
    response.set_status(HealthCheckResponse::SERVICE_UNKNOWN);
    writer->Write(response);
  }
  bool first = true;
  bool reported = false;
  for (;;) {
    bool serving;
    bool ending;
    {
      absl::MutexLock lock(&mutex_);
      auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return first || serving_ != reported || shutting_down_;
      };
      mutex_.AwaitWithTimeout(absl::Condition(&changed), kWatchPoll);
      serving = serving_;
      ending = shutting_down_;
    }
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    if (Known(request->service()) && (first || serving != reported)) {
      response.set_status(serving ? HealthCheckResponse::SERVING
                                  : HealthCheckResponse::NOT_SERVING);
      if (!writer->Write(response)) return grpc::Status(grpc::StatusCode::CANCELLED, "gone");
      reported = serving;
      first = false;
    }
    if (ending) return grpc::Status::OK;
  }
}

}  // namespace rcknn::server
