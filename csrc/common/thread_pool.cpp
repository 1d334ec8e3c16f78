#include "thread_pool.h"

#include <dlfcn.h>
#include <pthread.h>

#include <cstdlib>
#include <cstring>

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

// Set in a forked child: libgomp's thread team does not survive fork (a parallel region in the
// child can hang), so children use our own pool, which is rebuilt here.
bool g_forked_child = false;

void reset_after_fork() {
  // Only the forking thread survives in the child; the old pool's threads are gone and its
  // mutexes may be locked. Start over with a fresh pool (the old one is leaked deliberately).
  g_pool = new Pool();
  g_forked_child = true;
}

const int g_atfork_registered = pthread_atfork(nullptr, nullptr, reset_after_fork);

// The OpenMP runtime torch already loaded (libgomp on Linux wheels), found by symbol at run
// time: we neither link nor bundle it. Sharing torch's thread team matters on a small machine:
// after each of torch's parallel regions its workers spin for a while, and a second pool's
// threads would have to wait for those spinning cores (measured: our 2-thread batch-64 call ran
// 1.6x slower right after a torch op). SPARSEPRUNE_THREADING=pool forces our own pool.
struct Omp {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;
  int (*thread_num)() = nullptr;
  int (*num_threads)() = nullptr;
};

const Omp& omp() {
  static const Omp found = [] {
    Omp o;
    const char* mode = std::getenv("SPARSEPRUNE_THREADING");
    if (mode != nullptr && std::strcmp(mode, "pool") == 0) return o;
    o.parallel = reinterpret_cast<decltype(o.parallel)>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    o.thread_num = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
    o.num_threads = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_num_threads"));
    if (!o.parallel || !o.thread_num || !o.num_threads) o = Omp();
    return o;
  }();
  return found;
}

struct OmpJob {
  const std::function<void(int)>* fn;
  int n;
};

void omp_trampoline(void* data) {
  const OmpJob& job = *static_cast<const OmpJob*>(data);
  // The runtime may grant fewer threads than asked: each thread takes every nth task.
  const int team = omp().num_threads();
  for (int t = omp().thread_num(); t < job.n; t += team) (*job.fn)(t);
}

}  // namespace

const char* threading_backend() {
  return omp().parallel && !g_forked_child ? "openmp (shared with torch)" : "pool";
}

void parallel_run(int n, const std::function<void(int)>& fn) {
  if (n <= 1) {
    if (n == 1) fn(0);
    return;
  }
  if (omp().parallel && !g_forked_child) {
    OmpJob job{&fn, n};
    omp().parallel(omp_trampoline, &job, static_cast<unsigned>(n), 0);
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
