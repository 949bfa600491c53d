// jobs/<id>/metrics.csv: one row per training step, written by rank 0 of
// retina-train, read by the coordinator (GetJobMetrics) and by people.
//
// Columns (by name; readers look names up in the header, so columns may be
// added): step, epoch, loss, lr, images_per_s, data_wait_s,
// allreduce_exposed_s, val_iou (empty when not validated at that step),
// time (wall clock, Unix seconds).
// A resumed run first truncates the file to the checkpoint's step, so a
// step appears once; events.jsonl likewise loses the step/eval events past
// that step and gains a "resumed" event.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace retina {

inline constexpr char kMetricsCsvHeader[] =
    "step,epoch,loss,lr,images_per_s,data_wait_s,allreduce_exposed_s,val_iou,time";

struct MetricsRow {
  int64_t step = 0, epoch = 0;
  double loss = 0, lr = 0, images_per_s = 0, data_wait_s = 0, allreduce_exposed_s = 0;
  std::optional<double> val_iou;
  std::optional<double> time;  // absent in files written before December 2026
};

// The row in kMetricsCsvHeader's order, with a newline.
std::string FormatMetricsRow(const MetricsRow& row);

// Rows of a metrics.csv text, by header names; malformed rows are skipped.
// When a step appears more than once (files written before truncation on
// resume existed), the last row wins.
std::vector<MetricsRow> ParseMetricsCsv(const std::string& text);

// Keeps the rows with step <= max_step (and writes the current header),
// atomically; nothing to do when the file does not exist.
absl::Status TruncateMetricsCsv(const std::filesystem::path& path, int64_t max_step);

// Drops "step" and "eval" events with step > max_step, atomically.
absl::Status TruncateEventLog(const std::filesystem::path& path, int64_t max_step);

}  // namespace retina
