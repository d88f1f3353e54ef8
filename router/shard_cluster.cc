#include "router/shard_cluster.h"

#include <algorithm>
#include <cassert>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace rcknn::router {
namespace {

// A replica that did not answer is tried last for this long.
constexpr absl::Duration kDownFor = absl::Seconds(1);

// Codes that say "this replica did not answer", as opposed to an answer about the request.
bool NoAnswer(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::UNKNOWN ||
         code == grpc::StatusCode::INTERNAL || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::ABORTED;
}

bool ParentDone(const grpc::ServerContextBase* parent) {
  if (parent == nullptr) return false;
  return parent->IsCancelled() || parent->deadline() <= std::chrono::system_clock::now();
}

}  // namespace

struct ShardCluster::Attempt {
  Call* call = nullptr;
  const grpc::ServerContextBase* parent = nullptr;
  std::string method;
  std::vector<int64_t> order;  // replicas to try, in order
  size_t tried = 0;            // index into `order` of the replica being tried
  std::unique_ptr<grpc::ClientContext> context;
  absl::Time start;
  std::vector<std::string> failures;  // "address: CODE: message" per replica tried
  std::vector<grpc::StatusCode> codes;
  bool all_no_answer = true;
  grpc::Status last;
  // Shared by the attempts of one Run.
  absl::Mutex* mutex = nullptr;
  int64_t* remaining = nullptr;
};

ShardCluster::ShardCluster(const std::vector<std::vector<std::string>>& shards,
                           std::shared_ptr<grpc::ChannelCredentials> credentials,
                           int64_t max_message_bytes, ShardCallObserver observer)
    : credentials_(std::move(credentials)),
      observer_(std::move(observer)),
      slots_(new std::unique_ptr<Shard>[kMaxShards]) {
  const int size = static_cast<int>(std::min<int64_t>(max_message_bytes, INT32_MAX));
  channel_args_.SetMaxReceiveMessageSize(size);
  channel_args_.SetMaxSendMessageSize(size);
  // A restarted shard is found again quickly.
  channel_args_.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  channel_args_.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  absl::Status added = AddShards(shards);
  assert(added.ok());  // callers parse --shards, which stays far below kMaxShards
  (void)added;
}

absl::Status ShardCluster::AddShards(const std::vector<std::vector<std::string>>& shards) {
  absl::MutexLock lock(&grow_mutex_);
  int64_t size = size_.load(std::memory_order_relaxed);
  if (size + static_cast<int64_t>(shards.size()) > kMaxShards) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a router serves at most ", kMaxShards, " shards"));
  }
  for (const std::vector<std::string>& replicas : shards) {
    auto shard = std::make_unique<Shard>();
    for (const std::string& address : replicas) {
      auto replica = std::make_unique<Replica>();
      replica->address = address;
      replica->channel = grpc::CreateCustomChannel(address, credentials_, channel_args_);
      replica->stub = v1::Rcknn::NewStub(replica->channel);
      shard->replicas.push_back(std::move(replica));
    }
    slots_[size] = std::move(shard);
    size_.store(++size, std::memory_order_release);
  }
  return absl::OkStatus();
}

std::string ShardCluster::Name(int64_t shard) const {
  std::vector<std::string> addresses;
  for (const auto& replica : slots_[shard]->replicas) addresses.push_back(replica->address);
  return absl::StrCat("shard ", shard, " (", absl::StrJoin(addresses, "|"), ")");
}

