#include "server/rcknn_server.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "core/array_cache.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/listen_probe.h"
#include "server/logging.h"
#include "server/rpc_observer.h"
#include "server/token_auth.h"
#include "tbb/info.h"

namespace rcknn::server {
namespace {

// The server whose budget counts core::ArrayCache::Default()'s kept arrays (the last created
// with ServerOptions::keep_freed_memory), so that only it detaches the cache when it goes.
std::atomic<RcknnServer*> g_array_cache_owner{nullptr};

absl::Status ValidateOptions(const ServerOptions& options) {
  auto positive = [](absl::string_view flag, int64_t value) {
    return value >= 1
               ? absl::OkStatus()
               : absl::InvalidArgumentError(absl::StrCat("--", flag, " must be >= 1, got ", value));
  };
  if (options.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads must be >= 0 (0: every core), got ", options.threads));
  }
  if (options.max_message_bytes < 1024 ||
      options.max_message_bytes > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("--max_message_bytes must be in [1024, ",
                                                   std::numeric_limits<int>::max(), "], got ",
                                                   options.max_message_bytes));
  }
  for (auto [flag, value] :
       {std::pair<absl::string_view, int64_t>{"max_points_per_index", options.max_points_per_index},
        {"max_indexes", options.max_indexes},
        {"slice_queries", options.slice_queries},
        {"max_queries_per_search", options.max_queries_per_search},
        {"io_threads", options.io_threads}}) {
    if (absl::Status status = positive(flag, value); !status.ok()) return status;
  }
  if (options.max_queued_queries < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_queued_queries must be >= 0 (0: 2 slices per thread), got ",
        options.max_queued_queries));
  }
  if (options.max_memory_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_memory_bytes must be >= 0 (0: 80% of physical memory), got ",
        options.max_memory_bytes));
  }
  if (options.shutdown_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--shutdown_grace must not be negative");
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (!options.tls_client_ca_file.empty() && options.tls_cert_file.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  // Tokens sent in the clear could be replayed by anyone on the path.
  if (!options.auth_token_file.empty() && options.tls_cert_file.empty()) {
    return absl::InvalidArgumentError("--auth_token_file needs --tls_cert and --tls_key");
  }
  return absl::OkStatus();
}

// The whole of a (PEM) file named by `flag`; NOT_FOUND if unreadable, INVALID_ARGUMENT if empty.
absl::StatusOr<std::string> ReadPemFile(absl::string_view flag, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(
        absl::StrCat("--", flag, " ", path, ": cannot read: ", std::strerror(errno)));
  }
  std::stringstream text;
  text << file.rdbuf();
  if (text.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", path, ": empty file"));
  }
  return text.str();
}

}  // namespace

