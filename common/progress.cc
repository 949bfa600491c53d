#include "common/progress.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace retina {
namespace {

double Rate(int64_t done, int64_t start, double elapsed_s) {
  return elapsed_s > 0 && done > start ? static_cast<double>(done - start) / elapsed_s : 0;
}

}  // namespace

std::string FormatDuration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return absl::StrCat(t / 3600, "h", (t % 3600) / 60 < 10 ? "0" : "", (t % 3600) / 60, "m");
  if (t >= 60) return absl::StrCat(t / 60, "m", t % 60 < 10 ? "0" : "", t % 60, "s");
  return absl::StrCat(t, "s");
}

std::string FormatProgressLine(const std::string& label, int64_t done, int64_t start, int64_t total, double elapsed_s,
                               const std::string& unit, const std::string& extra) {
  const double rate = Rate(done, start, elapsed_s);
  const double pct = total > 0 ? 100.0 * static_cast<double>(done) / total : 100.0;
  const std::string eta = done >= total ? "0s" : rate > 0 ? FormatDuration((total - done) / rate) : "?";
  return absl::StrFormat("%s: %d/%d %s (%.1f%%), %.3g %s/s, ETA %s%s%s", label, done, total, unit, pct, rate, unit, eta,
                         extra.empty() ? "" : ", ", extra);
}

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit, int64_t start, double plain_interval_s)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), start_done_(start),
      plain_interval_s_(plain_interval_s), tty_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

void ProgressBar::Update(int64_t done, const std::string& extra) {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  last_done_ = done;
  last_extra_ = extra;
  if (!tty_) {
    const bool due = !drawn_ || done >= total_ ||
                     std::chrono::duration<double>(now - last_draw_).count() >= plain_interval_s_;
    if (!due) return;
    drawn_ = true;
    last_draw_ = now;
    std::fprintf(stderr, "%s\n", FormatProgressLine(label_, done, start_done_, total_, elapsed, unit_, extra).c_str());
    std::fflush(stderr);
    return;
  }
  if (done < total_ && drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  drawn_ = true;
  last_draw_ = now;
  const double rate = Rate(done, start_done_, elapsed);
  const double frac = total_ > 0 ? static_cast<double>(done) / total_ : 1.0;
  constexpr int kWidth = 30;
  std::string bar(kWidth, '-');
  for (int i = 0; i < static_cast<int>(frac * kWidth) && i < kWidth; ++i) bar[i] = '#';
  const std::string eta = rate > 0 ? FormatDuration((total_ - done) / rate) : "?";
  std::fprintf(stderr, "\r%s [%s] %lld/%lld %s  %.1f %s/s  ETA %s %s\033[K", label_.c_str(), bar.c_str(),
               static_cast<long long>(done), static_cast<long long>(total_), unit_.c_str(), rate, unit_.c_str(),
               eta.c_str(), extra.c_str());
  std::fflush(stderr);
}

void ProgressBar::Note(const std::string& line) {
  if (tty_ && drawn_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s: %s\n", label_.c_str(), line.c_str());
  if (tty_ && drawn_) {  // redraw the bar below the note
    last_draw_ = start_;
    drawn_ = false;
    if (last_done_ >= 0) Update(last_done_, last_extra_);
  }
  std::fflush(stderr);
}

void ProgressBar::Finish() {
  if (last_done_ >= total_ && !tty_) return;  // the final line is out
  if (!tty_) {
    if (last_done_ >= 0) {
      drawn_ = false;
      Update(last_done_, last_extra_);
    }
    return;
  }
  Update(last_done_ >= 0 ? last_done_ : total_, last_extra_);
  std::fprintf(stderr, "\n");
}

}  // namespace retina
