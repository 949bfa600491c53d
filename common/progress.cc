#include "common/progress.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"

namespace retina {

std::string FormatDuration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return absl::StrCat(t / 3600, "h", (t % 3600) / 60 < 10 ? "0" : "", (t % 3600) / 60, "m");
  if (t >= 60) return absl::StrCat(t / 60, "m", t % 60 < 10 ? "0" : "", t % 60, "s");
  return absl::StrCat(t, "s");
}

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), enabled_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

void ProgressBar::Update(int64_t done, const std::string& extra) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? done / elapsed : 0;
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

void ProgressBar::Finish() {
  if (!enabled_) return;
  Update(total_);
  std::fprintf(stderr, "\n");
}

}  // namespace retina
