// The fixed data sets of tests/data answered by every search path, compared with the shipped
// exact answers by the rule of docs/design.md section 3.
#include "tests/testing/shared_data.h"

#include <string>
#include <vector>

#include "core/brute_force_knn.h"
#include "core/knn_index.h"
#include "core/residual_correlation.h"
#include "core/search_rule.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"

namespace rcknn {
namespace {

using core::KnnIndex;
using core::KnnOptions;
using core::QueryBatch;
using testing::Dataset;

class SharedDataTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void CheckAgainstShipped(const Dataset& set, const KnnIndex& index, bool pred,
                                  bool brute) {
    KnnOptions options;
    options.k = set.k;
    options.predecessor_mode = pred;
    const int64_t nq = static_cast<int64_t>(set.query_ids.size());
    std::vector<int64_t> ids(nq * set.k);
    std::vector<double> dists(nq * set.k);
    QueryBatch batch;
    batch.ids = set.query_ids;
    tbb::task_arena arena(2);
    const absl::Status status =
        brute ? index.SearchBruteForce(batch, options, &arena, nullptr, ids.data(), dists.data())
              : index.Search(batch, options, &arena, nullptr, ids.data(), dists.data());
    ASSERT_TRUE(status.ok()) << status;
    const core::PointRows rows = index.space().Gather(set.query_ids);
    const std::vector<double>& ref = pred ? set.pred_dists : set.knn_dists;
    int failures = 0;
    for (int64_t q = 0; q < nq && failures < 5; ++q) {
      const std::string diff =
          testing::CompareRow(index.space(), rows, q, set.query_ids[q], options, &ids[q * set.k],
                              &dists[q * set.k], &ref[q * set.k]);
      if (!diff.empty()) {
        ++failures;
        ADD_FAILURE() << set.name << " query " << q << " (id " << set.query_ids[q] << "): " << diff;
      }
    }
  }
};

TEST_P(SharedDataTest, ResidualVariancesMatchShipped) {
  absl::StatusOr<Dataset> set = testing::LoadDataset(testing::DefaultDataDir(), GetParam());
  ASSERT_TRUE(set.ok()) << set.status();
  absl::StatusOr<std::unique_ptr<KnnIndex>> index = KnnIndex::Build(set->Spec(), set->Data());
  ASSERT_TRUE(index.ok()) << index.status();
  const auto& space = dynamic_cast<const core::ResidualSpace&>((*index)->space());
  for (int64_t i = 0; i < set->n; ++i) {
    ASSERT_NEAR(space.p()[i], set->p_diag[i], 1e-9 + 1e-6 * set->p_diag[i]) << "point " << i;
  }
}

// Computed factors, down to the dense set's residual variances at the jitter level, have no
// rounding beyond the kernel variance's: the trees prune with kPruneSlack exactly
// (core/search_rule.h, PruneSlack), as they did before the slack followed the metric.
TEST_P(SharedDataTest, ComputedFactorsLeaveThePruningSlackAsItWas) {
  absl::StatusOr<Dataset> set = testing::LoadDataset(testing::DefaultDataDir(), GetParam());
  ASSERT_TRUE(set.ok()) << set.status();
  tbb::task_arena arena(2);
  absl::StatusOr<std::unique_ptr<core::ResidualSpace>> space =
      core::ResidualSpace::Create(set->points, set->Spec().residual, &arena);
  ASSERT_TRUE(space.ok()) << space.status();
  EXPECT_EQ((*space)->RoundingExcess(), 0.0);
  EXPECT_EQ(core::PruneSlack(**space), core::kPruneSlack);
}

TEST_P(SharedDataTest, TreeAndBruteForceMatchShippedAnswers) {
  absl::StatusOr<Dataset> set = testing::LoadDataset(testing::DefaultDataDir(), GetParam());
  ASSERT_TRUE(set.ok()) << set.status();
  tbb::task_arena arena(2);
  absl::StatusOr<std::unique_ptr<KnnIndex>> index =
      KnnIndex::Build(set->Spec(), set->Data(), &arena);
  ASSERT_TRUE(index.ok()) << index.status();
  const absl::Status tree_ok = (*index)->tree().CheckInvariants((*index)->space());
  ASSERT_TRUE(tree_ok.ok()) << tree_ok;
  for (bool pred : {false, true}) {
    for (bool brute : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "pred=" << pred << " brute=" << brute);
      CheckAgainstShipped(*set, **index, pred, brute);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sets, SharedDataTest, ::testing::Values("small", "dense", "gold"));

}  // namespace
}  // namespace rcknn
