// router/shard_layout.h: contiguous ranges per shard, checked against a direct enumeration of
// the global ids, and the shard index names that carry the layout.
#include "router/shard_layout.h"

#include <cstdint>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rcknn::router {
namespace {

// Every (S, R, n): the ids of each shard are one contiguous run, in global order, and the
// arithmetic agrees with walking the ids one by one.
TEST(ShardLayoutTest, RangesAreContiguousAndTheArithmeticAgreesWithAnEnumeration) {
  for (int64_t shards : {1, 2, 3, 5}) {
    for (int64_t range : {1, 2, 7, 100}) {
      const ShardLayout layout{shards, range};
      const int64_t n = shards * range + 13;  // the last shard takes the overflow
      std::vector<std::vector<int64_t>> held(shards);
      for (int64_t g = 0; g < n; ++g) {
        const int64_t s = layout.ShardOf(g);
        ASSERT_GE(s, 0);
        ASSERT_LT(s, shards);
        ASSERT_EQ(layout.LocalOf(g), static_cast<int64_t>(held[s].size())) << g;
        held[s].push_back(g);
        ASSERT_EQ(layout.GlobalOf(s, layout.LocalOf(g)), g);
      }
      for (int64_t s = 0; s < shards; ++s) {
        ASSERT_FALSE(held[s].empty());
        EXPECT_EQ(held[s].front(), layout.Start(s));
        EXPECT_EQ(held[s].back() - held[s].front() + 1, static_cast<int64_t>(held[s].size()));
        EXPECT_EQ(layout.ShardSize(s, n), static_cast<int64_t>(held[s].size()));
        if (s + 1 < shards) {
          EXPECT_EQ(layout.End(s), layout.Start(s + 1));
        }
        for (int64_t g = 0; g <= n; ++g) {
          int64_t below = 0;
          for (int64_t id : held[s]) below += id < g ? 1 : 0;
          ASSERT_EQ(layout.CountBelow(s, g), below) << "shard " << s << " g " << g;
        }
      }
    }
  }
}

TEST(ShardLayoutTest, AnIndexOfTheExpectedSizeIsBalanced) {
  const ShardLayout layout = ShardLayout::ForExpected(4, 1'000'001);
  EXPECT_EQ(layout.range, 250'001);
  int64_t total = 0;
  for (int64_t s = 0; s < 4; ++s) {
    EXPECT_LE(250'001 - layout.ShardSize(s, 1'000'001), 4);
    total += layout.ShardSize(s, 1'000'001);
  }
  EXPECT_EQ(total, 1'000'001);
  EXPECT_EQ(ShardLayout::ForExpected(3, 1).range, 1);
}

TEST(ShardLayoutTest, ShardIndexIdsRoundTripAndOthersAreNotShardNames) {
  const ShardLayout layout{3, 4096};
  const std::string name = ShardIndexId("my.index", 2, layout);
  EXPECT_EQ(name, "my.index.rcknn-shard-2-of-3-range-4096");
  const std::optional<ParsedShardIndexId> parsed = ParseShardIndexId(name);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->index_id, "my.index");
  EXPECT_EQ(parsed->shard, 2);
  EXPECT_EQ(parsed->layout.shards, 3);
  EXPECT_EQ(parsed->layout.range, 4096);
  for (const char* other :
       {"plain", "a.rcknn-shard-3-of-3-range-5", "a.rcknn-shard-0-of-3-range-0",
        "a.rcknn-shard-0-of-3-block-5", ".rcknn-shard-0-of-1-range-5",
        "a.rcknn-shard-00-of-3-range-5"}) {
    EXPECT_FALSE(ParseShardIndexId(other).has_value()) << other;
  }
}

TEST(ShardLayoutTest, ShardListSplitsShardsAndReplicas) {
  auto shards = ParseShardList("a:1, b:2|c:3");
  ASSERT_TRUE(shards.ok());
  EXPECT_EQ(*shards, (std::vector<std::vector<std::string>>{{"a:1"}, {"b:2", "c:3"}}));
  EXPECT_EQ(ParseShardList("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ParseShardList("a:1,|b:2").status().message()),
              ::testing::HasSubstr("--shards"));
}

}  // namespace
}  // namespace rcknn::router
