use std::fmt;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::{Error, Message, Result, Writer};

/// Keeps several batches in flight on one [`Writer`], so that a producer loop gets the
/// throughput of a wide window without holding futures itself.
///
/// [`write`](WriteWindow::write) starts a batch on a task of its own (so it makes
/// progress while the caller does something else) and returns as soon as fewer than
/// `batches` are in flight (waiting for one to finish when the window is full);
/// [`flush`](WriteWindow::flush) waits for all of them. On Kafka a window of 16 batches
/// of 500 keeps librdkafka's queues full through its `linger.ms`, where one awaited
/// batch at a time leaves them idle between batches.
///
/// ```
/// # async fn demo(writer: std::sync::Arc<dyn streams_core::Writer>) -> streams_core::Result<()> {
/// use streams_core::{Message, WriteWindow};
///
/// let mut window = WriteWindow::new(writer, 16);
/// for chunk in 0..100 {
///     let batch = (0..500).map(|i| Message::new("orders", format!("{chunk}-{i}"))).collect();
///     window.write(batch).await?;
/// }
/// window.flush().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// A failed batch is reported by the next `write` or `flush` after it finished, with the
/// writer's error (which names the failed messages where the writer does); batches
/// started after it may have been written. Dropping the window abandons the batches in
/// flight: whether they are written is up to the writer.
///
/// # Panics
///
/// [`write`](WriteWindow::write) outside a Tokio runtime.
pub struct WriteWindow {
    writer: Arc<dyn Writer>,
    batches: usize,
    in_flight: JoinSet<Result<()>>,
}

impl WriteWindow {
    /// A window of at most `batches` writes in flight (at least one).
    pub fn new(writer: Arc<dyn Writer>, batches: usize) -> Self {
        WriteWindow {
            writer,
            batches: batches.max(1),
            in_flight: JoinSet::new(),
        }
    }

    /// Starts writing `batch`; waits while the window is full.
    ///
    /// # Errors
    ///
    /// The error of a batch written earlier (see [`WriteWindow`]); `batch` was then
    /// not started.
    pub async fn write(&mut self, batch: Vec<Message>) -> Result<()> {
        // Collect what finished meanwhile, so an error is reported early.
        while let Some(done) = self.in_flight.try_join_next() {
            joined(done)?;
        }
        while self.in_flight.len() >= self.batches {
            if let Some(done) = self.in_flight.join_next().await {
                joined(done)?;
            }
        }
        let writer = self.writer.clone();
        self.in_flight
            .spawn(async move { writer.write(batch).await });
        Ok(())
    }

    /// Waits until every batch started is written.
    ///
    /// # Errors
    ///
    /// The first error of a batch; the others are still waited for.
    pub async fn flush(&mut self) -> Result<()> {
        let mut first = None;
        while let Some(done) = self.in_flight.join_next().await {
            if let Err(e) = joined(done) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Batches in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// A finished write task's result; a write that panicked is a failed write.
fn joined(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    done.map_err(|e| Error::driver("write window", "write", false, e))?
}

impl fmt::Debug for WriteWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteWindow")
            .field("writer", &self.writer)
            .field("batches", &self.batches)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::Error;

    /// Counts writes in flight, each held until `open` gives it a permit; fails the
    /// batch whose first message is named `fail`.
    #[derive(Debug)]
    struct Gate {
        now: AtomicUsize,
        peak: AtomicUsize,
        open: tokio::sync::Semaphore,
        written: Mutex<Vec<String>>,
    }

    impl Gate {
        fn new(permits: usize) -> Arc<Self> {
            Arc::new(Gate {
                now: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                open: tokio::sync::Semaphore::new(permits),
                written: Mutex::new(Vec::new()),
            })
        }
    }

    #[async_trait::async_trait]
    impl Writer for Gate {
        async fn write(&self, batch: Vec<Message>) -> Result<()> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            self.open.acquire().await.unwrap().forget();
            self.now.fetch_sub(1, Ordering::SeqCst);
            if batch[0].id == "fail" {
                return Err(Error::invalid("batch", "refused"));
            }
            let mut w = self.written.lock().unwrap();
            w.extend(batch.into_iter().map(|m| m.id));
            Ok(())
        }

        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    fn batch(first: &str, n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                let id = if i == 0 {
                    first.to_owned()
                } else {
                    format!("{first}-{i}")
                };
                Message::new("s", "x").with_id(id)
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_progress_on_their_own_and_the_window_bounds_them() {
        let gate = Gate::new(0);
        let mut window = WriteWindow::new(gate.clone(), 4);
        for b in 0..4 {
            window.write(batch(&format!("b{b}"), 10)).await.unwrap();
        }
        assert_eq!(window.in_flight(), 4);
        // Started without the window being awaited again.
        while gate.now.load(Ordering::SeqCst) < 4 {
            tokio::task::yield_now().await;
        }
        gate.open.add_permits(1000);
        for b in 4..20 {
            window.write(batch(&format!("b{b}"), 10)).await.unwrap();
            assert!(window.in_flight() <= 4);
        }
        window.flush().await.unwrap();
        assert_eq!(window.in_flight(), 0);
        assert_eq!(gate.written.lock().unwrap().len(), 200);
        assert_eq!(gate.peak.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_is_reported_and_the_others_still_finish() {
        // The gate stays shut until all three are in flight: a failure that finished
        // before the third `write` would be reported by that `write` instead.
        let gate = Gate::new(0);
        let mut window = WriteWindow::new(gate.clone(), 8);
        window.write(batch("a", 2)).await.unwrap();
        window.write(batch("fail", 2)).await.unwrap();
        window.write(batch("c", 2)).await.unwrap();
        while gate.now.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        gate.open.add_permits(1000);
        let err = window.flush().await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert_eq!(gate.written.lock().unwrap().len(), 4);
        window.flush().await.unwrap();
    }
}
