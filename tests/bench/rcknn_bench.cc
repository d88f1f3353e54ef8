// rcknn-bench: builds an index for one workload of docs/design.md section 7, answers its queries
// with the tree search and with the blocked brute force, checks every answer, and prints one JSON
// object per line. With --snapshot_dir it also saves the built index there, restores it
// (core/index_file.h), checks that the restored index answers the same queries bit for bit
// and prints a second line with the timings.
//
// dense-all and scale-all answer every id of their point set in predecessor mode (the Vecchia
// job); dense-all checks every answer against the brute force, scale-all a sample spread over
// the id range, plus the shape of every row (ascending, padding, only ids below the query's).
//
//   rcknn-bench --workload=gold|gold-pred|vecchia-all|scale|dense|dense-pred|dense-all|
//                          scale-all|gemm|build --threads=2 [--data_dir=DIR] [--snapshot_dir=DIR]
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/knn_index.h"
#include "core/random.h"
#include "core/index_file.h"
#include "tbb/global_control.h"
#include "tbb/parallel_for.h"
#include "tbb/task_arena.h"
#include "core/flags_usage.h"
#include "tests/testing/shared_data.h"

ABSL_FLAG(std::string, workload, "gold",
          "gold | gold-pred | vecchia-all | scale | dense | dense-pred | dense-all | scale-all | "
          "gemm | build");
ABSL_FLAG(int, threads, 2, "worker threads (one tbb::task_arena of this size)");
ABSL_FLAG(std::string, data_dir, rcknn::testing::DefaultDataDir(),
          "directory of the fixed data sets (tests/data)");
ABSL_FLAG(int64_t, scale_points, 1000000, "scale: number of generated points");
ABSL_FLAG(int64_t, scale_queries, 10000, "scale: number of predecessor-mode queries");
ABSL_FLAG(int64_t, scale_brute_sample, 200, "scale: queries timed with the brute force");
ABSL_FLAG(int64_t, all_brute_sample, 2000,
          "dense-all, scale-all: ids spread over the id range, timed with the brute force "
          "(scale-all also checks exactly these answers against it)");
ABSL_FLAG(bool, scale_check_all, true,
          "scale: check every query against the brute force (else only the timed sample)");
ABSL_FLAG(bool, build_tree, true, "build: also build the tree (else only V and p)");
ABSL_FLAG(std::string, snapshot_dir, "",
          "if set (every workload but gemm): save the built index to DIR/<workload>.rcknn-index, "
          "restore it and check that it answers identically");
ABSL_FLAG(std::string, search, "auto",
          "auto | walk | scan | blocks: the tree search's strategy (auto: the planner's)");
ABSL_FLAG(int64_t, block_size, rcknn::core::BlockTraversalOptions().block_size,
          "queries per block of the block traversal");
ABSL_FLAG(int64_t, leaf_size, rcknn::core::BlockTraversalOptions().leaf_size,
          "subtrees of at most this many points are evaluated whole by the block traversal");
ABSL_FLAG(int64_t, product_depth, rcknn::core::TreeSearchOptions().product_depth,
          "walks of large batches measure the children of nodes up to this depth by matrix "
          "products (-1: never)");
ABSL_FLAG(double, base, rcknn::core::CoverTreeOptions().base, "cover tree base");
ABSL_FLAG(double, scan_fraction, rcknn::core::TreeSearchOptions().scan_fraction,
          "fraction of the points a walk may evaluate before the query is scanned");
ABSL_FLAG(int64_t, scan_candidates_below,
          rcknn::core::TreeSearchOptions().scan_candidates_below,
          "queries with at most this many candidates are scanned without a walk");

