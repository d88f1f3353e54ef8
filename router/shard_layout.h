// How rcknn-router spreads one logical index over shards, as pure functions of the shard count S
// and the range size R, both written into every shard's index name so that any router can
// rebuild an index's layout from what the shards report (the router keeps no state of its own).
//
// Global ids are the upload order, as on one server. Shard s holds the contiguous range of
// global ids [s R, (s + 1) R), in global order (local id = global id - s R); the last shard's
// range is open-ended, so any number of points fits. R is fixed when the index is created:
// ceil(expected / S) for the number of points the index is declared to expect
// (CreateIndexRequest.expected_num_points, else the router's --shard_points x S), so the shards
// are balanced when the index holds what it declared, and the uploads fill the shards in order.
// A predecessor query with id g has candidates only on the shards whose range starts below g.
//
//   shard index id: <index_id>.rcknn-shard-<s>-of-<S>-range-<R>
#ifndef RCKNN_ROUTER_SHARD_LAYOUT_H_
#define RCKNN_ROUTER_SHARD_LAYOUT_H_

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rcknn::router {

// The longest index id a router accepts: the shard's name must fit the server's 128 characters.
inline constexpr int kMaxRouterIndexIdLength = 80;
// The largest expected_num_points (and --shard_points) a router accepts: with at most 4096
// shards, "-<s>-of-<S>-range-<R>" then stays within the 48 characters left.
inline constexpr int64_t kMaxExpectedPoints = 1'000'000'000'000;

struct ShardLayout {
  int64_t shards = 1;  // S >= 1
  int64_t range = 1;   // R >= 1

  // First global id of shard `shard`'s range.
  int64_t Start(int64_t shard) const { return shard * range; }
  // One past its last global id (INT64_MAX for the last shard: its range is open-ended).
  int64_t End(int64_t shard) const {
    return shard + 1 == shards ? std::numeric_limits<int64_t>::max() : (shard + 1) * range;
  }
  int64_t ShardOf(int64_t global) const { return std::min(global / range, shards - 1); }
  int64_t LocalOf(int64_t global) const { return global - Start(ShardOf(global)); }
  int64_t GlobalOf(int64_t shard, int64_t local) const { return Start(shard) + local; }
  // How many of shard `shard`'s ids are below global id `global` (>= 0): the local bound of a
  // predecessor query with id `global` on that shard.
  int64_t CountBelow(int64_t shard, int64_t global) const {
    return std::clamp<int64_t>(global, Start(shard), End(shard)) - Start(shard);
  }
  // Points on shard `shard` when the index holds `n` points.
  int64_t ShardSize(int64_t shard, int64_t n) const { return CountBelow(shard, n); }
  // The layout of a new index over `shards` shards expecting `expected` (>= 1) points.
  static ShardLayout ForExpected(int64_t shards, int64_t expected) {
    return ShardLayout{shards, std::max<int64_t>(1, (expected + shards - 1) / shards)};
  }
};

std::string ShardIndexId(absl::string_view index_id, int64_t shard, const ShardLayout& layout);

struct ParsedShardIndexId {
  std::string index_id;
  int64_t shard = 0;
  ShardLayout layout;
};
// The parts of a shard index id; nullopt for a name that is not one.
std::optional<ParsedShardIndexId> ParseShardIndexId(absl::string_view name);

// --shards: shards separated by ',', the replicas of one shard by '|', each host:port.
// INVALID_ARGUMENT naming --shards for an empty list, shard or address.
absl::StatusOr<std::vector<std::vector<std::string>>> ParseShardList(absl::string_view flag);

}  // namespace rcknn::router

#endif  // RCKNN_ROUTER_SHARD_LAYOUT_H_
