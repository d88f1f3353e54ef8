// The one place every RPC passes through on its way out: a gRPC server interceptor that sees
// each call's method, final status code and latency, and hands them to the server's callback,
// which logs them (debug level) and records grpc_server_handled_total and
// grpc_server_handling_seconds (docs/design.md section 6). Calls that gRPC's core refuses before any
// handler runs (a request over the message size limit, a call refused by the token check of
// server/token_auth.h) do not pass through it.
//
// It also turns gRPC's answer to a request message that does not parse (INTERNAL with no
// message) into INVALID_ARGUMENT saying so.
#ifndef RCKNN_SERVER_RPC_OBSERVER_H_
#define RCKNN_SERVER_RPC_OBSERVER_H_

#include <functional>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/status.h"

namespace rcknn::server {

// Receives "/package.Service/Method", the status sent and the time since the call arrived.
// Called on a gRPC thread; must be thread-safe and quick.
using RpcCallback =
    std::function<void(absl::string_view method, const grpc::Status& status, absl::Duration)>;

class RpcObserverFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcObserverFactory(RpcCallback callback) : callback_(std::move(callback)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  const RpcCallback callback_;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_RPC_OBSERVER_H_