void ShardCluster::Run(std::vector<Call>& calls, const grpc::ServerContextBase* parent,
                       absl::string_view method) {
  absl::Mutex mutex;
  int64_t remaining = static_cast<int64_t>(calls.size());
  const int64_t now = absl::ToUnixNanos(absl::Now());
  for (Call& call : calls) {
    auto attempt = std::make_shared<Attempt>();
    attempt->call = &call;
    attempt->parent = parent;
    attempt->method = std::string(method);
    attempt->mutex = &mutex;
    attempt->remaining = &remaining;
    Shard& shard = *slots_[call.shard];
    const int64_t r = static_cast<int64_t>(shard.replicas.size());
    if (call.replica >= 0) {
      attempt->order = {call.replica};
    } else {
      const int64_t first = static_cast<int64_t>(shard.next.fetch_add(1) % r);
      std::vector<int64_t> up;
      std::vector<int64_t> down;
      for (int64_t i = 0; i < r; ++i) {
        const int64_t replica = (first + i) % r;
        (shard.replicas[replica]->down_until_nanos.load() > now ? down : up).push_back(replica);
      }
      attempt->order = up;
      attempt->order.insert(attempt->order.end(), down.begin(), down.end());
    }
    Start(std::move(attempt));
  }
  absl::MutexLock lock(&mutex);
  mutex.Await(absl::Condition(
      +[](int64_t* left) { return *left == 0; }, &remaining));
}

void ShardCluster::Start(std::shared_ptr<Attempt> attempt) {
  Replica& replica = *slots_[attempt->call->shard]->replicas[attempt->order[attempt->tried]];
  attempt->context = attempt->parent != nullptr
                         ? grpc::ClientContext::FromServerContext(*attempt->parent)
                         : std::make_unique<grpc::ClientContext>();
  attempt->start = absl::Now();
  grpc::ClientContext* context = attempt->context.get();
  attempt->call->issue(replica.stub.get(), context, [this, attempt](grpc::Status status) {
    Finish(attempt, std::move(status));
  });
}

void ShardCluster::Finish(const std::shared_ptr<Attempt>& attempt, grpc::Status status) {
  Call& call = *attempt->call;
  Replica& replica = *slots_[call.shard]->replicas[attempt->order[attempt->tried]];
  if (observer_) {
    observer_(call.shard, attempt->method, status.error_code(),
              absl::ToDoubleSeconds(absl::Now() - attempt->start));
  }
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    replica.down_until_nanos.store(absl::ToUnixNanos(absl::Now() + kDownFor));
  } else if (status.ok()) {
    replica.down_until_nanos.store(0);
  }
  bool final = true;
  if (!status.ok()) {
    const grpc::StatusCode code = status.error_code();
    attempt->failures.push_back(
        absl::StrCat(replica.address, ": ", code, ": ", status.error_message()));
    attempt->all_no_answer = attempt->all_no_answer && NoAnswer(code);
    attempt->codes.push_back(code);
    attempt->last = status;
    const bool about_request = code == grpc::StatusCode::INVALID_ARGUMENT ||
                               code == grpc::StatusCode::OUT_OF_RANGE ||
                               code == grpc::StatusCode::ALREADY_EXISTS;
    final = about_request || ParentDone(attempt->parent) ||
            attempt->tried + 1 >= attempt->order.size();
    if (final) {
      if (about_request || ParentDone(attempt->parent)) {
        call.status = grpc::Status(code, absl::StrCat(Name(call.shard), ": ",
                                                      status.error_message()));
      } else if (call.replica >= 0) {
        call.status = grpc::Status(code, absl::StrCat(Name(call.shard), " replica ",
                                                      replica.address, ": ",
                                                      status.error_message()));
      } else {
        // Every replica gave the same answer about the request (NOT_FOUND, not READY): that
        // answer. Otherwise (none answered, or they disagree) the shard is unavailable.
        bool same = !attempt->all_no_answer;
        for (grpc::StatusCode c : attempt->codes) same = same && c == code;
        call.status = same ? grpc::Status(code, absl::StrCat(Name(call.shard), ": ",
                                                             status.error_message()))
                           : grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                          absl::StrCat(Name(call.shard), ": no replica answered (",
                                                       absl::StrJoin(attempt->failures, "; "),
                                                       ")"));
      }
    }
  } else {
    call.status = grpc::Status::OK;
  }
  if (!final) {
    ++attempt->tried;
    Start(attempt);
    return;
  }
  absl::MutexLock lock(attempt->mutex);
  --*attempt->remaining;
}

grpc::Status ShardCluster::FirstError(const std::vector<Call>& calls) {
  for (const Call& call : calls) {
    if (!call.status.ok()) return call.status;
  }
  return grpc::Status::OK;
}

}  // namespace rcknn::router
