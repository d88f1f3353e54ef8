// grpc.reflection.v1.ServerReflection, served from the generated descriptor pool. gRPC 1.51's
// reflection plugin serves only grpc.reflection.v1alpha; clients that try v1 first (ghz,
// grpcurl, buf curl) would otherwise get UNIMPLEMENTED, counted as an error on every start. The
// answers are those of the v1alpha service: a file comes with every file it imports, each file
// at most once per stream; unknown names get an ErrorResponse with NOT_FOUND.
#ifndef RCKNN_SERVER_REFLECTION_V1_SERVICE_H_
#define RCKNN_SERVER_REFLECTION_V1_SERVICE_H_

#include <string>
#include <vector>

#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace rcknn::server {

class ReflectionV1Service final : public grpc::reflection::v1::ServerReflection::CallbackService {
 public:
  // `services`: the fully qualified names ListServices reports (the server's services). Their
  // descriptors, and every other file, are looked up in the generated pool.
  explicit ReflectionV1Service(std::vector<std::string> services);

  grpc::ServerBidiReactor<grpc::reflection::v1::ServerReflectionRequest,
                          grpc::reflection::v1::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* context) override;

 private:
  const std::vector<std::string> services_;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_REFLECTION_V1_SERVICE_H_