namespace rcknn {
namespace {

using core::KnnIndex;
using core::KnnOptions;
using core::QueryBatch;
using core::TraversalStats;

int64_t PeakRssBytes() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

double Seconds(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

// CPU seconds of the whole process (every thread): unlike wall time, not inflated when other
// processes share the cores.
double CpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

struct Rate {
  double gflops = 0.0;      // per wall second
  double cpu_gflops = 0.0;  // per CPU second of the process
};
Rate GemmGflops(int threads, tbb::task_arena& arena);

struct Answers {
  std::vector<int64_t> ids;
  std::vector<double> dists;
  std::vector<int64_t> evaluations;
  TraversalStats stats;
  double seconds = 0.0;
  double cpu_seconds = 0.0;
};

Answers RunSearch(const KnnIndex& index, const std::vector<int64_t>& query_ids,
                  const KnnOptions& options, tbb::task_arena& arena, bool brute) {
  Answers a;
  const int64_t nq = static_cast<int64_t>(query_ids.size());
  a.ids.resize(nq * options.k);
  a.dists.resize(nq * options.k);
  a.evaluations.resize(nq);
  QueryBatch batch;
  batch.ids = query_ids;
  const absl::Time start = absl::Now();
  const double cpu_start = CpuSeconds();
  const absl::Status status =
      brute ? index.SearchBruteForce(batch, options, &arena, nullptr, a.ids.data(),
                                     a.dists.data(), &a.stats)
            : index.Search(batch, options, &arena, nullptr, a.ids.data(), a.dists.data(),
                           &a.stats, absl::MakeSpan(a.evaluations));
  a.seconds = Seconds(start);
  a.cpu_seconds = CpuSeconds() - cpu_start;
  if (!status.ok()) {
    std::cerr << "search failed: " << status << "\n";
    std::exit(1);
  }
  return a;
}

// Checks answers.rows against reference distances (num x k); returns the number of mismatches.
int64_t CountMismatches(const KnnIndex& index, const std::vector<int64_t>& query_ids,
                        const KnnOptions& options, const Answers& got,
                        const std::vector<double>& ref_dists, int64_t first, int64_t num) {
  int64_t bad = 0;
  for (int64_t start = first; start < first + num; start += 4096) {
    const int64_t count = std::min<int64_t>(4096, first + num - start);
    const core::PointRows rows = index.space().Gather(
        absl::MakeConstSpan(query_ids).subspan(start, count));
    for (int64_t i = 0; i < count; ++i) {
      const int64_t q = start + i;
      const std::string diff = testing::CompareRow(
          index.space(), rows, i, query_ids[q], options, &got.ids[q * options.k],
          &got.dists[q * options.k], &ref_dists[(q - first) * options.k]);
      if (!diff.empty()) {
        if (bad < 3) std::cerr << "query " << q << " (id " << query_ids[q] << "): " << diff << "\n";
        ++bad;
      }
    }
  }
  return bad;
}

void Print(const std::string& workload, int threads, int64_t n, int64_t queries, int64_t k,
           const KnnIndex& index, const Answers& tree, double brute_qps, bool exact,
           int64_t checked_queries, const std::string& extra = "") {
  std::vector<int64_t> evals = tree.evaluations;
  std::sort(evals.begin(), evals.end());
  const double mean = std::accumulate(evals.begin(), evals.end(), 0.0) / evals.size();
  const int64_t p99 = evals[std::min<int64_t>(evals.size() - 1, evals.size() * 99 / 100)];
  std::cout << absl::StrFormat(
                   "{\"workload\":\"%s\",\"threads\":%d,\"n\":%d,\"queries\":%d,\"k\":%d,"
                   "\"build_v_seconds\":%.4f,\"build_tree_seconds\":%.4f,"
                   "\"queries_per_second\":%.1f,\"dist_evals_per_query_mean\":%.1f,"
                   "\"dist_evals_per_query_p99\":%d,\"peak_rss_bytes\":%d,"
                   "\"brute_queries_per_second\":%.1f,\"exact\":%s,"
                   "\"search_seconds\":%.4f,\"scanned_queries\":%d,\"block_queries\":%d,"
                   "\"blocks\":%d,\"tree_depth\":%d,"
                   "\"root_children\":%d,\"index_memory_bytes\":%d,\"checked_queries\":%d%s}",
                   workload, threads, n, queries, k, index.timings().factor_seconds,
                   index.timings().tree_seconds, queries / tree.seconds, mean, p99,
                   PeakRssBytes(), brute_qps, exact ? "true" : "false", tree.seconds,
                   tree.stats.brute_force_queries, tree.stats.block_queries, tree.stats.blocks,
                   index.tree().depth(),
                   index.tree().end_child(0) - index.tree().first_child(0),
                   index.memory_bytes(), checked_queries, extra)
            << std::endl;
}

// Saves `index` under --snapshot_dir, restores it from `spec` and `data`, checks that the
// restored index answers `query_ids` bit for bit as `built` did, and prints one JSON line:
// save seconds and file bytes; restore seconds (open, read, verify, recompute the metric space);
// of which the tree part (open, read, the tree's structural check, the payload checksum)
// is timed by a separate read of the same file just before, the rest being the space. Both
// reads find the file in the page cache (it was just written). Returns false on an error.
bool RunSnapshot(const std::string& workload, int threads, const KnnIndex& index,
                 const core::IndexSpec& spec, core::IndexData data,
                 const std::vector<int64_t>& query_ids, const KnnOptions& options,
                 const Answers& built, tbb::task_arena& arena) {
  const std::string dir = absl::GetFlag(FLAGS_snapshot_dir);
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  const std::string path = absl::StrCat(dir, "/", workload, ".rcknn-index");
  absl::Time start = absl::Now();
  if (const absl::Status status = core::WriteIndexFile(
          path, core::IndexFileHeaderOf(index, workload, 1, 0.0), index.tree().storage());
      !status.ok()) {
    std::cerr << status << "\n";
    return false;
  }
  const double save_seconds = Seconds(start);
  struct stat info {};
  const int64_t file_bytes = ::stat(path.c_str(), &info) == 0 ? info.st_size : -1;

  // The tree part alone: what a restore reads before it computes the space (the whole file,
  // the checksum and the tree's structural check).
  start = absl::Now();
  if (const absl::Status status = core::ReadIndexFile(path).status(); !status.ok()) {
    std::cerr << "reading the tree back: " << status << "\n";
    return false;
  }
  const double tree_seconds = Seconds(start);

  start = absl::Now();
  absl::StatusOr<core::IndexFileContents> contents = core::ReadIndexFile(path);
  if (!contents.ok()) {
    std::cerr << contents.status() << "\n";
    return false;
  }
  absl::StatusOr<std::unique_ptr<KnnIndex>> restored =
      core::RestoreFromIndexFile(path, *std::move(contents), spec, std::move(data), &arena);
  const double restore_seconds = Seconds(start);
  if (!restored.ok()) {
    std::cerr << restored.status() << "\n";
    return false;
  }
  const Answers again = RunSearch(**restored, query_ids, options, arena, /*brute=*/false);
  const bool identical =
      again.ids == built.ids && again.dists.size() == built.dists.size() &&
      std::memcmp(again.dists.data(), built.dists.data(), again.dists.size() * sizeof(double)) ==
          0;
  std::cout << absl::StrFormat(
                   "{\"workload\":\"%s-snapshot\",\"threads\":%d,\"n\":%d,\"queries\":%d,"
                   "\"build_v_seconds\":%.4f,\"build_tree_seconds\":%.4f,"
                   "\"save_seconds\":%.4f,\"file_bytes\":%d,\"restore_seconds\":%.4f,"
                   "\"restore_tree_seconds\":%.4f,\"restore_space_seconds\":%.4f,"
                   "\"restored_queries_per_second\":%.1f,\"identical\":%s,"
                   "\"peak_rss_bytes\":%d}",
                   workload, threads, index.size(), static_cast<int64_t>(query_ids.size()),
                   index.timings().factor_seconds, index.timings().tree_seconds, save_seconds,
                   file_bytes, restore_seconds, tree_seconds,
                   std::max(0.0, restore_seconds - tree_seconds),
                   query_ids.size() / again.seconds, identical ? "true" : "false",
                   PeakRssBytes())
            << std::endl;
  return true;
}

core::IndexSpec Tuned(core::IndexSpec spec) {
  spec.tree.base = absl::GetFlag(FLAGS_base);
  spec.search.scan_fraction = absl::GetFlag(FLAGS_scan_fraction);
  spec.search.scan_candidates_below = absl::GetFlag(FLAGS_scan_candidates_below);
  spec.search.block.block_size = absl::GetFlag(FLAGS_block_size);
  spec.search.block.leaf_size = absl::GetFlag(FLAGS_leaf_size);
  spec.search.product_depth = absl::GetFlag(FLAGS_product_depth);
  const std::string search = absl::GetFlag(FLAGS_search);
  if (search == "walk") spec.search.strategy = core::SearchStrategy::kWalk;
  if (search == "scan") spec.search.strategy = core::SearchStrategy::kScan;
  if (search == "blocks") spec.search.strategy = core::SearchStrategy::kBlocks;
  return spec;
}

int RunShared(const std::string& workload, int threads, tbb::task_arena& arena) {
  // Before the index exists, so its matrices do not add to the peak RSS.
  const Rate gemm = GemmGflops(threads, arena);
  absl::StatusOr<testing::Dataset> set =
      testing::LoadDataset(absl::GetFlag(FLAGS_data_dir),
                           workload.substr(0, 5) == "dense" ? "dense" : "gold");
  if (!set.ok()) {
    std::cerr << set.status() << "\n";
    return 1;
  }
  absl::StatusOr<std::unique_ptr<KnnIndex>> index =
      KnnIndex::Build(Tuned(set->Spec()), set->Data(), &arena);
  if (!index.ok()) {
    std::cerr << index.status() << "\n";
    return 1;
  }
  KnnOptions options;
  options.k = set->k;
  options.predecessor_mode = workload != "gold" && workload != "dense";
  std::vector<int64_t> query_ids = set->query_ids;
  if (workload == "vecchia-all") {
    query_ids.resize(set->n);
    std::iota(query_ids.begin(), query_ids.end(), 0);
  }
  const int64_t nq = static_cast<int64_t>(query_ids.size());
  const Answers tree = RunSearch(**index, query_ids, options, arena, /*brute=*/false);
  const Answers brute = RunSearch(**index, query_ids, options, arena, /*brute=*/true);
  int64_t bad;
  if (workload == "vecchia-all") {
    bad = CountMismatches(**index, query_ids, options, tree, brute.dists, 0, nq);
  } else {
    bad = CountMismatches(**index, query_ids, options, tree,
                          options.predecessor_mode ? set->pred_dists : set->knn_dists, 0, nq);
    bad += CountMismatches(**index, query_ids, options, brute,
                           options.predecessor_mode ? set->pred_dists : set->knn_dists, 0, nq);
  }
  // The arithmetic rate (2 m flops per evaluation: the matrix products' share) of the tree
  // search (on gold almost all of it the scan) and of the brute force, against Eigen's own GEMM
  // measured right after in the same process; per wall second and per CPU second (the latter
  // comparable on a machine shared with other processes).
  const auto& residual = dynamic_cast<const core::ResidualSpace&>((*index)->space());
  const double flops_per_eval = 2.0 * residual.v().cols();
  std::string extra;
  for (const auto& [name, answers] : {std::pair<const char*, const Answers*>{"tree", &tree},
                                      std::pair<const char*, const Answers*>{"brute", &brute}}) {
    const double flops =
        flops_per_eval * static_cast<double>(answers->stats.distance_evaluations);
    extra += absl::StrFormat(
        ",\"%s_gflops\":%.1f,\"%s_gemm_ratio\":%.3f,\"%s_gemm_cpu_ratio\":%.3f", name,
        flops / answers->seconds / 1e9, name, flops / answers->seconds / 1e9 / gemm.gflops, name,
        flops / answers->cpu_seconds / 1e9 / gemm.cpu_gflops);
  }
  extra += absl::StrFormat(",\"gemm_gflops\":%.1f,\"gemm_cpu_gflops\":%.1f", gemm.gflops,
                           gemm.cpu_gflops);
  const double end_to_end =
      (*index)->timings().factor_seconds + (*index)->timings().tree_seconds + tree.seconds;
  extra += absl::StrFormat(",\"end_to_end_seconds\":%.4f,\"speedup_vs_brute\":%.2f",
                           end_to_end, brute.seconds / tree.seconds);
  Print(workload, threads, set->n, nq, options.k, **index, tree, nq / brute.seconds, bad == 0, nq,
        extra);
  if (!absl::GetFlag(FLAGS_snapshot_dir).empty() &&
      !RunSnapshot(workload, threads, **index, Tuned(set->Spec()), set->Data(), query_ids,
                   options, tree, arena)) {
    return 1;
  }
  return 0;
}

// The scale workload's spec: RBF s2 = 1, l = 0.5, 256 inducing points.
core::IndexSpec ScaleSpec() {
  core::IndexSpec spec;
  spec.dimension = 2;
  spec.residual.kernel.type = core::KernelType::kRbf;
  spec.residual.kernel.variance = 1.0;
  spec.residual.kernel.lengthscales = {0.5};
  spec.residual.inducing_count = 256;
  spec.residual.inducing_seed = 7;
  return spec;
}

// Its points: n standard normal points in 2-D drawn from `rng` (scale then draws its query ids
// from the same generator).
core::IndexData ScaleData(int64_t n, core::SplitMix64& rng) {
  core::IndexData data;
  data.points.resize(n, 2);
  for (int64_t i = 0; i < n; ++i) {
    data.points(i, 0) = rng.Normal();
    data.points(i, 1) = rng.Normal();
  }
  return data;
}

int RunScale(int threads, tbb::task_arena& arena) {
  const int64_t n = absl::GetFlag(FLAGS_scale_points);
  const int64_t nq = absl::GetFlag(FLAGS_scale_queries);
  core::SplitMix64 rng(20261123);
  core::IndexData data = ScaleData(n, rng);
  const core::IndexSpec spec = ScaleSpec();
  core::IndexData restore_data;  // the points again, for --snapshot_dir
  if (!absl::GetFlag(FLAGS_snapshot_dir).empty()) restore_data.points = data.points;
  absl::StatusOr<std::unique_ptr<KnnIndex>> index =
      KnnIndex::Build(Tuned(spec), std::move(data), &arena);
  if (!index.ok()) {
    std::cerr << index.status() << "\n";
    return 1;
  }
  KnnOptions options;
  options.k = 30;
  options.predecessor_mode = true;
  std::vector<int64_t> query_ids(nq);
  for (int64_t& id : query_ids) id = static_cast<int64_t>(rng.UniformBelow(n));
  const Answers tree = RunSearch(**index, query_ids, options, arena, /*brute=*/false);
  const int64_t sample = std::min(nq, absl::GetFlag(FLAGS_scale_brute_sample));
  std::vector<int64_t> sample_ids(query_ids.begin(), query_ids.begin() + sample);
  const Answers timed = RunSearch(**index, sample_ids, options, arena, /*brute=*/true);
  int64_t bad =
      CountMismatches(**index, query_ids, options, tree, timed.dists, 0, sample);
  if (absl::GetFlag(FLAGS_scale_check_all) && nq > sample) {
    std::vector<int64_t> rest(query_ids.begin() + sample, query_ids.end());
    const Answers check = RunSearch(**index, rest, options, arena, /*brute=*/true);
    bad += CountMismatches(**index, query_ids, options, tree, check.dists, sample, nq - sample);
  }
  const bool all_checked = absl::GetFlag(FLAGS_scale_check_all) || nq == sample;
  Print("scale", threads, n, nq, options.k, **index, tree, sample / timed.seconds,
        bad == 0 && all_checked, all_checked ? nq : sample);
  const auto& residual = dynamic_cast<const core::ResidualSpace&>((*index)->space());
  std::cout << absl::StrFormat("{\"workload\":\"scale-memory\",\"v_and_coords_bytes\":%d,"
                               "\"peak_rss_bytes\":%d}",
                               (residual.v().size() + residual.points().size()) * 8,
                               PeakRssBytes())
            << std::endl;
  if (!absl::GetFlag(FLAGS_snapshot_dir).empty() &&
      !RunSnapshot("scale", threads, **index, Tuned(spec), std::move(restore_data), query_ids,
                   options, tree, arena)) {
    return 1;
  }
  return 0;
}

// The rows of `from` for query positions `rows`, as a new Answers.
Answers SubsetRows(const Answers& from, const std::vector<int64_t>& rows, int64_t k) {
  Answers out;
  for (int64_t q : rows) {
    out.ids.insert(out.ids.end(), from.ids.begin() + q * k, from.ids.begin() + (q + 1) * k);
    out.dists.insert(out.dists.end(), from.dists.begin() + q * k,
                     from.dists.begin() + (q + 1) * k);
  }
  return out;
}

// Predecessor-mode rows of queries 0..n-1 by id: query i has exactly min(i, k) qualifying ids,
// so its row must hold that many distinct ids below i, ascending by (distance, id) with finite
// distances, then -1 / +inf padding. Returns the number of rows that do not.
int64_t CountMalformedRows(const Answers& got, int64_t n, int64_t k) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* ids = &got.ids[i * k];
    const double* dists = &got.dists[i * k];
    const int64_t expected = std::min(i, k);
    bool ok = true;
    for (int64_t r = 0; r < k && ok; ++r) {
      if (r < expected) {
        ok = ids[r] >= 0 && ids[r] < i && std::isfinite(dists[r]) && dists[r] >= 0.0 &&
             (r == 0 || std::make_pair(dists[r - 1], ids[r - 1]) < std::make_pair(dists[r], ids[r]));
      } else {
        ok = ids[r] == -1 && dists[r] == std::numeric_limits<double>::infinity();
      }
    }
    if (!ok) {
      if (bad < 3) std::cerr << "row " << i << " is malformed\n";
      ++bad;
    }
  }
  return bad;
}

// dense-all and scale-all: every id in predecessor mode, k = 30.
int RunAll(const std::string& workload, int threads, tbb::task_arena& arena) {
  core::IndexSpec spec;
  core::IndexData data;
  if (workload == "dense-all") {
    absl::StatusOr<testing::Dataset> set =
        testing::LoadDataset(absl::GetFlag(FLAGS_data_dir), "dense");
    if (!set.ok()) {
      std::cerr << set.status() << "\n";
      return 1;
    }
    spec = set->Spec();
    data = set->Data();
  } else {
    core::SplitMix64 rng(20261123);
    spec = ScaleSpec();
    data = ScaleData(absl::GetFlag(FLAGS_scale_points), rng);
  }
  core::IndexData restore_data;  // the points again, for --snapshot_dir
  if (!absl::GetFlag(FLAGS_snapshot_dir).empty()) restore_data.points = data.points;
  const int64_t n = data.points.rows();
  const int64_t coordinate_bytes = data.points.size() * 8;
  absl::StatusOr<std::unique_ptr<KnnIndex>> index =
      KnnIndex::Build(Tuned(spec), std::move(data), &arena);
  if (!index.ok()) {
    std::cerr << index.status() << "\n";
    return 1;
  }
  KnnOptions options;
  options.k = 30;
  options.predecessor_mode = true;
  std::vector<int64_t> query_ids(n);
  std::iota(query_ids.begin(), query_ids.end(), 0);
  const Answers tree = RunSearch(**index, query_ids, options, arena, /*brute=*/false);
  int64_t bad = CountMalformedRows(tree, n, options.k);

  // The brute force's rate, on ids spread evenly over the id range (its cost grows with the id).
  const int64_t sample = std::min(n, absl::GetFlag(FLAGS_all_brute_sample));
  std::vector<int64_t> sample_ids(sample);
  for (int64_t s = 0; s < sample; ++s) sample_ids[s] = (2 * s + 1) * n / (2 * sample);
  const Answers timed = RunSearch(**index, sample_ids, options, arena, /*brute=*/true);
  int64_t checked = sample;
  std::string extra;
  if (workload == "dense-all") {
    const Answers brute = RunSearch(**index, query_ids, options, arena, /*brute=*/true);
    bad += CountMismatches(**index, query_ids, options, tree, brute.dists, 0, n);
    checked = n;
    extra = absl::StrFormat(",\"brute_all_queries_per_second\":%.1f", n / brute.seconds);
  } else {
    const Answers sub = SubsetRows(tree, sample_ids, options.k);
    bad += CountMismatches(**index, sample_ids, options, sub, timed.dists, 0, sample);
    const auto& residual = dynamic_cast<const core::ResidualSpace&>((*index)->space());
    const int64_t reference =
        residual.v().size() * 8 + coordinate_bytes + n * options.k * 16;
    extra = absl::StrFormat(",\"v_coords_answer_bytes\":%d,\"peak_rss_ratio\":%.3f",
                            reference, static_cast<double>(PeakRssBytes()) / reference);
  }
  const double end_to_end = (*index)->timings().factor_seconds +
                            (*index)->timings().tree_seconds + tree.seconds;
  extra += absl::StrFormat(",\"end_to_end_seconds\":%.4f,\"speedup_vs_brute\":%.2f",
                           end_to_end, (n / tree.seconds) / (sample / timed.seconds));
  Print(workload, threads, n, n, options.k, **index, tree, sample / timed.seconds, bad == 0,
        checked, extra);
  if (!absl::GetFlag(FLAGS_snapshot_dir).empty() &&
      !RunSnapshot(workload, threads, **index, Tuned(spec), std::move(restore_data), query_ids,
                   options, tree, arena)) {
    return 1;
  }
  return 0;
}

// build: V and p, then the tree, for the scale workload's points (--scale_points), no queries.
int RunBuild(int threads, tbb::task_arena& arena) {
  core::SplitMix64 rng(20261123);
  core::IndexData data = ScaleData(absl::GetFlag(FLAGS_scale_points), rng);
  const int64_t n = data.points.rows();
  if (!absl::GetFlag(FLAGS_build_tree)) {
    const absl::Time start = absl::Now();
    absl::StatusOr<std::unique_ptr<core::ResidualSpace>> space =
        core::ResidualSpace::Create(std::move(data.points), ScaleSpec().residual, &arena);
    const double seconds = Seconds(start);
    if (!space.ok()) {
      std::cerr << space.status() << "\n";
      return 1;
    }
    std::cout << absl::StrFormat("{\"workload\":\"build\",\"threads\":%d,\"n\":%d,"
                                 "\"build_v_seconds\":%.4f,\"peak_rss_bytes\":%d}",
                                 threads, n, seconds, PeakRssBytes())
              << std::endl;
    return 0;
  }
  absl::StatusOr<std::unique_ptr<KnnIndex>> index =
      KnnIndex::Build(Tuned(ScaleSpec()), std::move(data), &arena);
  if (!index.ok()) {
    std::cerr << index.status() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat(
                   "{\"workload\":\"build\",\"threads\":%d,\"n\":%d,\"build_v_seconds\":%.4f,"
                   "\"build_tree_seconds\":%.4f,\"tree_depth\":%d,\"peak_rss_bytes\":%d}",
                   threads, n, (*index)->timings().factor_seconds,
                   (*index)->timings().tree_seconds, (*index)->tree().depth(), PeakRssBytes())
            << std::endl;
  return 0;
}

// Eigen's own float64 matrix product at this thread count, in GFLOP/s: the yardstick for the
// brute force. Each thread multiplies its own matrices (the brute force's shape of parallelism).
Rate GemmGflops(int threads, tbb::task_arena& arena) {
  const int64_t rows = 1024, cols = 4096, inner = 512, reps = 8;
  std::vector<core::RowMatrix> a(threads), b(threads), c(threads);
  for (int t = 0; t < threads; ++t) {
    a[t] = core::RowMatrix::Random(rows, inner);
    b[t] = core::RowMatrix::Random(cols, inner);
    c[t].resize(rows, cols);
  }
  const absl::Time start = absl::Now();
  const double cpu_start = CpuSeconds();
  arena.execute([&] {
    tbb::parallel_for(0, threads, [&](int t) {
      for (int r = 0; r < reps; ++r) c[t].noalias() = a[t] * b[t].transpose();
    });
  });
  const double seconds = Seconds(start);
  const double cpu_seconds = CpuSeconds() - cpu_start;
  const double flops = 2.0 * rows * cols * inner * reps * threads;
  return {flops / seconds / 1e9, flops / cpu_seconds / 1e9};
}

int RunGemm(int threads, tbb::task_arena& arena) {
  const Rate rate = GemmGflops(threads, arena);
  std::cout << absl::StrFormat(
                   "{\"workload\":\"gemm\",\"threads\":%d,\"gflops\":%.1f,\"cpu_gflops\":%.1f}",
                   threads, rate.gflops, rate.cpu_gflops)
            << std::endl;
  return 0;
}

}  // namespace
}  // namespace rcknn

