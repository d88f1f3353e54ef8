// Minimal status propagation macros: Debian's Abseil (20220623) ships no status_macros.h.
#ifndef RCKNN_CORE_STATUS_MACROS_H_
#define RCKNN_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define RCKNN_CONCAT_INNER_(a, b) a##b
#define RCKNN_CONCAT_(a, b) RCKNN_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status rcknn_status_ = (expr);         \
    if (!rcknn_status_.ok()) return rcknn_status_; \
  } while (false)

// `lhs = value of expr` (an absl::StatusOr<T>), or returns its error status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(RCKNN_CONCAT_(rcknn_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

#endif  // RCKNN_CORE_STATUS_MACROS_H_
