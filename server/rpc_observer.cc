#include "server/rpc_observer.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace rcknn::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

class RpcObserver : public grpc::experimental::Interceptor {
 public:
  RpcObserver(const char* method, const RpcCallback* callback)
      : method_(method == nullptr ? "" : method), callback_(callback), start_(absl::Now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status status = methods->GetSendStatus();
      // gRPC answers a request that does not parse with INTERNAL and no message; it is the
      // client's mistake, and says so.
      if (status.error_code() == grpc::StatusCode::INTERNAL && status.error_message().empty()) {
        status =
            grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                         absl::StrCat("request: the message is not a valid request of ", method_));
        methods->ModifySendStatus(status);
      }
      if (*callback_) (*callback_)(method_, status, absl::Now() - start_);
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  const RpcCallback* const callback_;
  const absl::Time start_;
};

}  // namespace

grpc::experimental::Interceptor* RpcObserverFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new RpcObserver(info->method(), &callback_);
}

}  // namespace rcknn::server
