// Loads the fixed data sets of tests/data (raw little-endian arrays described by
// <name>.manifest.json) and compares answers with the rule of docs/design.md section 3.
#ifndef RCKNN_TESTS_TESTING_SHARED_DATA_H_
#define RCKNN_TESTS_TESTING_SHARED_DATA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/knn_index.h"
#include "core/metric_space.h"

namespace rcknn::testing {

// The repository's default location of the shared data sets.
std::string DefaultDataDir();

struct Dataset {
  std::string name;
  int64_t n = 0;
  int dimension = 0;
  int64_t k = 0;
  core::KernelSpec kernel;
  core::RowMatrix points;             // n x dimension
  std::vector<int64_t> inducing_ids;  // ascending
  std::vector<int64_t> query_ids;
  std::vector<int64_t> knn_ids;       // queries x k, self excluded
  std::vector<double> knn_dists;
  std::vector<int64_t> pred_ids;      // queries x k, predecessor mode
  std::vector<double> pred_dists;
  std::vector<double> p_diag;         // n

  // The spec that reproduces the shipped answers: the shipped inducing points, given explicitly.
  core::IndexSpec Spec() const;
  core::IndexData Data() const;
};

absl::StatusOr<Dataset> LoadDataset(const std::string& dir, const std::string& name);

// Two evaluations of one distance agree within `tol` if |a - b| <= tol or |a^2 - b^2| <= tol:
// the second form compares 1 - |rho|, because d = sqrt(1 - |rho|) magnifies a rounding error e
// of rho into up to sqrt(e) near d = 0 (with p near 1e-9 that exceeds any flat tol on d).
bool DistancesAgree(double a, double b, double tol = 1e-6);

// The comparison rule of docs/design.md section 3, the one every test and benchmark uses (with
// its twin rcknn_e2e.compare_answers in Python), in two forms: CompareRow with the metric space,
// CompareAnswers with what a client holds. Both return "" when the answers agree, else a
// description of the first difference.

// One row of an answer against the reference distances of its query: the distances agree rank by
// rank (DistancesAgree; padding, id -1 with +inf, exactly where the reference pads), and the true
// distance (measured in `space`) of every returned id agrees with the reported one and is at
// most the reference k-th distance (or agrees with it). Also checks that no id repeats and that
// every id qualifies for the query (`query_id` -1 for out-of-sample queries).
std::string CompareRow(const core::MetricSpace& space, const core::PointRows& query_rows,
                       int64_t row, int64_t query_id, const core::KnnOptions& options,
                       const int64_t* ids, const double* dists, const double* ref_dists,
                       double tol = 1e-6);

// Two num_queries x k answers, without the metric space: the same rule with the reported
// distances standing for the true ones. Per row, the distances agree rank by rank (padding
// alike), no id repeats, and every id the reference returned too has the reference's distance
// for it, any other id a distance at most the reference k-th one.
std::string CompareAnswers(const int64_t* ids, const double* dists, const int64_t* ref_ids,
                           const double* ref_dists, int64_t num_queries, int64_t k,
                           double tol = 1e-6);

}  // namespace rcknn::testing

#endif  // RCKNN_TESTS_TESTING_SHARED_DATA_H_
