#include "thread_pool.h"

#include <pthread.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace sparseprune {
namespace {

struct Pool {
  std::mutex run_mu;  // one parallel_run at a time
  std::mutex mu;
  std::condition_variable start_cv, done_cv;
  std::vector<std::thread> workers;
  const std::function<void(int)>* job = nullptr;
  int job_n = 0;
  int pending = 0;
  unsigned long long generation = 0;

  void worker_loop(int id) {
    unsigned long long seen = 0;
    for (;;) {
      const std::function<void(int)>* fn;
      {
        std::unique_lock<std::mutex> lk(mu);
        start_cv.wait(lk, [&] { return generation != seen; });
        seen = generation;
        if (id >= job_n) continue;
        fn = job;
      }
      (*fn)(id);
      std::lock_guard<std::mutex> lk(mu);
      if (--pending == 0) done_cv.notify_one();
    }
  }
};

// Leaked on purpose: worker threads never exit, and destroying a pool at interpreter exit while
// a worker still waits on its condition variable would be undefined behaviour.
Pool* g_pool = new Pool();

void reset_after_fork() {
  // Only the forking thread survives in the child; the old pool's threads are gone and its
  // mutexes may be locked. Start over with a fresh pool (the old one is leaked deliberately).
  g_pool = new Pool();
}

const int g_atfork_registered = pthread_atfork(nullptr, nullptr, reset_after_fork);

}  // namespace

void parallel_run(int n, const std::function<void(int)>& fn) {
  if (n <= 1) {
    if (n == 1) fn(0);
    return;
  }
  Pool& p = *g_pool;
  std::lock_guard<std::mutex> run_lock(p.run_mu);
  {
    std::lock_guard<std::mutex> lk(p.mu);
    // Workers take ids 1..n-1; grow the pool if this call wants more threads than before.
    while (static_cast<int>(p.workers.size()) < n - 1) {
      const int id = static_cast<int>(p.workers.size()) + 1;
      p.workers.emplace_back([&p, id] { p.worker_loop(id); });
    }
    p.job = &fn;
    p.job_n = n;
    p.pending = n - 1;
    ++p.generation;
  }
  p.start_cv.notify_all();
  fn(0);
  std::unique_lock<std::mutex> lk(p.mu);
  p.done_cv.wait(lk, [&] { return p.pending == 0; });
  p.job = nullptr;
}

}  // namespace sparseprune
