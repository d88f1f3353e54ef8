#include "router/shard_layout.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace rcknn::router {
namespace {

constexpr absl::string_view kMarker = ".rcknn-shard-";

}  // namespace

std::string ShardIndexId(absl::string_view index_id, int64_t shard, const ShardLayout& layout) {
  return absl::StrCat(index_id, kMarker, shard, "-of-", layout.shards, "-range-", layout.range);
}

std::optional<ParsedShardIndexId> ParseShardIndexId(absl::string_view name) {
  const size_t at = name.rfind(kMarker);
  if (at == absl::string_view::npos || at == 0) return std::nullopt;
  ParsedShardIndexId out;
  out.index_id = std::string(name.substr(0, at));
  const std::vector<absl::string_view> parts =
      absl::StrSplit(name.substr(at + kMarker.size()), '-');
  if (parts.size() != 5 || parts[1] != "of" || parts[3] != "range" ||
      !absl::SimpleAtoi(parts[0], &out.shard) || !absl::SimpleAtoi(parts[2], &out.layout.shards) ||
      !absl::SimpleAtoi(parts[4], &out.layout.range) || out.layout.shards < 1 ||
      out.layout.range < 1 || out.shard < 0 || out.shard >= out.layout.shards ||
      ShardIndexId(out.index_id, out.shard, out.layout) != name) {
    return std::nullopt;
  }
  return out;
}

absl::StatusOr<std::vector<std::vector<std::string>>> ParseShardList(absl::string_view flag) {
  std::vector<std::vector<std::string>> shards;
  if (absl::StripAsciiWhitespace(flag).empty()) {
    return absl::InvalidArgumentError("--shards: is empty; list host:port of every shard");
  }
  for (absl::string_view shard : absl::StrSplit(flag, ',')) {
    std::vector<std::string> replicas;
    for (absl::string_view replica : absl::StrSplit(shard, '|')) {
      replica = absl::StripAsciiWhitespace(replica);
      if (replica.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--shards: shard ", shards.size(), " has an empty replica address (\"", shard, "\")"));
      }
      replicas.emplace_back(replica);
    }
    shards.push_back(std::move(replicas));
  }
  return shards;
}

}  // namespace rcknn::router
