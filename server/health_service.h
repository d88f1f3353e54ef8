// grpc.health.v1.Health for rcknn-server. The server's overall status ("") and that of
// "rcknn.v1.Rcknn" are one flag: SERVING while the server runs, NOT_SERVING from the start of a
// shutdown. Watch streams report every change and end once the shutdown begins (after sending
// NOT_SERVING), so that they do not hold a graceful shutdown for its whole grace period.
#ifndef RCKNN_SERVER_HEALTH_SERVICE_H_
#define RCKNN_SERVER_HEALTH_SERVICE_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace rcknn::server {

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  void SetServing(bool serving);
  // NOT_SERVING for good; Watch streams end.
  void BeginShutdown();

  grpc::Status Check(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::health::v1::HealthCheckResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

 private:
  static bool Known(const std::string& service);

  absl::Mutex mutex_;
  bool serving_ ABSL_GUARDED_BY(mutex_) = false;
  bool shutting_down_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_HEALTH_SERVICE_H_