// TLS (and mutual TLS) or plaintext credentials, with the token check when a token file is set.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(
    const ServerOptions& options, ServerMetrics* metrics,
    std::shared_ptr<TokenAuthProcessor>* auth) {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (options.tls_cert_file.empty()) {
    credentials = grpc::InsecureServerCredentials();
  } else {
    absl::StatusOr<std::string> cert = ReadPemFile("tls_cert", options.tls_cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemFile("tls_key", options.tls_key_file);
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    if (!options.tls_client_ca_file.empty()) {
      absl::StatusOr<std::string> ca = ReadPemFile("tls_client_ca", options.tls_client_ca_file);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *std::move(ca);
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    ssl.pem_key_cert_pairs.push_back({*std::move(key), *std::move(cert)});
    credentials = grpc::SslServerCredentials(ssl);
  }
  if (!options.auth_token_file.empty()) {
    absl::StatusOr<std::vector<AuthToken>> tokens = ReadTokenFile(options.auth_token_file);
    if (!tokens.ok()) return tokens.status();
    // Refused calls never reach the RPC observer: counted here, with no handling time.
    *auth = std::make_shared<TokenAuthProcessor>(
        *std::move(tokens), [metrics](absl::string_view method, const grpc::Status& status) {
          RCKNN_LOG(kDebug, method, " -> ", status.error_code(), ": ", status.error_message());
          const auto [service, name] = SplitGrpcMethod(method);
          metrics->RecordRpc(service, name, static_cast<int>(status.error_code()), 0.0);
        });
    credentials->SetAuthMetadataProcessor(*auth);
  }
  return credentials;
}

// Server reflection in both versions: gRPC's plugin serves v1alpha, ReflectionV1Service v1.
constexpr const char* kReflectionServices[] = {"grpc.reflection.v1alpha.ServerReflection",
                                               "grpc.reflection.v1.ServerReflection"};

// Every method of the services the server registers, named ahead of their first call.
void InitializeRpcMethods(ServerMetrics& metrics) {
  for (const char* service : {"rcknn.v1.Rcknn", "grpc.health.v1.Health"}) {
    const google::protobuf::ServiceDescriptor* descriptor =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
    if (descriptor == nullptr) continue;
    for (int i = 0; i < descriptor->method_count(); ++i) {
      metrics.InitializeRpcMethod(service, descriptor->method(i)->name());
    }
  }
  for (const char* service : kReflectionServices) {
    metrics.InitializeRpcMethod(service, "ServerReflectionInfo");
  }
}

namespace {

// "host:port" -> "host:<port>".
std::string WithPort(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  return absl::StrCat(host, ":", port);
}

}  // namespace

int64_t UsableMemoryBytes(const std::string& cgroup_root, const std::string& proc_self_cgroup) {
  const int64_t pages = ::sysconf(_SC_PHYS_PAGES);
  const int64_t page_bytes = ::sysconf(_SC_PAGESIZE);
  int64_t usable = pages > 0 && page_bytes > 0 ? pages * page_bytes
                                               : std::numeric_limits<int64_t>::max();
  // Lowers `usable` to the limit in `file` if it holds a number ("max", or a huge number, when
  // there is no limit).
  auto apply = [&usable](const std::string& file) {
    std::ifstream in(file);
    std::string text;
    int64_t limit = 0;
    if (in >> text && absl::SimpleAtoi(text, &limit) && limit > 0) usable = std::min(usable, limit);
  };
  // This process's cgroup ("0::/system.slice/x.service" for v2, "N:memory:/path" for v1; "/" in
  // a container with its own cgroup namespace), and every ancestor up to the root: a limit on an
  // enclosing slice binds too.
  std::ifstream lines(proc_self_cgroup);
  std::string line;
  while (std::getline(lines, line)) {
    const std::vector<std::string> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    const bool v2 = fields[0] == "0" && fields[1].empty();
    const bool v1 = absl::StrContains(absl::StrCat(",", fields[1], ","), ",memory,");
    if (!v2 && !v1) continue;
    std::string path = fields[2];
    for (;;) {
      if (v2) apply(absl::StrCat(cgroup_root, path == "/" ? "" : path, "/memory.max"));
      if (v1) apply(absl::StrCat(cgroup_root, "/memory", path == "/" ? "" : path,
                                 "/memory.limit_in_bytes"));
      if (path.empty() || path == "/") break;
      const size_t slash = path.rfind('/');
      path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
    }
  }
  return usable;
}

int64_t ResolveMemoryLimit(int64_t requested, const std::string& cgroup_root,
                           const std::string& proc_self_cgroup) {
  if (requested > 0) return requested;
  return static_cast<int64_t>(
      0.8 * static_cast<double>(UsableMemoryBytes(cgroup_root, proc_self_cgroup)));
}

int ResolveThreads(int requested) {
  return requested > 0 ? requested : std::max(1, tbb::info::default_concurrency());
}

absl::StatusOr<std::unique_ptr<RcknnServer>> RcknnServer::Start(const ServerOptions& options) {
  if (absl::Status status = ValidateOptions(options); !status.ok()) return status;
  std::unique_ptr<RcknnServer> server(new RcknnServer());
  server->options_ = options;
  server->threads_ = ResolveThreads(options.threads);
  server->metrics_ = std::make_unique<ServerMetrics>();
  ServerMetrics* metrics = server->metrics_.get();
  InitializeRpcMethods(*metrics);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeCredentials(options, metrics, &server->auth_);
  if (!credentials.ok()) return credentials.status();
  if (!options.metrics_listen_address.empty()) {
    try {
      server->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen_address);
    } catch (const std::exception& e) {
      // prometheus-cpp says only "null context ... Possible problem binding to port".
      const std::string cause = ProbeListenAddress(options.metrics_listen_address);
      return absl::UnavailableError(absl::StrCat(
          "cannot serve metrics on ", options.metrics_listen_address, " (--metrics_listen): ",
          cause.empty() ? e.what() : cause));
    }
    server->exposer_->RegisterCollectable(metrics->registry());
    const std::vector<int> ports = server->exposer_->GetListeningPorts();
    server->metrics_port_ = ports.empty() ? 0 : ports.front();
  }
  server->budget_ = std::make_unique<MemoryBudget>(ResolveMemoryLimit(options.max_memory_bytes));
  if (options.keep_freed_memory > absl::ZeroDuration()) {
    core::ArrayCache& cache = core::ArrayCache::Default();
    absl::StatusOr<MemoryReservation> kept = server->budget_->Reserve(0, "kept memory");
    if (!kept.ok()) return kept.status();
    server->kept_memory_ = *std::move(kept);
    MemoryReservation* reservation = &server->kept_memory_;
    cache.SetObserver([reservation](int64_t bytes) { reservation->Resize(bytes); });
    cache.Configure(server->budget_->limit(), options.keep_freed_memory);
    server->budget_->SetReclaimer([] { core::ArrayCache::Default().Release(); });
    g_array_cache_owner.store(server.get());
  }
  if (!options.data_dir.empty()) {
    absl::StatusOr<std::unique_ptr<IndexStore>> store =
        IndexStore::Open(options.data_dir, options.testonly_pause_before_commit);
    if (!store.ok()) return store.status();
    server->store_ = *std::move(store);
  }
  server->pool_ = std::make_unique<QueryPool>(server->threads_, options.slice_queries,
                                              options.max_queued_queries);
  metrics->SetPoolThreads(server->pool_->threads());
  server->registry_ = std::make_unique<IndexRegistry>(options.max_indexes);
  server->service_ = std::make_unique<RcknnService>(options, server->registry_.get(),
                                                    server->pool_.get(), metrics,
                                                    server->budget_.get(), server->store_.get());
  const int64_t loaded = server->service_->LoadStoredIndexes();
  if (server->store_ != nullptr) {
    RCKNN_LOG(kInfo, "--data_dir ", options.data_dir, ": ", loaded, " indexes found");
  }

  server->health_ = std::make_unique<HealthService>();
  grpc::EnableDefaultHealthCheckService(false);  // ours ends its Watch streams at shutdown
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen_address, *credentials, &port);
  // gRPC sets SO_REUSEPORT by default: a second server on a taken port would then share it and
  // get half of the calls. Refuse the port instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(server->service_.get());
  builder.RegisterService(server->health_.get());
  server->reflection_v1_ = std::make_unique<ReflectionV1Service>(std::vector<std::string>{
      "rcknn.v1.Rcknn", "grpc.health.v1.Health", kReflectionServices[0], kReflectionServices[1]});
  builder.RegisterService(server->reflection_v1_.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> observers;
  observers.push_back(std::make_unique<RpcObserverFactory>(
      [metrics](absl::string_view method, const grpc::Status& status, absl::Duration latency) {
        RCKNN_LOG(kDebug, method, " -> ", status.error_code(), " in ",
                  absl::ToDoubleMilliseconds(latency), " ms",
                  status.ok() ? "" : absl::StrCat(": ", status.error_message()));
        const auto [service, name] = SplitGrpcMethod(method);
        metrics->RecordRpc(service, name, static_cast<int>(status.error_code()),
                           absl::ToDoubleSeconds(latency));
      }));
  builder.experimental().SetInterceptorCreators(std::move(observers));
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || port == 0) {
    // gRPC says only that the port could not be added. A probe bind names a taken port; failing
    // that, with TLS the usual cause is a certificate or key gRPC could not use.
    const std::string cause = ProbeListenAddress(options.listen_address);
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen_address, " (--listen)",
        cause.empty() ? "" : absl::StrCat(": ", cause),
        !cause.empty() || options.tls_cert_file.empty()
            ? ""
            : "; or gRPC could not use the TLS certificate and key (--tls_cert, --tls_key: are "
              "they PEM, and does the key match the certificate?)"));
  }
  server->port_ = port;
  server->address_ = WithPort(options.listen_address, port);
  server->health_->SetServing(true);
  // The metrics line comes first: tools wait for "listening on" and then read both.
  if (server->exposer_ != nullptr) {
    RCKNN_LOG(kInfo, "metrics at http://",
              WithPort(options.metrics_listen_address, server->metrics_port_), "/metrics");
  }
  RCKNN_LOG(kInfo, "rcknn-server listening on ", server->address_, " with ",
            server->pool_->threads(), " query threads",
            options.tls_cert_file.empty()        ? ", plaintext"
            : options.tls_client_ca_file.empty() ? ", TLS"
                                                 : ", mutual TLS",
            options.auth_token_file.empty() ? "" : ", bearer tokens required",
            ", memory limit ", FormatBytes(server->budget_->limit()),
            options.data_dir.empty() ? ", indexes in memory only (no --data_dir)" : "");
  return server;
}

