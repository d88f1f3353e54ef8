// How rcknn-router spreads one logical index over shards, as pure functions of the shard count S
// and the block size B, both written into every shard's index name so that any router can
// rebuild an index's layout from what the shards report (the router keeps no state of its own).
//
// Global ids are the upload order, as on one server. They are dealt out in blocks of B
// consecutive ids, round-robin: block b = g / B lives on shard b % S, whose local ids follow the
// global order. Every shard therefore holds contiguous runs of global ids, the shards stay
// balanced to within B points however the uploads arrive, and a predecessor query with id g has
// candidates on every shard whose first block starts below g.
//
//   shard index id: <index_id>.rcknn-shard-<s>-of-<S>-block-<B>
#ifndef RCKNN_ROUTER_SHARD_LAYOUT_H_
#define RCKNN_ROUTER_SHARD_LAYOUT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rcknn::router {

// The longest index id a router accepts: the shard's name must fit the server's 128 characters.
inline constexpr int kMaxRouterIndexIdLength = 80;

struct ShardLayout {
  int64_t shards = 1;  // S >= 1
  int64_t block = 1;   // B >= 1

  int64_t ShardOf(int64_t global) const { return (global / block) % shards; }
  int64_t LocalOf(int64_t global) const {
    return (global / block / shards) * block + global % block;
  }
  int64_t GlobalOf(int64_t shard, int64_t local) const {
    return ((local / block) * shards + shard) * block + local % block;
  }
  // How many of shard `shard`'s ids are below global id `global` (>= 0): the local bound of a
  // predecessor query with id `global` on that shard.
  int64_t CountBelow(int64_t shard, int64_t global) const {
    const int64_t b = global / block;
    const int64_t count = (b / shards) * block;
    const int64_t s = b % shards;
    if (shard < s) return count + block;
    if (shard == s) return count + global % block;
    return count;
  }
  // Points on shard `shard` when the index holds `n` points.
  int64_t ShardSize(int64_t shard, int64_t n) const { return CountBelow(shard, n); }
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
