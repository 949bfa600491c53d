// services/worker/rank_process.h: a worker starting attempt N of a job kills
// the ranks of earlier attempts of that job (by its uid) still alive on its
// host (the orphans of a killed worker), and nothing else.
#include "services/worker/rank_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace retina::worker {
namespace {

// A rank of (job uid, attempt): `perl -e 'sleep 60' -- --job-uid UID` (perl is
// essential in Debian) with its RETINA_ATTEMPT (as common/rank_launch.h gives).
// With `other_host`, in a network namespace of its own (unshare --net): a
// process of another host that shares this kernel (tests/hosts, containers).
pid_t FakeRank(const char* uid, const char* attempt, bool other_host = false) {
  const pid_t pid = fork();
  if (pid == 0) {
    setenv("RETINA_JOB_ID", "job-000001", 1);  // job ids repeat across services; uids do not
    setenv("RETINA_ATTEMPT", attempt, 1);
    if (other_host) {
      execlp("unshare", "unshare", "--net", "perl", "-e", "sleep 60", "--", "--job-uid", uid, static_cast<char*>(nullptr));
    } else {
      execlp("perl", "perl", "-e", "sleep 60", "--", "--job-uid", uid, static_cast<char*>(nullptr));
    }
    _exit(127);
  }
  return pid;
}

TEST(KillEarlierAttempts, KillsOnlyEarlierAttemptsOfTheSameJob) {
  const pid_t stale = FakeRank("uid-x", "1"), newer = FakeRank("uid-x", "3"), other = FakeRank("uid-y", "1");
  // Another host's stale rank (only where this process may unshare: root).
  const pid_t elsewhere = geteuid() == 0 ? FakeRank("uid-x", "1", /*other_host=*/true) : -1;
  // Until each runs perl (its command line and environ are then the rank's,
  // and `elsewhere` has its own network namespace).
  auto runs_perl = [](pid_t pid) {
    std::vector<char> buf(256, 0);
    return pid < 0 || (readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), buf.data(), buf.size() - 1) > 0 &&
                       std::string(buf.data()).find("perl") != std::string::npos);
  };
  for (int i = 0; i < 500 && !(runs_perl(stale) && runs_perl(newer) && runs_perl(other) && runs_perl(elsewhere)); ++i) {
    usleep(10000);
  }
  EXPECT_THAT(KillEarlierAttempts("uid-x", 2), ::testing::ElementsAre(stale));
  EXPECT_THAT(KillEarlierAttempts("", 9), ::testing::IsEmpty()) << "no uid: nothing";
  int status = 0;
  ASSERT_EQ(waitpid(stale, &status, 0), stale);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  for (pid_t alive : {newer, other, elsewhere}) {
    if (alive < 0) continue;
    EXPECT_EQ(waitpid(alive, &status, WNOHANG), 0) << "pid " << alive << " was killed";
    kill(alive, SIGKILL);
    waitpid(alive, &status, 0);
  }
}

}  // namespace
}  // namespace retina::worker
