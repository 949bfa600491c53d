// Progress of a long command on stderr.
//
// On a terminal: a one-line bar with rate and ETA, redrawn at most every
// 100 ms. Without one (sbatch, worker logs, pipes): a plain line at the
// first update, then every `plain_interval` seconds, and at the end.
// Rate and ETA count only the work this process did: a run resumed at
// `start` of `total` reports (done - start) / elapsed, never the resumed
// steps as if they had been done now.
//
//   ProgressBar bar("pack", total_files, "files", /*start=*/already_done);
//   bar.Update(done, "loss 0.41");  // cheap
//   bar.Note("checkpoint step-00000120 written");  // its own line, either way
//   bar.Finish();
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace retina {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, std::string unit, int64_t start = 0, double plain_interval_s = 30);
  void Update(int64_t done, const std::string& extra = "");
  // A milestone (validation IoU, a checkpoint): printed on its own line.
  void Note(const std::string& line);
  void Finish();
  bool enabled() const { return tty_; }  // drawing a terminal bar

 private:
  std::string label_, unit_;
  int64_t total_, start_done_, last_done_ = -1;
  double plain_interval_s_;
  bool tty_, drawn_ = false;
  std::string last_extra_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// The plain progress line: "label: 120/1000 steps (12.0%), 2.50 steps/s, ETA 5m52s, extra".
// `done - start` units took `elapsed_s`.
std::string FormatProgressLine(const std::string& label, int64_t done, int64_t start, int64_t total, double elapsed_s,
                               const std::string& unit, const std::string& extra);

// "1h02m", "3m12s", "45s".
std::string FormatDuration(double seconds);

}  // namespace retina
