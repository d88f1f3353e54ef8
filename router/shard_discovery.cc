#include "router/shard_discovery.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "server/logging.h"

namespace rcknn::router {

absl::StatusOr<std::vector<std::string>> ResolveHost(const std::string& host) {
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int error = getaddrinfo(host.c_str(), nullptr, &hints, &found);
  if (error != 0) {
    const absl::StatusCode code = error == EAI_NONAME ? absl::StatusCode::kNotFound
                                                      : absl::StatusCode::kUnavailable;
    return absl::Status(code, absl::StrCat("cannot resolve ", host, ": ", gai_strerror(error)));
  }
  std::vector<std::string> out;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[NI_MAXHOST];
    if (getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof(text), nullptr, 0,
                    NI_NUMERICHOST) == 0) {
      out.emplace_back(text);
    }
  }
  freeaddrinfo(found);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  if (out.empty()) return absl::NotFoundError(absl::StrCat(host, " has no address"));
  return out;
}

absl::StatusOr<std::unique_ptr<ShardDiscovery>> ShardDiscovery::Create(
    const ShardDiscoveryOptions& options, ShardCluster* cluster, HostResolver resolver) {
  const size_t colon = options.target.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(options.target.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--shards_dns: \"", options.target, "\" is not host:port (the shards' headless Service)"));
  }
  if (options.replicas < 1) {
    return absl::InvalidArgumentError("--shard_replicas must be >= 1");
  }
  if (options.interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--shards_dns_interval must be > 0");
  }
  return std::unique_ptr<ShardDiscovery>(
      new ShardDiscovery(options, cluster, std::move(resolver), options.target.substr(0, colon),
                         options.target.substr(colon + 1)));
}

ShardDiscovery::ShardDiscovery(const ShardDiscoveryOptions& options, ShardCluster* cluster,
                               HostResolver resolver, std::string host, std::string port)
    : options_(options),
      cluster_(cluster),
      resolver_(std::move(resolver)),
      host_(std::move(host)),
      port_(std::move(port)),
      set_(host_.substr(0, host_.find('.'))) {}

ShardDiscovery::~ShardDiscovery() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

std::string ShardDiscovery::PodAddress(int64_t ordinal) const {
  return absl::StrCat(set_, "-", ordinal, ".", host_, ":", port_);
}

absl::Status ShardDiscovery::Refresh() {
  absl::MutexLock lock(&mutex_);
  absl::StatusOr<std::vector<std::string>> addresses = resolver_(host_);
  if (!addresses.ok()) return addresses.status();
  const int64_t pods = static_cast<int64_t>(addresses->size());
  const int64_t shards = std::min(pods / options_.replicas, ShardCluster::kMaxShards);
  std::vector<std::vector<std::string>> added;
  for (int64_t s = cluster_->size(); s < shards; ++s) {
    std::vector<std::string> replicas;
    for (int64_t r = 0; r < options_.replicas; ++r) {
      replicas.push_back(PodAddress(s * options_.replicas + r));
    }
    added.push_back(std::move(replicas));
  }
  if (added.empty()) return absl::OkStatus();
  RETURN_IF_ERROR(cluster_->AddShards(added));
  RCKNN_LOG(kInfo, host_, " has ", pods, " pods: ", cluster_->size(), " shards of ",
            options_.replicas, " replicas");
  return absl::OkStatus();
}

void ShardDiscovery::Start() {
  thread_ = std::thread([this] {
    while (!stop_.WaitForNotificationWithTimeout(options_.interval)) {
      if (absl::Status status = Refresh(); !status.ok()) {
        RCKNN_LOG(kWarning, "--shards_dns: ", status.message(), "; keeping ", cluster_->size(),
                  " shards");
      }
    }
  });
}

}  // namespace rcknn::router