absl::Status RcknnServer::ReloadAuthTokens() {
  if (auth_ == nullptr) {
    return absl::FailedPreconditionError("no --auth_token_file: there are no tokens to reload");
  }
  absl::StatusOr<std::vector<AuthToken>> tokens = ReadTokenFile(options_.auth_token_file);
  if (!tokens.ok()) return tokens.status();
  const size_t count = tokens->size();
  auth_->SetTokens(*std::move(tokens));
  RCKNN_LOG(kInfo, "reloaded ", count, " tokens from ", options_.auth_token_file);
  return absl::OkStatus();
}

int64_t RcknnServer::searches_in_flight() const {
  // The pool lives until Shutdown, which waits for every search.
  absl::MutexLock lock(&shutdown_mutex_);
  return pool_ == nullptr ? 0 : pool_->jobs_in_flight();
}

int64_t RcknnServer::queued_queries() const {
  absl::MutexLock lock(&shutdown_mutex_);
  return pool_ == nullptr ? 0 : pool_->queued_queries();
}

int64_t RcknnServer::open_watches() const {
  return service_ == nullptr ? 0 : service_->index_service().open_watches();
}

RcknnServer::~RcknnServer() {
  Shutdown(absl::ZeroDuration());
  // The indexes go after this body, their arrays unmapped rather than kept for a server that
  // is gone.
  RcknnServer* self = this;
  if (g_array_cache_owner.compare_exchange_strong(self, nullptr)) {
    core::ArrayCache& cache = core::ArrayCache::Default();
    cache.Configure(0, absl::ZeroDuration());
    cache.SetObserver(nullptr);
  }
}

void RcknnServer::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&shutdown_mutex_);
  if (shut_down_) return;
  shut_down_ = true;
  RCKNN_LOG(kInfo, "shutting down (grace ", absl::FormatDuration(grace), ")");
  if (server_ != nullptr) {
    health_->BeginShutdown();
    service_->BeginShutdown();
    // Builds are cancelled at the grace's end, not once the cancelled calls have returned:
    // gRPC's Shutdown waits for them, and a build must not finish (and publish) meanwhile.
    absl::Notification calls_done;
    std::thread cancel_at_deadline([this, grace, &calls_done] {
      if (!calls_done.WaitForNotificationWithTimeout(grace)) registry_->CancelBuilds();
    });
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    server_->Wait();
    calls_done.Notify();
    cancel_at_deadline.join();
  }
  if (registry_ != nullptr) registry_->CancelBuilds();  // null when Start() failed early
  pool_.reset();  // waits for cancelled builds to return
  RCKNN_LOG(kInfo, "shut down");
}

}  // namespace rcknn::server
