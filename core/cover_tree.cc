#include "core/cover_tree.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/parallel_tasks.h"
#include "core/status_macros.h"
#include "tbb/parallel_for.h"

namespace rcknn::core {
namespace {

constexpr int64_t kMemberBlock = 256;  // members compared with the centers at once
constexpr int64_t kCenterChunk = 256;  // centers per gathered block of rows
constexpr int64_t kBatchBlocks = 16;   // member blocks compared with known centers in parallel
constexpr int64_t kRootBlock = 4096;   // ids per task when measuring distances to the root
constexpr int32_t kUnsetLevel = std::numeric_limits<int32_t>::max();

struct Member {
  double dist;  // distance to the node whose subtree the member is in
  int64_t id;
};

// Construction state indexed by stored id. Each id's entries are written by the one task that
// owns the id's node, so no locking is needed.
class Builder {
 public:
  Builder(const MetricSpace& space, double base, const Cancellation* cancellation,
          const ProgressCallback& progress)
      : children_(space.size()),
        level_(space.size(), kUnsetLevel),
        max_dist_(space.size(), 0.0),
        parent_dist_(space.size(), 0.0),
        space_(space),
        base_(base),
        log_base_(std::log(base)),
        cancellation_(cancellation),
        progress_(progress) {}

  void BuildNode(int64_t center, std::vector<Member> members);
  void Place(int64_t count) {
    const int64_t before = placed_.fetch_add(count, std::memory_order_relaxed);
    if (!progress_) return;
    const int64_t n = space_.size();
    const int64_t step = std::max<int64_t>(1, n / 100);
    if ((before + count) / step != before / step || before + count == n) {
      progress_(static_cast<double>(before + count) / n);
    }
  }
  void Fail(absl::Status status) { error_.Set(std::move(status)); }
  bool failed() const { return error_.failed(); }
  absl::Status status() const { return error_.status(); }

  std::vector<std::vector<int64_t>> children_;
  std::vector<int32_t> level_;
  std::vector<double> max_dist_;
  std::vector<double> parent_dist_;

 private:
  // Largest level l with b^(l - 1) < radius <= b^l.
  int32_t LevelFor(double radius) const {
    int32_t level = static_cast<int32_t>(std::ceil(std::log(radius) / log_base_));
    while (std::pow(base_, level) < radius) ++level;
    while (std::pow(base_, level - 1) >= radius) --level;
    return level;
  }
  // Chooses centers among `members` (sorted farthest first) so that every member is within
  // `radius` of the node's point or of a center, centers being more than `radius` from the node's
  // point and from each other. Returns, per member, -1 (stays with the node) or the index of its
  // center in `centers`, and its distance to that in `members[i].dist`.
  std::vector<int64_t> ChooseCenters(std::vector<Member>& members, double radius,
                                     std::vector<int64_t>& centers);

