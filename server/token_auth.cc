#include "server/token_auth.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace rcknn::server {
namespace {

constexpr absl::string_view kBearer = "Bearer ";

bool IsTokenText(absl::string_view token) {
  if (token.empty()) return false;
  for (char c : token) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

// Constant time in the contents: the time depends only on the lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char difference = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    difference |= static_cast<unsigned char>(x ^ y);
  }
  return difference == 0;
}

}  // namespace

absl::StatusOr<std::vector<AuthToken>> ParseTokenFile(absl::string_view text) {
  std::vector<AuthToken> tokens;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    AuthToken token;
    if (words.size() == 2 && words[0] == "readonly") {
      token.read_only = true;
      token.token = std::string(words[1]);
    } else if (words.size() == 1) {
      token.token = std::string(words[0]);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": expected `<token>` or `readonly <token>`"));
    }
    if (!IsTokenText(token.token)) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": a token is printable ASCII without blanks"));
    }
    tokens.push_back(std::move(token));
  }
  if (tokens.empty()) return absl::InvalidArgumentError("no token in the file");
  return tokens;
}

absl::StatusOr<std::vector<AuthToken>> ReadTokenFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    const int error = errno;
    const std::string message =
        absl::StrCat("--auth_token_file ", path, ": cannot read: ", std::strerror(error));
    return error == ENOENT ? absl::NotFoundError(message) : absl::PermissionDeniedError(message);
  }
  std::stringstream text;
  text << file.rdbuf();
  if (file.bad()) {
    return absl::PermissionDeniedError(absl::StrCat("--auth_token_file ", path, ": read error"));
  }
  absl::StatusOr<std::vector<AuthToken>> tokens = ParseTokenFile(text.str());
  if (!tokens.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth_token_file ", path, ": ", tokens.status().message()));
  }
  return tokens;
}

bool IsReadOnlyMethod(absl::string_view method) {
  if (!absl::ConsumePrefix(&method, "/rcknn.v1.Rcknn/")) return false;
  for (absl::string_view name :
       {"Search", "SearchStream", "GetIndex", "WatchIndex", "ListIndexes"}) {
    if (method == name) return true;
  }
  return false;
}

bool IsOpenMethod(absl::string_view method) {
  return absl::StartsWith(method, "/grpc.health.v1.Health/") ||
         absl::StartsWith(method, "/grpc.reflection.v1alpha.ServerReflection/") ||
         absl::StartsWith(method, "/grpc.reflection.v1.ServerReflection/");
}

grpc::Status TokenAuthProcessor::Process(const InputMetadata& auth_metadata,
                                         grpc::AuthContext* /*context*/,
                                         OutputMetadata* consumed_auth_metadata,
                                         OutputMetadata* /*response_metadata*/) {
  absl::string_view method;
  if (auto path = auth_metadata.find(":path"); path != auth_metadata.end()) {
    method = absl::string_view(path->second.data(), path->second.size());
  }
  grpc::Status status = Check(method, auth_metadata, consumed_auth_metadata);
  if (!status.ok() && on_refused_) on_refused_(method, status);
  return status;
}

void TokenAuthProcessor::SetTokens(std::vector<AuthToken> tokens) {
  absl::MutexLock lock(&mutex_);
  tokens_ = std::move(tokens);
}

grpc::Status TokenAuthProcessor::Check(absl::string_view method,
                                       const InputMetadata& auth_metadata,
                                       OutputMetadata* consumed_auth_metadata) const {
  if (IsOpenMethod(method)) return grpc::Status::OK;
  auto header = auth_metadata.find("authorization");
  if (header == auth_metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing `authorization: Bearer <token>` metadata");
  }
  const absl::string_view value(header->second.data(), header->second.size());
  if (!absl::StartsWith(value, kBearer)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization metadata is not `Bearer <token>`");
  }
  const absl::string_view presented = value.substr(kBearer.size());
  // Every token is compared, so the time does not tell which one matched.
  bool found = false;
  bool read_only = false;
  {
    absl::ReaderMutexLock lock(&mutex_);
    for (const AuthToken& token : tokens_) {
      if (ConstantTimeEquals(presented, token.token) && !found) {
        found = true;
        read_only = token.read_only;
      }
    }
  }
  if (!found) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
  if (read_only && !IsReadOnlyMethod(method)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrCat("a read-only token may not call ", method));
  }
  // The handlers have no use for the token; it stays out of their metadata.
  consumed_auth_metadata->insert({"authorization", std::string(value)});
  return grpc::Status::OK;
}

}  // namespace rcknn::server
