#include "core/brute_force_knn.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "core/parallel_tasks.h"
#include "core/status_macros.h"
#include "tbb/enumerable_thread_specific.h"

namespace rcknn::core {
namespace {

constexpr int64_t kPointBlock = 1024;  // positions per matrix product of BruteForceScan
constexpr int64_t kGatherBlock = 512;  // ids gathered per matrix product of BruteForceScan
constexpr int64_t kNoIdBound = std::numeric_limits<int64_t>::max();
constexpr int64_t kQueryBlock = 64;    // queries sharing one pass over the points
// Below this many query blocks, the id range is also split so both cores have work.
constexpr int64_t kMinBlocksForQuerySplitOnly = 4;
constexpr int64_t kChunkBlocks = 16;  // grid blocks per id-range chunk

}  // namespace

void BruteForceScan(const MetricSpace& space, const PointRows& rows, const KnnOptions& options,
                    int64_t begin, int64_t end, std::vector<CandidateSet>& sets,
                    TraversalStats& stats, absl::Span<const int64_t> id_bounds) {
  const int64_t nr = rows.size();
  const int64_t n = space.size();
  end = std::min(end, n);
  if (nr == 0 || begin >= end) return;
  // Only ids below row_bound(i) qualify for row i.
  // (Under an ordering the qualifying ids are not a prefix: Qualifies filters them instead.)
  const bool bounded =
      (options.predecessor_mode && options.rank.empty()) || !id_bounds.empty();
  auto row_bound = [&](int64_t i) {
    return options.predecessor_mode ? rows.ids[i] : id_bounds[i];
  };
  if (bounded) {
    int64_t max_id = 0;
    for (int64_t i = 0; i < nr; ++i) max_id = std::max(max_id, row_bound(i));
    end = std::min(end, max_id);
  }
  // Offers the block's distances d[j] (of stored point id_of(j), j in [0, count)) to every row.
  auto offer = [&](int64_t count, const double* buffer, auto id_of) {
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t query_id = rows.ids[i];
      const int64_t bound = bounded ? row_bound(i) : kNoIdBound;
      const double* d = buffer + i * count;
      CandidateSet& set = sets[i];
      double limit = set.limit();
      for (int64_t j = 0; j < count; ++j) {
        const int64_t id = id_of(j);
        if (d[j] <= limit && id < bound && Qualifies(id, query_id, options)) {
          set.Offer(d[j], id);
          limit = set.limit();
        }
      }
    }
  };
  thread_local std::vector<double> buffer;
  if (bounded && space.has_layout()) {
    // The qualifying ids are a prefix, scattered over the storage positions: the ids of each
    // block are gathered (a copy that stays in cache), then evaluated as one matrix product.
    thread_local std::vector<int64_t> ids;
    buffer.resize(nr * kGatherBlock);
    for (int64_t block = begin; block < end; block += kGatherBlock) {
      const int64_t count = std::min(kGatherBlock, end - block);
      ids.resize(count);
      std::iota(ids.begin(), ids.end(), block);
      const PointRows gathered = space.Gather(ids);
      space.RowsToRows(rows, 0, nr, gathered, 0, count, buffer.data());
      stats.distance_evaluations += nr * count;
      offer(count, buffer.data(), [&](int64_t j) { return block + j; });
    }
    return;
  }
  // Storage positions [begin, end); with a prefix bound and no layout, positions are the ids.
  buffer.resize(nr * kPointBlock);
  for (int64_t block = begin; block < end; block += kPointBlock) {
    const int64_t count = std::min(kPointBlock, end - block);
    space.RowsToRange(rows, 0, nr, block, count, buffer.data());
    stats.distance_evaluations += nr * count;
    offer(count, buffer.data(), [&](int64_t j) { return space.id_at(block + j); });
  }
}

absl::StatusOr<PointRows> QueryRows(const MetricSpace& space, const QueryBatch& queries,
                                    absl::Span<const int64_t> list) {
  const int64_t num = static_cast<int64_t>(list.size());
  if (queries.by_id()) {
    std::vector<int64_t> ids(num);
    for (int64_t i = 0; i < num; ++i) ids[i] = queries.ids[list[i]];
    return space.Gather(ids);
  }
  const int dimension = space.dimension();
  std::vector<double> points(num * dimension);
  for (int64_t i = 0; i < num; ++i) {
    std::copy_n(queries.points.data() + list[i] * dimension, dimension,
                points.data() + i * dimension);
  }
  return space.Prepare(points.data(), num);
}

