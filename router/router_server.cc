#include "router/router_server.h"

#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/server_builder.h"
#include "server/logging.h"
#include "server/rcknn_server.h"
#include "server/rpc_observer.h"
#include "server/server_options.h"

namespace rcknn::router {
namespace {

absl::StatusOr<std::string> ReadFile(absl::string_view flag, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("--", flag, " ", path, ": cannot read"));
  std::stringstream text;
  text << file.rdbuf();
  if (text.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", path, ": empty file"));
  }
  return text.str();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ShardCredentials(
    const RouterOptions& options) {
  if (options.shard_tls_ca_file.empty()) {
    if (!options.shard_token_file.empty()) {
      return absl::InvalidArgumentError("--shard_token_file needs --shard_tls_ca");
    }
    return grpc::InsecureChannelCredentials();
  }
  absl::StatusOr<std::string> ca = ReadFile("shard_tls_ca", options.shard_tls_ca_file);
  if (!ca.ok()) return ca.status();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = *std::move(ca);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(ssl);
  if (!options.shard_token_file.empty()) {
    absl::StatusOr<std::string> token = ReadFile("shard_token_file", options.shard_token_file);
    if (!token.ok()) return token.status();
    credentials = grpc::CompositeChannelCredentials(
        credentials, grpc::AccessTokenCredentials(std::string(absl::StripAsciiWhitespace(*token))));
  }
  return credentials;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RouterServer>> RouterServer::Start(const RouterOptions& options) {
  if (options.shard_points < 1 || options.shard_points > kMaxExpectedPoints) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard_points must be in [1, ", kMaxExpectedPoints, "]"));
  }
  if (options.max_message_bytes < 4096 || options.max_message_bytes > INT32_MAX) {
    return absl::InvalidArgumentError("--max_message_bytes must be in [4096, 2^31 - 1]");
  }
  if (options.shards.empty() == options.shards_dns.empty()) {
    return absl::InvalidArgumentError(
        "give the shards with exactly one of --shards (a static list) and --shards_dns (a DNS "
        "name: the shards' headless Service)");
  }
  if (options.min_shards < 1) return absl::InvalidArgumentError("--min_shards must be >= 1");
  absl::StatusOr<std::vector<std::vector<std::string>>> shards =
      options.shards.empty() ? std::vector<std::vector<std::string>>()
                             : ParseShardList(options.shards);
  if (!shards.ok()) return shards.status();
  server::ServerOptions transport;
  transport.tls_cert_file = options.tls_cert_file;
  transport.tls_key_file = options.tls_key_file;
  transport.tls_client_ca_file = options.tls_client_ca_file;
  transport.auth_token_file = options.auth_token_file;
  if (transport.tls_cert_file.empty() != transport.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (!transport.tls_client_ca_file.empty() && transport.tls_cert_file.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  if (!transport.auth_token_file.empty() && transport.tls_cert_file.empty()) {
    return absl::InvalidArgumentError("--auth_token_file needs --tls_cert and --tls_key");
  }

  std::unique_ptr<RouterServer> router(new RouterServer());
  router->metrics_ = std::make_unique<server::ServerMetrics>();
  server::ServerMetrics* metrics = router->metrics_.get();
  server::InitializeRpcMethods(*metrics);
  router->router_metrics_ = std::make_unique<RouterMetrics>(metrics->registry());
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      server::MakeCredentials(transport, metrics, &router->auth_);
  if (!credentials.ok()) return credentials.status();
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> shard_credentials =
      ShardCredentials(options);
  if (!shard_credentials.ok()) return shard_credentials.status();
  if (!options.metrics_listen_address.empty()) {
    try {
      router->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen_address);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("cannot serve metrics on ",
                                                 options.metrics_listen_address,
                                                 " (--metrics_listen): ", e.what()));
    }
    router->exposer_->RegisterCollectable(metrics->registry());
    const std::vector<int> ports = router->exposer_->GetListeningPorts();
    router->metrics_port_ = ports.empty() ? 0 : ports.front();
  }
  RouterMetrics* router_metrics = router->router_metrics_.get();
  router->cluster_ = std::make_unique<ShardCluster>(
      *shards, *shard_credentials, options.max_message_bytes,
      [router_metrics](int64_t shard, absl::string_view method, grpc::StatusCode code,
                       double seconds) {
        router_metrics->RecordShardCall(shard, method, static_cast<int>(code), seconds);
      });
  if (!options.shards_dns.empty()) {
    ShardDiscoveryOptions discovery;
    discovery.target = options.shards_dns;
    discovery.replicas = options.shard_replicas;
    discovery.interval = options.shards_dns_interval;
    absl::StatusOr<std::unique_ptr<ShardDiscovery>> created =
        ShardDiscovery::Create(discovery, router->cluster_.get(), ResolveHost);
    if (!created.ok()) return created.status();
    router->discovery_ = *std::move(created);
    // The shard pods may not exist yet: the refresh thread finds them later.
    if (absl::Status status = router->discovery_->Refresh(); !status.ok()) {
      RCKNN_LOG(kWarning, "--shards_dns: ", status.message(), "; retrying every ",
                absl::FormatDuration(discovery.interval));
    }
    router->discovery_->Start();
  }
  router->service_ = std::make_unique<RouterService>(router->cluster_.get(), options.shard_points,
                                                     options.min_shards);
  router->health_ = std::make_unique<server::HealthService>();
  grpc::EnableDefaultHealthCheckService(false);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen_address, *credentials, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(router->service_.get());
  builder.RegisterService(router->health_.get());
  router->reflection_v1_ = std::make_unique<server::ReflectionV1Service>(std::vector<std::string>{
      "rcknn.v1.Rcknn", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
      "grpc.reflection.v1.ServerReflection"});
  builder.RegisterService(router->reflection_v1_.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> observers;
  observers.push_back(std::make_unique<server::RpcObserverFactory>(
      [metrics](absl::string_view method, const grpc::Status& status, absl::Duration latency) {
        RCKNN_LOG(kDebug, method, " -> ", status.error_code(), " in ",
                  absl::ToDoubleMilliseconds(latency), " ms",
                  status.ok() ? "" : absl::StrCat(": ", status.error_message()));
        const auto [service, name] = server::SplitGrpcMethod(method);
        metrics->RecordRpc(service, name, static_cast<int>(status.error_code()),
                           absl::ToDoubleSeconds(latency));
      }));
  builder.experimental().SetInterceptorCreators(std::move(observers));
  router->server_ = builder.BuildAndStart();
  if (router->server_ == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen_address, " (--listen)"));
  }
  router->port_ = port;
  router->health_->SetServing(true);
  if (router->exposer_ != nullptr) {
    RCKNN_LOG(kInfo, "metrics at http://", options.metrics_listen_address.substr(
                                               0, options.metrics_listen_address.rfind(':')),
              ":", router->metrics_port_, "/metrics");
  }
  RCKNN_LOG(kInfo, "rcknn-router listening on ",
            options.listen_address.substr(0, options.listen_address.rfind(':')), ":", port,
            " over ", router->cluster_->size(), " shards");
  return router;
}

RouterServer::~RouterServer() { Shutdown(absl::ZeroDuration()); }

void RouterServer::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&shutdown_mutex_);
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ != nullptr) {
    health_->BeginShutdown();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    server_->Wait();
  }
}

}  // namespace rcknn::router
