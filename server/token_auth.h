// Bearer-token authentication: the token file (--auth_token_file) and the gRPC
// AuthMetadataProcessor that checks every call's `authorization: Bearer <token>` metadata before
// any handler runs.
//
// Token file format: one token per line; leading and trailing blanks are ignored, and so are
// blank lines and lines starting with '#'. A line `readonly <token>` gives a read-only token
// (Search, SearchStream, GetIndex, WatchIndex, ListIndexes); a bare `<token>` may call every
// method. Tokens are printable ASCII without blanks.
//
// Answers: UNAUTHENTICATED for a missing, malformed or unknown token; PERMISSION_DENIED for a
// read-only token on a write method (or on any method of rcknn.v1.Rcknn not named above).
// grpc.health.v1.Health and server reflection stay open. Refused calls never reach the
// handlers, so they do not pass through the RPC observer either: the processor reports them
// itself (to the metrics) through its `on_refused` callback.
#ifndef RCKNN_SERVER_TOKEN_AUTH_H_
#define RCKNN_SERVER_TOKEN_AUTH_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/security/auth_metadata_processor.h"

namespace rcknn::server {

struct AuthToken {
  std::string token;
  bool read_only = false;
};

// Parses the text of a token file. INVALID_ARGUMENT (naming the line) for a malformed line or a
// file without any token.
absl::StatusOr<std::vector<AuthToken>> ParseTokenFile(absl::string_view text);

// Reads and parses `path`; NOT_FOUND / PERMISSION_DENIED if it cannot be read.
absl::StatusOr<std::vector<AuthToken>> ReadTokenFile(const std::string& path);

// True for the methods a read-only token may call ("/rcknn.v1.Rcknn/Search", ...).
bool IsReadOnlyMethod(absl::string_view method);

// True for the methods open without a token (health checks, server reflection).
bool IsOpenMethod(absl::string_view method);

// Thread-safe; SetTokens replaces the tokens for every later call (SIGHUP re-reads the token
// file). Compares tokens in constant time (every token is compared, byte by byte, without early
// exit).
class TokenAuthProcessor : public grpc::AuthMetadataProcessor {
 public:
  // Called for every refused call with its method ("/package.Service/Method", as the client
  // sent it) and the refusal; on the gRPC thread that read the call.
  using RefusalObserver = std::function<void(absl::string_view method, const grpc::Status&)>;

  explicit TokenAuthProcessor(std::vector<AuthToken> tokens, RefusalObserver on_refused = nullptr)
      : tokens_(std::move(tokens)), on_refused_(std::move(on_refused)) {}

  // Memory only: runs on the gRPC thread that reads the call.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

  void SetTokens(std::vector<AuthToken> tokens);

 private:
  grpc::Status Check(absl::string_view method, const InputMetadata& auth_metadata,
                     OutputMetadata* consumed_auth_metadata) const;

  mutable absl::Mutex mutex_;
  std::vector<AuthToken> tokens_ ABSL_GUARDED_BY(mutex_);
  const RefusalObserver on_refused_;
};

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_TOKEN_AUTH_H_