absl::Status ScanQueries(const MetricSpace& space, const QueryBatch& queries,
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
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return queries.ids[a] < queries.ids[b]; });
  }
  const int64_t num_blocks = (nq + kQueryBlock - 1) / kQueryBlock;
  const int64_t chunk = num_blocks >= kMinBlocksForQuerySplitOnly
                            ? ((n + kPointBlock - 1) / kPointBlock) * kPointBlock
                            : kChunkBlocks * kPointBlock;
  const int64_t num_chunks = std::max<int64_t>(1, (n + chunk - 1) / chunk);

  std::vector<std::vector<CandidateSet>> sets(num_blocks * num_chunks);
  std::vector<int64_t> task_evaluations(num_blocks * num_chunks, 0);
  tbb::enumerable_thread_specific<TraversalStats> local_stats;
  RETURN_IF_ERROR(ParallelTasks(num_blocks * num_chunks, cancellation, [&](int64_t task) {
    const int64_t block = task / num_chunks;
    const int64_t part = task % num_chunks;
    const int64_t first = block * kQueryBlock;
    const int64_t num = std::min(kQueryBlock, nq - first);
    absl::StatusOr<PointRows> rows =
        QueryRows(space, queries, absl::MakeConstSpan(order).subspan(first, num));
    if (!rows.ok()) return rows.status();
    std::vector<CandidateSet>& block_sets = sets[task];
    block_sets.resize(num);
    for (int64_t i = 0; i < num; ++i) {
      block_sets[i].Reset(options.k, 2.0 * space.RoundingBound(*rows, i));
    }
    TraversalStats& st = local_stats.local();
    const int64_t before = st.distance_evaluations;
    std::vector<int64_t> bounds;
    if (!queries.by_id() && !queries.id_bounds.empty()) {
      bounds.resize(num);
      for (int64_t i = 0; i < num; ++i) bounds[i] = queries.id_bounds[order[first + i]];
    }
    BruteForceScan(space, *rows, options, part * chunk, (part + 1) * chunk, block_sets, st,
                   bounds);
    task_evaluations[task] = (st.distance_evaluations - before) / num;
    return absl::OkStatus();
  }));

  // Merge each block's parts and finish every query canonically.
  RETURN_IF_ERROR(ParallelTasks(num_blocks, /*cancellation=*/nullptr, [&](int64_t block) {
    const int64_t first = block * kQueryBlock;
    const int64_t num = std::min(kQueryBlock, nq - first);
    absl::StatusOr<PointRows> rows =
        QueryRows(space, queries, absl::MakeConstSpan(order).subspan(first, num));
    if (!rows.ok()) return rows.status();
    std::vector<CandidateSet>& merged = sets[block * num_chunks];
    int64_t evaluations = task_evaluations[block * num_chunks];
    for (int64_t part = 1; part < num_chunks; ++part) {
      evaluations += task_evaluations[block * num_chunks + part];
      for (int64_t i = 0; i < num; ++i) merged[i].Merge(sets[block * num_chunks + part][i]);
    }
    TraversalStats& st = local_stats.local();
    for (int64_t i = 0; i < num; ++i) {
      const int64_t q = order[first + i];
      const int64_t finishing = merged[i].Finish(space, *rows, i, out_ids + q * options.k,
                                                 out_distances + q * options.k);
      st.distance_evaluations += finishing;
      if (!per_query_evaluations.empty()) per_query_evaluations[q] += evaluations + finishing;
    }
    return absl::OkStatus();
  }));
  for (const TraversalStats& s : local_stats) stats.Merge(s);
  stats.brute_force_queries += nq;
  return absl::OkStatus();
}

absl::Status BruteForceKnn(const MetricSpace& space, const QueryBatch& queries,
                           const KnnOptions& options, tbb::task_arena* arena,
                           const Cancellation* cancellation, int64_t* out_ids,
                           double* out_distances, TraversalStats* stats) {
  const int64_t n = space.size();
  const int dimension = space.dimension();
  if (absl::Status status = ValidateQuery(queries, options, n, dimension); !status.ok()) {
    return status;
  }
  if (!queries.by_id()) {
    if (absl::StatusOr<PointRows> probe = space.Prepare(nullptr, 0); !probe.ok()) {
      return probe.status();
    }
  }
  const int64_t nq = NumQueries(queries, dimension);
  std::vector<int64_t> all(nq);
  std::iota(all.begin(), all.end(), 0);
  TraversalStats total;
  absl::Status status;
  auto run = [&] {
    status = ScanQueries(space, queries, all, options, cancellation, out_ids, out_distances,
                         total);
  };
  if (arena != nullptr) {
    arena->execute(run);
  } else {
    run();
  }
  if (!status.ok()) return status;
  total.queries = nq;
  if (stats != nullptr) stats->Merge(total);
  return absl::OkStatus();
}

}  // namespace rcknn::core
