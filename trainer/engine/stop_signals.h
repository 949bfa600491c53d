// SIGTERM/SIGUSR1 as a stop request for the run in progress (the worker's
// cancel and preemption, Slurm's --signal): the handler only records the
// signal; the run looks at Requested() at its next step or round, finishes
// it, and stops with kPreempted (exit 75). One StopSignals per run; the
// previous handlers come back when it goes.
#pragma once

#include <signal.h>

namespace retina::trainer {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal received since construction, 0 for none.
  static int Requested();

 private:
  struct sigaction old_term_ {}, old_usr1_ {};
};

}  // namespace retina::trainer
