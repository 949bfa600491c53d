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
pid_t FakeRank(const char* uid, const char* attempt) {
  const pid_t pid = fork();
  if (pid == 0) {
    setenv("RETINA_JOB_ID", "job-000001", 1);  // job ids repeat across services; uids do not
    setenv("RETINA_ATTEMPT", attempt, 1);
    execlp("perl", "perl", "-e", "sleep 60", "--", "--job-uid", uid, static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

TEST(KillEarlierAttempts, KillsOnlyEarlierAttemptsOfTheSameJob) {
  const pid_t stale = FakeRank("uid-x", "1"), newer = FakeRank("uid-x", "3"), other = FakeRank("uid-y", "1");
  // Until each has exec'd (its environ is then the new image's).
  for (int i = 0; i < 200; ++i) {
    std::vector<char> buf(64, 0);
    if (readlink(("/proc/" + std::to_string(other) + "/exe").c_str(), buf.data(), buf.size() - 1) > 0 &&
        std::string(buf.data()).find("perl") != std::string::npos &&
        readlink(("/proc/" + std::to_string(stale) + "/exe").c_str(), buf.data(), buf.size() - 1) > 0 &&
        std::string(buf.data()).find("perl") != std::string::npos) {
      break;
    }
    usleep(10000);
  }
  usleep(50000);
  EXPECT_THAT(KillEarlierAttempts("uid-x", 2), ::testing::ElementsAre(stale));
  EXPECT_THAT(KillEarlierAttempts("", 9), ::testing::IsEmpty()) << "no uid: nothing";
  int status = 0;
  ASSERT_EQ(waitpid(stale, &status, 0), stale);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  for (pid_t alive : {newer, other}) {
    EXPECT_EQ(waitpid(alive, &status, WNOHANG), 0) << "pid " << alive << " was killed";
    kill(alive, SIGKILL);
    waitpid(alive, &status, 0);
  }
}

}  // namespace
}  // namespace retina::worker