  const MetricSpace& space_;
  const double base_;
  const double log_base_;
  const Cancellation* cancellation_;
  const ProgressCallback& progress_;
  std::atomic<int64_t> placed_{0};
  FirstError error_;
};

std::vector<int64_t> Builder::ChooseCenters(std::vector<Member>& members, double radius,
                                            std::vector<int64_t>& centers) {
  // The greedy rule is sequential (a member becomes a center if no earlier center covers it),
  // but most of its work is comparing members with centers chosen long before them. So members
  // go in batches of kBatchBlocks blocks: first every block of the batch against the centers
  // known when the batch starts, in parallel (block x chunk of centers); then block by block, in
  // order, against the centers the batch itself added, and the block's own sequential pass. The
  // batches and chunks are fixed by the member count alone, so the tree does not depend on the
  // thread count; ties go to the earliest center either way.
  const int64_t num = static_cast<int64_t>(members.size());
  std::vector<int64_t> assigned(num, -1);
  std::vector<PointRows> full_chunks;  // centers [256 c, 256 c + 256) as rows
  std::vector<double> distances;
  std::vector<PointRows> block_rows(kBatchBlocks);
  for (int64_t batch = 0; batch < num; batch += kBatchBlocks * kMemberBlock) {
    const int64_t batch_end = std::min(num, batch + kBatchBlocks * kMemberBlock);
    const int64_t num_blocks = (batch_end - batch + kMemberBlock - 1) / kMemberBlock;
    auto block_count = [&](int64_t b) {
      return std::min(kMemberBlock, batch_end - batch - b * kMemberBlock);
    };
    auto gather = [&](int64_t b) {
      const int64_t first = batch + b * kMemberBlock;
      std::vector<int64_t> ids(block_count(b));
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = members[first + i].id;
      block_rows[b] = space_.Gather(ids);
    };
    const int64_t known = static_cast<int64_t>(centers.size());
    const int64_t num_full = known / kCenterChunk;
    PointRows partial;  // centers [256 num_full, known)
    if (known % kCenterChunk != 0) {
      std::vector<int64_t> partial_ids;
      for (int64_t c = num_full * kCenterChunk; c < known; ++c) {
        partial_ids.push_back(members[centers[c]].id);
      }
      partial = space_.Gather(partial_ids);
    }
    const int64_t num_chunks = num_full + (known % kCenterChunk != 0 ? 1 : 0);
    // Per block, chunk and member: (distance, center index) of the nearest center in the chunk.
    std::vector<std::pair<double, int64_t>> nearest(num_blocks * num_chunks * kMemberBlock);
    auto compare = [&](int64_t task) {
      const int64_t b = task / std::max<int64_t>(num_chunks, 1);
      const int64_t c = task % std::max<int64_t>(num_chunks, 1);
      if (c == 0) gather(b);
      if (num_chunks == 0) return;
      const PointRows& rows = block_rows[b];
      const PointRows& chunk = c < num_full ? full_chunks[c] : partial;
      const int64_t count = block_count(b);
      const int64_t nc = chunk.size();
      std::vector<double> d(count * nc);
      space_.RowsToRows(rows, 0, count, chunk, 0, nc, d.data());
      std::pair<double, int64_t>* out = &nearest[(b * num_chunks + c) * kMemberBlock];
      for (int64_t i = 0; i < count; ++i) {
        std::pair<double, int64_t> best{std::numeric_limits<double>::infinity(), -1};
        for (int64_t j = 0; j < nc; ++j) {
          if (d[i * nc + j] < best.first) best = {d[i * nc + j], c * kCenterChunk + j};
        }
        out[i] = best;
      }
    };
    if (num_chunks > 0) {
      // The first chunk of each block gathers the block's rows, which the others read.
      tbb::parallel_for(int64_t{0}, num_blocks, [&](int64_t b) { compare(b * num_chunks); });
      if (num_chunks > 1) {
        tbb::parallel_for(int64_t{0}, num_blocks * num_chunks, [&](int64_t task) {
          if (task % num_chunks != 0) compare(task);
        });
      }
    } else {
      tbb::parallel_for(int64_t{0}, num_blocks, [&](int64_t b) { gather(b); });
    }

    for (int64_t b = 0; b < num_blocks; ++b) {
      const int64_t start = batch + b * kMemberBlock;
      const int64_t count = block_count(b);
      const PointRows& rows = block_rows[b];
      for (int64_t c = 0; c < num_chunks; ++c) {
        const std::pair<double, int64_t>* best = &nearest[(b * num_chunks + c) * kMemberBlock];
        for (int64_t i = 0; i < count; ++i) {
          if (best[i].first < members[start + i].dist) {
            members[start + i].dist = best[i].first;
            assigned[start + i] = best[i].second;
          }
        }
      }
      // Centers chosen by the earlier blocks of this batch.
      const int64_t added = static_cast<int64_t>(centers.size()) - known;
      if (added > 0) {
        std::vector<int64_t> added_ids(added);
        for (int64_t c = 0; c < added; ++c) added_ids[c] = members[centers[known + c]].id;
        const PointRows added_rows = space_.Gather(added_ids);
        distances.resize(count * added);
        space_.RowsToRows(rows, 0, count, added_rows, 0, added, distances.data());
        for (int64_t i = 0; i < count; ++i) {
          Member& member = members[start + i];
          for (int64_t c = 0; c < added; ++c) {
            if (distances[i * added + c] < member.dist) {
              member.dist = distances[i * added + c];
              assigned[start + i] = known + c;
            }
          }
        }
      }

      // Members still uncovered become centers, in order, and cover the rest of the block.
      for (int64_t i = 0; i < count; ++i) {
        Member& member = members[start + i];
        if (member.dist <= radius) continue;
        const int64_t index = static_cast<int64_t>(centers.size());
        assigned[start + i] = index;
        centers.push_back(start + i);
        if (centers.size() % kCenterChunk == 0) {
          std::vector<int64_t> chunk_ids(kCenterChunk);
          for (int64_t c = 0; c < kCenterChunk; ++c) {
            chunk_ids[c] = members[centers[centers.size() - kCenterChunk + c]].id;
          }
          full_chunks.push_back(space_.Gather(chunk_ids));
        }
        const int64_t rest = count - i - 1;
        if (rest == 0) continue;
        distances.resize(rest);
        space_.RowsToRows(rows, i + 1, rest, rows, i, 1, distances.data());
        for (int64_t j = 0; j < rest; ++j) {
          Member& other = members[start + i + 1 + j];
          if (distances[j] < other.dist) {
            other.dist = distances[j];
            assigned[start + i + 1 + j] = index;
          }
        }
      }
    }
  }
  return assigned;
}

void Builder::BuildNode(int64_t center, std::vector<Member> members) {
  double max_dist = 0.0;
  for (const Member& member : members) max_dist = std::max(max_dist, member.dist);
  max_dist_[center] = max_dist;

  std::vector<std::pair<int64_t, std::vector<Member>>> jobs;
  while (!members.empty()) {
    if (failed()) return;
    if (absl::Status status = CheckCancelled(cancellation_); !status.ok()) {
      Fail(std::move(status));
      return;
    }
    double radius = 0.0;
    for (const Member& member : members) radius = std::max(radius, member.dist);
    if (radius <= 0.0) {
      // Everything left is at distance 0 from the center: leaf children.
      for (const Member& member : members) {
        children_[center].push_back(member.id);
        level_[member.id] = CoverTree::kDuplicateLevel;
        parent_dist_[member.id] = 0.0;
      }
      Place(static_cast<int64_t>(members.size()));
      break;
    }
    const int32_t level = LevelFor(radius);
    if (level_[center] == kUnsetLevel) level_[center] = level;
    const double child_radius = std::pow(base_, level - 1);
    std::sort(members.begin(), members.end(), [](const Member& a, const Member& b) {
      return a.dist != b.dist ? a.dist > b.dist : a.id < b.id;
    });
    // Distances to the node's own point, kept for the members that stay with it.
    std::vector<int64_t> centers;  // member indices
    std::vector<double> parent_dists(members.size());
    for (size_t i = 0; i < members.size(); ++i) parent_dists[i] = members[i].dist;
    const std::vector<int64_t> assigned = ChooseCenters(members, child_radius, centers);

    const size_t first_job = jobs.size();
    for (int64_t index : centers) {
      const int64_t id = members[index].id;
      children_[center].push_back(id);
      level_[id] = level - 1;
      parent_dist_[id] = parent_dists[index];
      jobs.emplace_back(id, std::vector<Member>());
    }
    std::vector<Member> rest;
    for (size_t i = 0; i < members.size(); ++i) {
      if (assigned[i] < 0) {
        rest.push_back(members[i]);
      } else if (members[i].id != jobs[first_job + assigned[i]].first) {
        jobs[first_job + assigned[i]].second.push_back(members[i]);
      }
    }
    Place(static_cast<int64_t>(centers.size()));
    members = std::move(rest);
  }
  tbb::parallel_for(size_t{0}, jobs.size(), [&](size_t j) {
    BuildNode(jobs[j].first, std::move(jobs[j].second));
  });
}

}  // namespace

absl::StatusOr<CoverTree> CoverTree::Build(const MetricSpace& space,
                                           const CoverTreeOptions& options,
                                           tbb::task_arena* arena,
                                           const Cancellation* cancellation,
                                           const ProgressCallback& progress) {
  if (!std::isfinite(options.base) || options.base <= 1.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cover tree base must be finite and > 1, got ", options.base));
  }
  const int64_t n = space.size();
  if (n < 1) return absl::InvalidArgumentError("cannot build a tree over an empty point set");
  Builder builder(space, options.base, cancellation, progress);
  auto run = [&] {
    // The root is id 0; every other point starts as its member.
    std::vector<Member> members(n - 1);
    const PointRows root = space.Gather({0});
    const int64_t tasks = (n + kRootBlock - 1) / kRootBlock;
    tbb::parallel_for(int64_t{0}, tasks, [&](int64_t t) {
      const int64_t begin = t * kRootBlock;
      const int64_t count = std::min(kRootBlock, n - begin);
      std::vector<double> d(count);
      space.RowsToRange(root, 0, 1, begin, count, d.data());
      for (int64_t j = 0; j < count; ++j) {
        const int64_t id = space.id_at(begin + j);  // the tree holds ids, whatever the layout
        if (id > 0) members[id - 1] = {d[j], id};
      }
    });
    builder.Place(1);
    builder.BuildNode(0, std::move(members));
  };
  if (arena != nullptr) {
    arena->execute(run);
  } else {
    run();
  }
  if (builder.failed()) return builder.status();
  if (builder.level_[0] == kUnsetLevel) builder.level_[0] = 0;

  CoverTree tree;
  CoverTreeStorage& s = tree.storage_;
  s.base = options.base;
  s.point.reserve(n);
  s.first_child.resize(n + 1);
  s.point.push_back(0);
  for (int64_t i = 0; i < static_cast<int64_t>(s.point.size()); ++i) {
    s.first_child[i] = static_cast<int64_t>(s.point.size());
    for (int64_t child : builder.children_[s.point[i]]) s.point.push_back(child);
  }
  s.first_child[n] = n;
  if (static_cast<int64_t>(s.point.size()) != n) {
    return absl::InternalError(absl::StrCat("cover tree build placed ", s.point.size(),
                                            " of ", n, " points"));
  }
  s.level.resize(n);
  s.max_dist.resize(n);
  s.parent_dist.resize(n);
  s.parent.assign(n, -1);
  s.subtree_min_id.resize(n);
  for (int64_t node = 0; node < n; ++node) {
    const int64_t id = s.point[node];
    s.level[node] = builder.level_[id];
    s.max_dist[node] = builder.max_dist_[id];
    s.parent_dist[node] = builder.parent_dist_[id];
    for (int64_t c = s.first_child[node]; c < s.first_child[node + 1]; ++c) {
      s.parent[c] = node;
    }
  }
  if (arena != nullptr) {
    arena->execute([&] { tree.ComputeRings(space); });
  } else {
    tree.ComputeRings(space);
  }
  for (int64_t node = n - 1; node >= 0; --node) {
    int64_t min_id = s.point[node];
    for (int64_t c = s.first_child[node]; c < s.first_child[node + 1]; ++c) {
      min_id = std::min(min_id, s.subtree_min_id[c]);
    }
    s.subtree_min_id[node] = min_id;
  }
  tree.ComputeOrder();
  return tree;
}

void CoverTree::ComputeOrder() {
  const int64_t n = size();
  subtree_size_.assign(n, 1);
  // Children have larger node numbers than their parents (breadth-first storage).
  for (int64_t node = n - 1; node >= 1; --node) {
    subtree_size_[storage_.parent[node]] += subtree_size_[node];
  }
  preorder_.assign(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    int64_t next = preorder_[node] + 1;
    for (int64_t c = storage_.first_child[node]; c < storage_.first_child[node + 1]; ++c) {
      preorder_[c] = next;
      next += subtree_size_[c];
    }
  }
  preorder_ids_.assign(n, 0);
  node_of_.assign(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    preorder_ids_[preorder_[node]] = storage_.point[node];
    node_of_[storage_.point[node]] = node;
  }
}

void CoverTree::ComputeRings(const MetricSpace& space) {
  const int64_t n = size();
  storage_.ring_offset.assign(n + 1, 0);
  std::vector<int64_t> depth(n, 0);
  for (int64_t node = 1; node < n; ++node) depth[node] = depth[storage_.parent[node]] + 1;
  for (int64_t node = 0; node < n; ++node) {
    storage_.ring_offset[node + 1] = storage_.ring_offset[node] + depth[node];
  }
  storage_.ring.resize(storage_.ring_offset[n]);
  // Each node's distances to its ancestors, as degenerate rings.
  tbb::parallel_for(int64_t{1}, n, [&](int64_t node) {
    const int64_t t = depth[node];
    std::vector<int64_t> ancestors(t);
    for (int64_t a = storage_.parent[node], j = t - 1; a >= 0; a = storage_.parent[a], --j) {
      ancestors[j] = storage_.point[a];
    }
    const PointRows row = space.Gather({storage_.point[node]});
    std::vector<double> d(t);
    space.RowToIds(row, 0, ancestors, d.data());
    for (int64_t j = 0; j < t; ++j) storage_.ring[storage_.ring_offset[node] + j] = {d[j], d[j]};
  });
  // Children before parents (breadth-first order reversed): widen each parent's rings by its
  // children's, for the ancestors they share.
  for (int64_t node = n - 1; node >= 1; --node) {
    const int64_t p = storage_.parent[node];
    for (int64_t j = 0; j < depth[p]; ++j) {
      auto& ring = storage_.ring[storage_.ring_offset[p] + j];
      const auto& child = storage_.ring[storage_.ring_offset[node] + j];
      ring.first = std::min(ring.first, child.first);
      ring.second = std::max(ring.second, child.second);
    }
  }
}

int64_t CoverTree::memory_bytes() const {
  size_t bytes = (subtree_size_.size() + preorder_.size() + preorder_ids_.size() + node_of_.size()) *
                 sizeof(int64_t);
  CoverTreeStorage::ForEachArray(storage_, [&](const char*, const auto& array, auto) {
    bytes += array.size() * sizeof(array[0]);
  });
  return static_cast<int64_t>(bytes);
}

int64_t CoverTree::depth() const {
  int64_t deepest = 0;
  for (int64_t node = 0; node < size(); ++node) deepest = std::max(deepest, node_depth(node));
  return deepest;
}

int64_t CoverTree::max_children() const {
  int64_t widest = 0;
  for (int64_t node = 0; node < size(); ++node) {
    widest = std::max(widest, storage_.first_child[node + 1] - storage_.first_child[node]);
  }
  return widest;
}

absl::Status CoverTree::CheckInvariants(const MetricSpace& space, double slack,
                                        bool check_separation) const {
  const int64_t n = size();
  if (n != space.size()) {
    return absl::InternalError(absl::StrCat("tree has ", n, " nodes, space ", space.size()));
  }
  std::vector<char> seen(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    const int64_t id = storage_.point[node];
    if (id < 0 || id >= n || seen[id]) {
      return absl::InternalError(absl::StrCat("id ", id, " at node ", node,
                                              " is out of range or appears twice"));
    }
    seen[id] = 1;
  }
  if (storage_.first_child[0] != 1 || storage_.first_child[n] != n) {
    return absl::InternalError("child ranges do not cover nodes 1..n-1");
  }
  std::vector<double> d;
  for (int64_t node = 0; node < n; ++node) {
    const int64_t begin = storage_.first_child[node];
    const int64_t end = storage_.first_child[node + 1];
    if (end < begin) return absl::InternalError(absl::StrCat("node ", node, ": bad child range"));
    const PointRows self = space.Gather({storage_.point[node]});
    d.resize(end - begin);
    space.RowToIds(self, 0, points(begin, end), d.data());
    int64_t min_id = storage_.point[node];
    for (int64_t c = begin; c < end; ++c) {
      min_id = std::min(min_id, storage_.subtree_min_id[c]);
      const double dc = d[c - begin];
      if (storage_.parent[c] != node) {
        return absl::InternalError(absl::StrCat("node ", c, ": parent is not ", node));
      }
      if (storage_.level[c] == kDuplicateLevel) {
        if (dc > slack) {
          return absl::InternalError(absl::StrCat("duplicate child ", c, " is at distance ", dc));
        }
        continue;
      }
      if (!(storage_.level[c] < storage_.level[node])) {
        return absl::InternalError(absl::StrCat("node ", c, " level ", storage_.level[c],
                                                " not below its parent's ", storage_.level[node]));
      }
      if (dc > std::pow(storage_.base, storage_.level[c] + 1) + slack) {
        return absl::InternalError(absl::StrCat("covering: node ", c, " at level ",
                                                storage_.level[c],
                                                " is ", dc, " from its parent"));
      }
      if (check_separation && dc <= std::pow(storage_.base, storage_.level[c]) - slack) {
        return absl::InternalError(absl::StrCat("separation: node ", c, " at level ",
                                                storage_.level[c],
                                                " is only ", dc, " from its parent"));
      }
      if (std::abs(dc - storage_.parent_dist[c]) > slack) {
        return absl::InternalError(absl::StrCat("node ", c, ": stored parent distance ",
                                                storage_.parent_dist[c], ", measured ", dc));
      }
    }
    if (min_id != storage_.subtree_min_id[node]) {
      return absl::InternalError(absl::StrCat("node ", node, ": subtree minimum id ",
                                              storage_.subtree_min_id[node], ", expected ",
                                              min_id));
    }
    // Separation among siblings of one level.
    for (int64_t a = begin; check_separation && a < end; ++a) {
      if (storage_.level[a] == kDuplicateLevel) continue;
      const PointRows row = space.Gather({storage_.point[a]});
      for (int64_t b = a + 1; b < end && storage_.level[b] == storage_.level[a]; ++b) {
        double dab;
        space.RowToIds(row, 0, points(b, b + 1), &dab);
        if (dab <= std::pow(storage_.base, storage_.level[a]) - slack) {
          return absl::InternalError(absl::StrCat("separation: siblings ", a, " and ", b,
                                                  " at level ", storage_.level[a], " are ", dab,
                                                  " apart"));
        }
      }
    }
  }
  // Max-descendant bounds and rings: every node against each of its ancestors, and the ring of
  // every node on the path between them.
  for (int64_t node = 1; node < n; ++node) {
    const PointRows row = space.Gather({storage_.point[node]});
    for (int64_t a = storage_.parent[node]; a >= 0; a = storage_.parent[a]) {
      double dist;
      space.RowToIds(row, 0, points(a, a + 1), &dist);
      if (dist > storage_.max_dist[a] + slack) {
        return absl::InternalError(absl::StrCat("node ", node, " is ", dist, " from ancestor ",
                                                a, " whose max_dist is ", storage_.max_dist[a]));
      }
      const int64_t j = node_depth(a);
      for (int64_t c = node; c != a; c = storage_.parent[c]) {
        const auto& ring = rings(c)[j];
        if (dist < ring.first - slack || dist > ring.second + slack) {
          return absl::InternalError(absl::StrCat("node ", node, " is ", dist, " from ancestor ",
                                                  a, " outside the ring [", ring.first, ", ",
                                                  ring.second, "] of node ", c));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CoverTree> CoverTree::FromStorage(CoverTreeStorage storage) {
  const CoverTreeStorage& t = storage;
  const int64_t n = t.size();
  auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("tree: ", what));
  };
  if (!std::isfinite(t.base) || t.base <= 1.0) return bad(absl::StrCat("base ", t.base));
  if (n < 1) return bad("no nodes");
  absl::Status lengths;
  CoverTreeStorage::ForEachArray(t, [&](const char* name, const auto& array,
                                        CoverTreeStorage::Length length) {
    const int64_t size = static_cast<int64_t>(array.size());
    if (!lengths.ok()) return;
    switch (length) {
      case CoverTreeStorage::Length::kNodes:
        if (size != n) {
          lengths = bad(absl::StrCat("arrays of different lengths (", name, " has ", size,
                                     " entries for ", n, " nodes)"));
        }
        break;
      case CoverTreeStorage::Length::kNodesPlusOne:
        if (size != n + 1) {
          lengths = bad(absl::StrCat("offset arrays of the wrong length (", name, " has ", size,
                                     " entries for ", n, " nodes)"));
        }
        break;
      case CoverTreeStorage::Length::kRings:
        break;  // checked against ring_offset below
    }
  });
  RETURN_IF_ERROR(lengths);
  std::vector<char> seen(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    const int64_t id = t.point[node];
    if (id < 0 || id >= n || seen[id]) return bad(absl::StrCat("id ", id, " at node ", node));
    seen[id] = 1;
    if (!(t.max_dist[node] >= 0.0) || !std::isfinite(t.max_dist[node]) ||
        !(t.parent_dist[node] >= 0.0) || !std::isfinite(t.parent_dist[node])) {
      return bad(absl::StrCat("node ", node, ": bad distance bound"));
    }
  }
  if (t.first_child[0] != 1 || t.first_child[n] != n || t.parent[0] != -1) {
    return bad("child ranges do not cover nodes 1..n-1");
  }
  for (int64_t node = 0; node < n; ++node) {
    const int64_t begin = t.first_child[node];
    const int64_t end = t.first_child[node + 1];
    if (begin <= node || end < begin || end > n) {
      return bad(absl::StrCat("node ", node, ": child range [", begin, ", ", end, ")"));
    }
    for (int64_t c = begin; c < end; ++c) {
      if (t.parent[c] != node) return bad(absl::StrCat("node ", c, ": wrong parent"));
      if (t.level[c] >= t.level[node]) return bad(absl::StrCat("node ", c, ": level not below"));
    }
  }
  if (t.ring_offset[0] != 0 || t.ring_offset[n] != static_cast<int64_t>(t.ring.size())) {
    return bad("ring offsets do not match the rings");
  }
  std::vector<int64_t> depth(n, 0);
  for (int64_t node = 0; node < n; ++node) {
    if (node > 0) depth[node] = depth[t.parent[node]] + 1;
    if (t.ring_offset[node + 1] - t.ring_offset[node] != depth[node]) {
      return bad(absl::StrCat("node ", node, ": ring count differs from its depth"));
    }
  }
  for (const auto& [lo, hi] : t.ring) {
    if (!std::isfinite(lo) || !std::isfinite(hi) || lo > hi) return bad("a ring is not an interval");
  }
  std::vector<int64_t> min_id(t.point.begin(), t.point.end());
  for (int64_t node = n - 1; node > 0; --node) {
    min_id[t.parent[node]] = std::min(min_id[t.parent[node]], min_id[node]);
  }
  for (int64_t node = 0; node < n; ++node) {
    if (t.subtree_min_id[node] != min_id[node]) {
      return bad(absl::StrCat("node ", node, ": wrong subtree minimum id"));
    }
  }
  CoverTree tree;
  tree.storage_ = std::move(storage);
  tree.ComputeOrder();
  return tree;
}

}  // namespace rcknn::core
