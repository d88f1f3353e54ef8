#include "core/blocked_scan.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "core/brute_force_knn.h"
#include "core/candidate_set.h"
#include "core/parallel_tasks.h"
#include "core/status_macros.h"
#include "tbb/enumerable_thread_specific.h"

namespace rcknn::core {
namespace {

// A block's rows of V are packed once per matrix product and each tile's once per block: with
// 256 queries per block and 512 candidates per tile, both copies (and the gather of a tile in
// tree order) cost a few percent of the product.
constexpr int64_t kQueryBlock = 256;
constexpr int64_t kTile = 512;
// Few blocks (small batches) also split the candidates, so both cores get work and a loaded
// core does not hold up the batch: at least kMinTasks tasks, each at least kMinChunk candidates.
constexpr int64_t kMinTasks = 16;
constexpr int64_t kMinChunk = 4096;
constexpr int64_t kNoIdBound = std::numeric_limits<int64_t>::max();

struct TileScratch {
  std::vector<double> distances;  // rows x tile
  std::vector<double> limits;     // per row
  std::vector<int64_t> ids;       // the tile's ids when gathered
};

// Offers the qualifying stored points of [begin, end) (ids where only a prefix qualifies and the
// space has a layout, storage positions otherwise) to sets[i], the candidates of rows[i], and
// adds each row's evaluations to row_evaluations[i].
void ScanPart(const MetricSpace& space, const PointRows& rows, const KnnOptions& options,
              int64_t begin, int64_t end, absl::Span<const int64_t> id_bounds,
              std::vector<CandidateSet>& sets, std::vector<int64_t>& row_evaluations,
              TraversalStats& stats, TileScratch& scratch) {
  const int64_t nr = rows.size();
  end = std::min(end, space.size());
  if (nr == 0 || begin >= end) return;
  // Only ids below row_bound(i) qualify for row i (under an ordering the qualifying ids are not a
  // prefix: Qualifies filters them instead).
  const bool bounded =
      (options.predecessor_mode && options.rank.empty()) || !id_bounds.empty();
  auto row_bound = [&](int64_t i) {
    return !id_bounds.empty() ? id_bounds[i] : options.predecessor_mode ? rows.ids[i] : kNoIdBound;
  };
  if (bounded) {
    int64_t max_id = 0;
    for (int64_t i = 0; i < nr; ++i) max_id = std::max(max_id, row_bound(i));
    end = std::min(end, max_id);
  }
  scratch.distances.resize(nr * kTile);
  scratch.limits.resize(nr);
  double* const distances = scratch.distances.data();
  double* const limits = scratch.limits.data();
  // Predecessor rows in ascending id order (as BlockedScan sorts them): the rows with ids up to
  // a tile's first id have no qualifying candidate in it, so each tile is evaluated only for the
  // rows after them (the block's triangle is not computed).
  const bool ascending_bounds = options.predecessor_mode && options.rank.empty() &&
                                id_bounds.empty() &&
                                std::is_sorted(rows.ids.begin(), rows.ids.end());
  // Offers rows [row_begin, row_end) of the tile's distances (row i at row i - first of the
  // buffer), as soon as they are ready.
  auto offer = [&](int64_t first, int64_t row_begin, int64_t row_end, int64_t count,
                   auto id_of) {
    for (int64_t i = row_begin; i < row_end; ++i) {
      const int64_t query_id = rows.ids[i];
      const int64_t bound = bounded ? row_bound(i) : kNoIdBound;
      const double* d = distances + (i - first) * count;
      CandidateSet& set = sets[i];
      double limit = set.limit();
      for (int64_t j = 0; j < count; ++j) {
        if (!(d[j] <= limit)) continue;
        const int64_t id = id_of(j);
        if (id < bound && Qualifies(id, query_id, options)) {
          set.Offer(d[j], id);
          limit = set.limit();
        }
      }
    }
  };
  const bool gathered = bounded && space.has_layout();
  for (int64_t tile = begin; tile < end; tile += kTile) {
    const int64_t count = std::min(kTile, end - tile);
    const int64_t first =
        ascending_bounds
            ? std::upper_bound(rows.ids.begin(), rows.ids.end(), tile) - rows.ids.begin()
            : 0;
    const int64_t num = nr - first;
    if (num <= 0) continue;
    for (int64_t i = first; i < nr; ++i) limits[i] = sets[i].limit();
    auto ready = [&](auto id_of) {
      return [&, id_of](int64_t row_begin, int64_t row_end) {
        offer(first, first + row_begin, first + row_end, count, id_of);
      };
    };
    if (gathered) {
      // The qualifying ids are a prefix, scattered over the storage positions: gathered once
      // for the whole block of rows (packed straight from their positions).
      scratch.ids.resize(count);
      std::iota(scratch.ids.begin(), scratch.ids.end(), tile);
      space.RowsToIdsWithin(rows, first, num, scratch.ids, limits + first, distances,
                            ready([tile](int64_t j) { return tile + j; }));
    } else {
      space.RowsToRangeWithin(
          rows, first, num, tile, count, limits + first, distances,
          ready([&space, tile](int64_t j) { return space.id_at(tile + j); }));
    }
    stats.distance_evaluations += num * count;
    for (int64_t i = first; i < nr; ++i) row_evaluations[i] += count;
  }
}

}  // namespace

absl::Status BlockedScan(const MetricSpace& space, const QueryBatch& queries,
                         absl::Span<const int64_t> query_list, const KnnOptions& options,
                         const Cancellation* cancellation, int64_t* out_ids,
                         double* out_distances, TraversalStats& stats,
                         absl::Span<int64_t> per_query_evaluations) {
  const int64_t n = space.size();
  const int64_t nq = static_cast<int64_t>(query_list.size());
  if (nq == 0) return absl::OkStatus();
  // Predecessor queries with nearby ids share most of their id range: block them together.
  std::vector<int64_t> order(query_list.begin(), query_list.end());
  if (options.predecessor_mode) {
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return options.PredecessorKey(queries.ids[a]) < options.PredecessorKey(queries.ids[b]);
    });
  }
  // Blocks of up to kQueryBlock queries; in predecessor mode a block also ends before its id
  // range grows past an eighth of its first id (a block scans the ids below its largest, so
  // sparse ids, like 1,024 random queries, would otherwise scan far more than each query needs).
  std::vector<int64_t> block_begin;
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t first = block_begin.empty() ? 0 : block_begin.back();
    bool cut = block_begin.empty() || i - first == kQueryBlock;
    if (!cut && options.predecessor_mode && options.rank.empty()) {
      const int64_t first_id = queries.ids[order[first]];
      cut = queries.ids[order[i]] - first_id > std::max(kTile, first_id / 8);
    }
    if (cut) block_begin.push_back(i);
  }
  const int64_t num_blocks = static_cast<int64_t>(block_begin.size());
  block_begin.push_back(nq);
  const int64_t wanted_chunks = (kMinTasks + num_blocks - 1) / num_blocks;
  const int64_t max_chunks = std::max<int64_t>(1, n / kMinChunk);
  const int64_t num_chunks = std::min(wanted_chunks, max_chunks);
  const int64_t chunk = ((n + num_chunks - 1) / num_chunks + kTile - 1) / kTile * kTile;

  std::vector<std::vector<CandidateSet>> sets(num_blocks * num_chunks);
  std::vector<std::vector<int64_t>> task_evaluations(num_blocks * num_chunks);
  tbb::enumerable_thread_specific<TraversalStats> local_stats;
  tbb::enumerable_thread_specific<TileScratch> local_scratch;
  auto block_rows = [&](int64_t block) {
    const int64_t first = block_begin[block];
    const int64_t num = block_begin[block + 1] - first;
    return QueryRows(space, queries, absl::MakeConstSpan(order).subspan(first, num));
  };
  RETURN_IF_ERROR(ParallelTasks(num_blocks * num_chunks, cancellation, [&](int64_t task) {
    const int64_t block = task / num_chunks;
    const int64_t part = task % num_chunks;
    const int64_t first = block_begin[block];
    ASSIGN_OR_RETURN(const PointRows rows, block_rows(block));
    const int64_t num = rows.size();
    std::vector<CandidateSet>& block_sets = sets[task];
    block_sets.resize(num);
    for (int64_t i = 0; i < num; ++i) {
      block_sets[i].Reset(options.k, 2.0 * space.RoundingBound(rows, i));
    }
    std::vector<int64_t> bounds;
    if (!queries.by_id() && !queries.id_bounds.empty()) {
      bounds.resize(num);
      for (int64_t i = 0; i < num; ++i) bounds[i] = queries.id_bounds[order[first + i]];
    }
    task_evaluations[task].assign(num, 0);
    ScanPart(space, rows, options, part * chunk, (part + 1) * chunk, bounds, block_sets,
             task_evaluations[task], local_stats.local(), local_scratch.local());
    return absl::OkStatus();
  }));

  // Merge each block's parts and finish every query canonically.
  RETURN_IF_ERROR(ParallelTasks(num_blocks, /*cancellation=*/nullptr, [&](int64_t block) {
    const int64_t first = block_begin[block];
    ASSIGN_OR_RETURN(const PointRows rows, block_rows(block));
    const int64_t num = rows.size();
    std::vector<CandidateSet>& merged = sets[block * num_chunks];
    for (int64_t part = 1; part < num_chunks; ++part) {
      for (int64_t i = 0; i < num; ++i) merged[i].Merge(sets[block * num_chunks + part][i]);
    }
    TraversalStats& st = local_stats.local();
    for (int64_t i = 0; i < num; ++i) {
      const int64_t q = order[first + i];
      const int64_t finishing = merged[i].Finish(space, rows, i, out_ids + q * options.k,
                                                 out_distances + q * options.k);
      st.distance_evaluations += finishing;
      if (per_query_evaluations.empty()) continue;
      int64_t evaluations = finishing;
      for (int64_t part = 0; part < num_chunks; ++part) {
        evaluations += task_evaluations[block * num_chunks + part][i];
      }
      per_query_evaluations[q] += evaluations;
    }
    return absl::OkStatus();
  }));
  for (const TraversalStats& s : local_stats) stats.Merge(s);
  stats.brute_force_queries += nq;
  return absl::OkStatus();
}

}  // namespace rcknn::core