int main(int argc, char** argv) {
  rcknn::core::SetUpFlagsUsage(
      "rcknn-bench", "tests/bench/rcknn_bench.cc",
      "builds one workload's index, answers its queries with the tree search and the brute "
      "force, checks every answer and prints one JSON line (docs/benchmarks.md).\n"
      "Usage: rcknn-bench --workload=gold|gold-pred|vecchia-all|dense|dense-pred|scale|dense-all|scale-all|gemm|build "
      "[--threads=2] [flags]");
  absl::ParseCommandLine(argc, argv);
  const int threads = absl::GetFlag(FLAGS_threads);
  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, threads);
  tbb::task_arena arena(threads);
  const std::string workload = absl::GetFlag(FLAGS_workload);
  if (workload == "gold" || workload == "gold-pred" || workload == "vecchia-all" ||
      workload == "dense" || workload == "dense-pred") {
    return rcknn::RunShared(workload, threads, arena);
  }
  if (workload == "scale") return rcknn::RunScale(threads, arena);
  if (workload == "dense-all" || workload == "scale-all") {
    return rcknn::RunAll(workload, threads, arena);
  }
  if (workload == "gemm") return rcknn::RunGemm(threads, arena);
  if (workload == "build") return rcknn::RunBuild(threads, arena);
  std::cerr << "unknown --workload " << workload << "\n";
  return 2;
}
