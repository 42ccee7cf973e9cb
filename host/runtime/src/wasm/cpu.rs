//! CPU time of Wasm guests. A guest runs inside a future polled by whichever tokio worker
//! picks it up (the agent's runtime or its pod's network runtime), so no thread is its own:
//! what is truthful is the CPU time of the thread *while it polls the guest's future* — the
//! guest's instructions (on wasmtime's fiber stack, on that thread) and the host calls it
//! makes. [`Metered`] reads the polling thread's CPU clock before and after every poll and
//! adds the difference to the container's [`CpuGauge`]. A busy guest yields at every epoch
//! tick (10 ms), so the cost is two clock reads per tick.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use super::CpuGauge;

/// Nanoseconds of CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`).
pub(crate) fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// `inner`, with the CPU time of each of its polls added to `gauge`.
pub(crate) struct Metered<F> {
    inner: Pin<Box<F>>,
    gauge: CpuGauge,
}

impl<F: Future> Metered<F> {
    pub(crate) fn new(inner: F, gauge: CpuGauge) -> Self {
        Metered {
            inner: Box::pin(inner),
            gauge,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let before = thread_cpu_ns();
        let out = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_ns().saturating_sub(before);
        self.gauge.fetch_add(spent, Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure: what metering costs a guest — two thread-clock reads per poll; a busy
    /// guest is polled once per epoch tick (100 times a second).
    /// `cargo test -p kedge-runtime --release --lib wasm::cpu::tests::meter_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn meter_cost_per_poll() {
        const EPOCH: std::time::Duration = std::time::Duration::from_millis(10);
        const N: u32 = 1_000_000;
        let started = std::time::Instant::now();
        let mut x = 0;
        for _ in 0..N {
            x ^= thread_cpu_ns();
        }
        std::hint::black_box(x);
        let per_read = started.elapsed() / N;
        let per_poll = per_read * 2;
        println!(
            "wasm CPU metering: {per_read:?} per clock read, {per_poll:?} per poll: {:.4} % \
             on top of a busy guest's CPU (one poll per 10 ms epoch tick); a guest polled \
             10,000 times a second (I/O) pays {:.2} % of a core",
            per_poll.as_secs_f64() / EPOCH.as_secs_f64() * 100.0,
            per_poll.as_secs_f64() * 10_000.0 * 100.0
        );
    }

    /// A future that burns CPU in its polls is charged what it burned; one that sleeps is
    /// charged next to nothing.
    #[tokio::test]
    async fn polls_are_charged_their_thread_cpu_time() {
        let busy = CpuGauge::default();
        // Each poll spins until its thread has run 20 ms (by the thread's CPU clock, so a
        // loaded machine, where 20 ms of wall time may be 12 ms of CPU, gives the same sum).
        let work = async {
            for _ in 0..5 {
                let until = thread_cpu_ns() + 20_000_000;
                while thread_cpu_ns() < until {
                    std::hint::black_box(0u64);
                }
                tokio::task::yield_now().await;
            }
        };
        Metered::new(work, busy.clone()).await;
        let charged = busy.load(Ordering::Relaxed);
        assert!(
            (100_000_000..160_000_000).contains(&charged),
            "100 ms of spinning charged {charged} ns"
        );
        let idle = CpuGauge::default();
        Metered::new(
            tokio::time::sleep(std::time::Duration::from_millis(100)),
            idle.clone(),
        )
        .await;
        assert!(
            idle.load(Ordering::Relaxed) < 10_000_000,
            "a sleep charged {} ns",
            idle.load(Ordering::Relaxed)
        );
    }
}
