// The candidates of one query found by a path whose distances are not the canonical ones (a
// matrix product): the k best by that path's distance and every candidate within `margin` of
// the k-th, which Finish re-evaluates canonically (MetricSpace::RowToIds) before choosing the k
// best by (distance, id).
//
// Why that is exact and independent of the path: with margin = 2 * RoundingBound, if c is the
// canonical k-th distance over all candidates and t the path's k-th, then c <= t + margin / 2,
// and every candidate at canonical distance <= c sits at path distance <= t + margin. So the
// candidates kept hold the canonical k best, whichever path found them.
#ifndef RCKNN_CORE_CANDIDATE_SET_H_
#define RCKNN_CORE_CANDIDATE_SET_H_

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "core/knn_query.h"
#include "core/metric_space.h"

namespace rcknn::core {

class CandidateSet {
 public:
  CandidateSet() = default;
  CandidateSet(int64_t k, double margin) { Reset(k, margin); }

  void Reset(int64_t k, double margin) {
    top_.Reset(k);
    k_ = k;
    margin_ = margin;
    pool_.clear();
    compact_at_ = 4 * k + 64;
  }
  // The largest path distance a new candidate may have and still matter.
  double limit() const { return top_.threshold() + margin_; }
  // The k-th path distance so far (+inf until k are held): the bound pruning compares with,
  // plus margin() and the pruning slack.
  double kth() const { return top_.threshold(); }
  double margin() const { return margin_; }

  void Offer(double distance, int64_t id) {
    if (!(distance <= limit())) return;
    top_.Offer(distance, id);
    pool_.emplace_back(distance, id);
    if (static_cast<int64_t>(pool_.size()) >= compact_at_) Compact();
  }
  void Merge(const CandidateSet& other) {
    for (const auto& [distance, id] : other.pool_) Offer(distance, id);
  }

  // Re-evaluates the kept candidates with space.RowToIds for rows[row], writes the k best by
  // (canonical distance, id) to ids / distances (padded with -1 / +inf) and returns the number of
  // distances evaluated.
  int64_t Finish(const MetricSpace& space, const PointRows& rows, int64_t row, int64_t* ids,
                 double* distances) {
    const double limit_now = limit();
    scratch_ids_.clear();
    for (const auto& [distance, id] : pool_) {
      if (distance <= limit_now) scratch_ids_.push_back(id);
    }
    const int64_t count = static_cast<int64_t>(scratch_ids_.size());
    scratch_d_.resize(count);
    space.RowToIds(rows, row, scratch_ids_, scratch_d_.data());
    ranked_.resize(count);
    for (int64_t j = 0; j < count; ++j) ranked_[j] = {scratch_d_[j], scratch_ids_[j]};
    std::sort(ranked_.begin(), ranked_.end());
    ranked_.erase(std::unique(ranked_.begin(), ranked_.end()), ranked_.end());
    for (int64_t r = 0; r < k_; ++r) {
      const bool have = r < static_cast<int64_t>(ranked_.size());
      ids[r] = have ? ranked_[r].second : -1;
      distances[r] = have ? ranked_[r].first : std::numeric_limits<double>::infinity();
    }
    return count;
  }

 private:
  void Compact() {
    const double limit_now = limit();
    pool_.erase(std::remove_if(pool_.begin(), pool_.end(),
                               [&](const auto& c) { return !(c.first <= limit_now); }),
                pool_.end());
    compact_at_ = std::max<int64_t>(4 * k_ + 64, 2 * static_cast<int64_t>(pool_.size()));
  }

  TopK top_;
  int64_t k_ = 0;
  double margin_ = 0.0;
  int64_t compact_at_ = 64;
  std::vector<std::pair<double, int64_t>> pool_;
  std::vector<int64_t> scratch_ids_;
  std::vector<double> scratch_d_;
  std::vector<std::pair<double, int64_t>> ranked_;
};

}  // namespace rcknn::core

#endif  // RCKNN_CORE_CANDIDATE_SET_H_
