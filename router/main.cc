// rcknn-router: flags -> RouterOptions -> RouterServer; SIGTERM / SIGINT shut it down gracefully.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "core/flags_usage.h"
#include "absl/time/time.h"
#include "router/router_server.h"
#include "server/logging.h"

namespace {
const rcknn::router::RouterOptions kDefaults;
}  // namespace

ABSL_FLAG(std::string, listen, kDefaults.listen_address,
          "host:port to serve gRPC (rcknn.v1.Rcknn) on; port 0: any free port");
ABSL_FLAG(std::string, metrics_listen, kDefaults.metrics_listen_address,
          "host:port serving Prometheus metrics at /metrics; empty: no metrics endpoint");
ABSL_FLAG(std::string, shards, "",
          "the rcknn-server shards (or --shards_dns): shards separated by ',', the replicas of one "
          "shard by '|' "
          "(\"a:50051,b:50051|c:50051\" is two shards, the second with two replicas); host names "
          "are resolved by gRPC's DNS resolver again whenever a connection fails");
ABSL_FLAG(std::string, shards_dns, "",
          "instead of --shards: host:port of a DNS name whose addresses are the shard pods (a "
          "StatefulSet's headless Service, named like the StatefulSet); pod <set>-<o>.<host> is "
          "replica o % --shard_replicas of shard o / --shard_replicas; resolved again every "
          "--shards_dns_interval, new pods add shards for new indexes");
ABSL_FLAG(int64_t, shard_replicas, kDefaults.shard_replicas,
          "with --shards_dns: pods per shard (consecutive ordinals)");
ABSL_FLAG(absl::Duration, shards_dns_interval, kDefaults.shards_dns_interval,
          "with --shards_dns: how often the name is resolved again");
ABSL_FLAG(int64_t, min_shards, kDefaults.min_shards,
          "CreateIndex answers UNAVAILABLE until this many shards are known (with --shards_dns, "
          "so that an index is not created over the first pods to appear)");
ABSL_FLAG(int64_t, shard_points, kDefaults.shard_points,
          "global ids per shard of a new index that does not declare "
          "CreateIndexRequest.expected_num_points: the uploads fill the shards in order, this "
          "many each, the last shard taking the rest");
ABSL_FLAG(int64_t, max_message_bytes, kDefaults.max_message_bytes,
          "largest gRPC message received or sent, in bytes (clients and shards)");
ABSL_FLAG(absl::Duration, shutdown_grace, kDefaults.shutdown_grace,
          "on SIGTERM/SIGINT, how long in-flight calls may run before they are cancelled");
ABSL_FLAG(std::string, tls_cert, "", "as rcknn-server --tls_cert, for the router's own port");
ABSL_FLAG(std::string, tls_key, "", "as rcknn-server --tls_key");
ABSL_FLAG(std::string, tls_client_ca, "", "as rcknn-server --tls_client_ca");
ABSL_FLAG(std::string, auth_token_file, "", "as rcknn-server --auth_token_file");
ABSL_FLAG(std::string, shard_tls_ca, "",
          "PEM CA certificates: call the shards over TLS, trusting these; empty: plaintext");
ABSL_FLAG(std::string, shard_token_file, "",
          "file holding the bearer token sent to the shards (a full token: the router creates, "
          "uploads and reads points); needs --shard_tls_ca");
ABSL_FLAG(std::string, log_level, "info", "debug | info | warning | error");

int main(int argc, char** argv) {
  rcknn::core::SetUpFlagsUsage(
      "rcknn-router", "router/main.cc",
      "one rcknn.v1.Rcknn index spread over rcknn-server shards, with the answers of one "
      "server.\nUsage: rcknn-router --shards=a:50051,b:50051|c:50051 [--listen=127.0.0.1:50050] "
      "[--metrics_listen=127.0.0.1:9463] [flags]");
  absl::ParseCommandLine(argc, argv);
  rcknn::server::LogLevel level;
  if (!rcknn::server::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::fprintf(stderr, "--log_level must be debug, info, warning or error\n");
    return 2;
  }
  rcknn::server::SetLogLevel(level);
  rcknn::router::RouterOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.metrics_listen_address = absl::GetFlag(FLAGS_metrics_listen);
  options.shards = absl::GetFlag(FLAGS_shards);
  options.shards_dns = absl::GetFlag(FLAGS_shards_dns);
  options.shard_replicas = absl::GetFlag(FLAGS_shard_replicas);
  options.shards_dns_interval = absl::GetFlag(FLAGS_shards_dns_interval);
  options.min_shards = absl::GetFlag(FLAGS_min_shards);
  options.shard_points = absl::GetFlag(FLAGS_shard_points);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  options.shard_tls_ca_file = absl::GetFlag(FLAGS_shard_tls_ca);
  options.shard_token_file = absl::GetFlag(FLAGS_shard_token_file);

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto router = rcknn::router::RouterServer::Start(options);
  if (!router.ok()) {
    std::fprintf(stderr, "rcknn-router: %s\n", router.status().ToString().c_str());
    return 1;
  }
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  RCKNN_LOG(kInfo, "received ", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  (*router)->Shutdown(options.shutdown_grace);
  return 0;
}
