# rcknn_metrics: the Prometheus metrics of docs/design.md section 6 (server/server_metrics.h).
# Included from server/CMakeLists.txt; kept apart so the metrics build and test without gRPC.
find_package(prometheus-cpp CONFIG REQUIRED)

add_library(rcknn_metrics ${CMAKE_CURRENT_LIST_DIR}/server_metrics.cc)
target_include_directories(rcknn_metrics PUBLIC ${PROJECT_SOURCE_DIR})
target_compile_options(rcknn_metrics PRIVATE ${RCKNN_WARNINGS})
target_link_libraries(rcknn_metrics PUBLIC
  rcknn_core
  prometheus-cpp::core
  absl::status
  absl::strings
  absl::span
  absl::synchronization
  absl::flat_hash_map
)
