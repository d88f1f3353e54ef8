// The naive oracle the scan tests compare with bit for bit (blocked_scan_test, scan_shapes_test):
// every pair through the canonical evaluation alone, the answer by docs/design.md section 3 by
// hand, and the spaces of test cases with or without the tree-order layout.
#ifndef RCKNN_TESTS_CORE_SCAN_ORACLE_H_
#define RCKNN_TESTS_CORE_SCAN_ORACLE_H_

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "core/euclidean_space.h"
#include "core/knn_index.h"
#include "core/residual_correlation.h"
#include "gtest/gtest.h"
#include "tests/testing/index_cases.h"

namespace rcknn::testing {

// Distances from every row to every stored point (by id), each pair through the canonical
// evaluation alone.
inline core::RowMatrix AllDistances(const core::MetricSpace& space, const core::PointRows& rows) {
  core::RowMatrix d(rows.size(), space.size());
  for (int64_t q = 0; q < rows.size(); ++q) {
    for (int64_t j = 0; j < space.size(); ++j) {
      space.RowToIds(rows, q, absl::MakeConstSpan(&j, 1), &d(q, j));
    }
  }
  return d;
}

// docs/design.md section 3 by hand: the qualifying ids sorted by (distance, id). `query_id` < 0
// is an out-of-sample point, for which only ids below `id_bound` qualify.
inline void NaiveKnn(const core::RowMatrix& dist, int64_t row, int64_t query_id,
                     const core::KnnOptions& options, int64_t id_bound, int64_t* ids,
                     double* dists) {
  std::vector<std::pair<double, int64_t>> candidates;
  for (int64_t j = 0; j < dist.cols(); ++j) {
    bool qualifies;
    if (query_id < 0) {
      qualifies = j < id_bound;
    } else if (options.predecessor_mode) {
      qualifies = options.rank.empty() ? j < query_id : options.rank[j] < options.rank[query_id];
    } else {
      qualifies = options.include_self || j != query_id;
    }
    if (qualifies) candidates.emplace_back(dist(row, j), j);
  }
  std::sort(candidates.begin(), candidates.end());
  for (int64_t r = 0; r < options.k; ++r) {
    const bool have = r < static_cast<int64_t>(candidates.size());
    ids[r] = have ? candidates[r].second : -1;
    dists[r] = have ? candidates[r].first : std::numeric_limits<double>::infinity();
  }
}

// The space of a test case: an index's (laid out in tree order) or a bare one.
struct BuiltSpace {
  std::unique_ptr<core::KnnIndex> index;   // when laid out
  std::unique_ptr<core::MetricSpace> space;  // otherwise
  const core::MetricSpace& get() const { return index ? index->space() : *space; }
};

inline BuiltSpace BuildSpace(const IndexCase& c, bool layout) {
  BuiltSpace built;
  absl::StatusOr<core::IndexData> data = CaseData(c);
  EXPECT_TRUE(data.ok()) << data.status();
  if (layout) {
    auto index = core::KnnIndex::Build(CaseSpec(c), *std::move(data));
    EXPECT_TRUE(index.ok()) << index.status();
    built.index = *std::move(index);
  } else if (c.metric == core::Metric::kEuclidean) {
    built.space = *core::EuclideanSpace::Create(data->points);
  } else {
    auto space = core::ResidualSpace::Create(data->points, CaseSpec(c).residual);
    EXPECT_TRUE(space.ok()) << space.status();
    built.space = *std::move(space);
  }
  return built;
}

}  // namespace rcknn::testing

#endif  // RCKNN_TESTS_CORE_SCAN_ORACLE_H_
