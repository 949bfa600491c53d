// A one-line progress bar with rate and ETA on stderr, drawn only when stderr
// is a terminal (else silent; callers log milestones themselves).
//
//   ProgressBar bar("pack", total_files, "files");
//   bar.Update(done);   // cheap; redraws at most every 100 ms
//   bar.Finish();
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace retina {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, std::string unit);
  void Update(int64_t done, const std::string& extra = "");
  void Finish();
  bool enabled() const { return enabled_; }

 private:
  std::string label_, unit_;
  int64_t total_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "1h02m", "3m12s", "45s".
std::string FormatDuration(double seconds);

}  // namespace retina
