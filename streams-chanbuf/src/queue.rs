//! The bounded queue of one lane: many publishers, one worker at a time (whoever holds
//! the lane's turn).
//!
//! A mutex around a `VecDeque`, and a wake-up only for a side that said it is waiting:
//! a message costs each side one uncontended lock. (The MPMC channel this replaced paid
//! for a lock-free queue and, on every send and every receive, the lock of its listener
//! list, to wake receivers and senders that were nearly never there.)

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use streams_core::Message;
use tokio::sync::Notify;

/// Why [`LaneQueue::try_send`] gave the message back.
// The message moves through by value, as it does through the queue: boxing it to make
// the error small would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum TrySendError {
    /// The queue holds its bound.
    Full(Message),
    /// The queue was closed (its group left, or the bus closed); the message is dropped.
    Closed,
}

/// What [`LaneQueue::try_recv`] found.
#[allow(clippy::large_enum_variant)] // as for `TrySendError`
pub(crate) enum TryRecv {
    /// The oldest message.
    Message(Message),
    /// Nothing now; more may come.
    Empty,
    /// Closed and empty: nothing will come.
    Closed,
}

/// A lane's bounded queue; see the module docs.
pub(crate) struct LaneQueue {
    state: Mutex<State>,
    cap: usize,
    /// Wakes the worker waiting for a message.
    readable: Notify,
    /// Wakes publishers waiting for room.
    writable: Notify,
}

struct State {
    queue: VecDeque<Message>,
    closed: bool,
    /// The worker registered to be woken and found the queue empty.
    reader_waiting: bool,
    /// A publisher registered to be woken and found the queue full.
    writers_waiting: bool,
}

impl LaneQueue {
    /// A queue holding at most `cap` messages (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        LaneQueue {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(cap.min(4096)),
                closed: false,
                reader_waiting: false,
                writers_waiting: false,
            }),
            cap,
            readable: Notify::new(),
            writable: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under the lock; recover the state all the same.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` if there is room, without waiting.
    #[allow(clippy::result_large_err)] // as for `TrySendError`
    pub(crate) fn try_send(&self, msg: Message) -> Result<(), TrySendError> {
        let mut state = self.lock();
        if state.closed {
            return Err(TrySendError::Closed);
        }
        if state.queue.len() >= self.cap {
            return Err(TrySendError::Full(msg));
        }
        state.queue.push_back(msg);
        let wake = std::mem::take(&mut state.reader_waiting);
        drop(state);
        if wake {
            self.readable.notify_waiters();
        }
        Ok(())
    }

    /// Queues `msg`, waiting for room; gives it back when the queue is (or gets) closed.
    pub(crate) async fn send(&self, msg: Message) -> Result<(), Message> {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(msg);
                }
                if state.queue.len() < self.cap {
                    state.queue.push_back(msg);
                    let wake = std::mem::take(&mut state.reader_waiting);
                    drop(state);
                    if wake {
                        self.readable.notify_waiters();
                    }
                    return Ok(());
                }
                // Registered before the lock is let go: a receive from here on wakes it.
                notified.as_mut().enable();
                state.writers_waiting = true;
            }
            notified.await;
        }
    }

    /// The oldest message, without waiting.
    pub(crate) fn try_recv(&self) -> TryRecv {
        let mut state = self.lock();
        match state.queue.pop_front() {
            Some(msg) => {
                let wake = self.room_for_writers(&mut state);
                drop(state);
                if wake {
                    self.writable.notify_waiters();
                }
                TryRecv::Message(msg)
            }
            None if state.closed => TryRecv::Closed,
            None => TryRecv::Empty,
        }
    }

    /// The oldest message, waiting for one; `None` once the queue is closed and empty.
    pub(crate) async fn recv(&self) -> Option<Message> {
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            {
                let mut state = self.lock();
                if let Some(msg) = state.queue.pop_front() {
                    let wake = self.room_for_writers(&mut state);
                    drop(state);
                    if wake {
                        self.writable.notify_waiters();
                    }
                    return Some(msg);
                }
                if state.closed {
                    return None;
                }
                notified.as_mut().enable();
                state.reader_waiting = true;
            }
            notified.await;
        }
    }

    /// Whether to wake the publishers waiting for room, after a message was taken: only
    /// once the queue is down to half its bound. Woken at every message taken, a
    /// publisher that keeps the queue full would be woken to add one message, sleep,
    /// and be woken again, a thread switch per message on both sides; from half, it
    /// adds half a queue per wake-up.
    fn room_for_writers(&self, state: &mut State) -> bool {
        state.writers_waiting && state.queue.len() <= self.cap / 2 && {
            state.writers_waiting = false;
            true
        }
    }

    /// Refuses further messages and wakes everyone waiting; what is queued can still be
    /// received.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_waiters();
        self.writable.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn msg(i: usize) -> Message {
        Message::new("s", format!("{i}"))
    }

    /// A queue of `cap` filled to its bound, and a task sending one more: it answers
    /// whether the message went in.
    async fn full_with_a_waiting_sender(
        cap: usize,
    ) -> (Arc<LaneQueue>, tokio::task::JoinHandle<bool>) {
        let q = Arc::new(LaneQueue::new(cap));
        for i in 0..cap {
            q.try_send(msg(i)).ok().unwrap();
        }
        let sender = {
            let q = q.clone();
            tokio::spawn(async move { q.send(msg(cap)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sender.is_finished(), "the sender waits for room");
        (q, sender)
    }

    #[tokio::test]
    async fn holds_its_bound_and_keeps_the_order() {
        let q = LaneQueue::new(2);
        assert!(q.try_send(msg(0)).is_ok());
        assert!(q.try_send(msg(1)).is_ok());
        assert!(matches!(q.try_send(msg(2)), Err(TrySendError::Full(_))));
        for i in 0..2 {
            match q.try_recv() {
                TryRecv::Message(m) => assert_eq!(m.data, format!("{i}")),
                _ => panic!("message {i} missing"),
            }
        }
        assert!(matches!(q.try_recv(), TryRecv::Empty));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_sender_gets_room_and_a_waiting_receiver_gets_the_message() {
        let (q, sender) = full_with_a_waiting_sender(1).await;
        assert_eq!(q.recv().await.unwrap().data, "0");
        assert!(sender.await.unwrap());
        assert_eq!(q.recv().await.unwrap().data, "1");

        let receiver = {
            let q = q.clone();
            tokio::spawn(async move { q.recv().await.map(|m| m.data) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.try_send(msg(2)).ok().unwrap();
        assert_eq!(receiver.await.unwrap().unwrap(), "2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_sender_is_woken_once_half_the_queue_is_free() {
        let (q, sender) = full_with_a_waiting_sender(4).await;
        assert!(q.recv().await.is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sender.is_finished(), "three of four queued: not woken yet");
        assert!(q.recv().await.is_some());
        assert!(tokio::time::timeout(Duration::from_secs(5), sender)
            .await
            .expect("woken at half")
            .unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_fails_waiting_senders_and_lets_the_backlog_drain() {
        let (q, sender) = full_with_a_waiting_sender(1).await;
        q.close();
        assert!(!sender.await.unwrap(), "a waiting send fails on close");
        assert!(matches!(q.try_send(msg(2)), Err(TrySendError::Closed)));
        assert_eq!(q.recv().await.unwrap().data, "0");
        assert!(q.recv().await.is_none());
        assert!(matches!(q.try_recv(), TryRecv::Closed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_and_one_receiver_lose_nothing() {
        let q = Arc::new(LaneQueue::new(8));
        let senders: Vec<_> = (0..4)
            .map(|s| {
                let q = q.clone();
                tokio::spawn(async move {
                    for i in 0..5_000 {
                        q.send(msg(s * 10_000 + i)).await.ok().unwrap();
                    }
                })
            })
            .collect();
        let mut last = [None::<usize>; 4];
        for _ in 0..20_000 {
            let m = tokio::time::timeout(Duration::from_secs(10), q.recv())
                .await
                .expect("no lost wake-up")
                .unwrap();
            let n: usize = std::str::from_utf8(&m.data).unwrap().parse().unwrap();
            let (s, i) = (n / 10_000, n % 10_000);
            assert!(last[s].is_none_or(|l| l < i), "sender {s} out of order");
            last[s] = Some(i);
        }
        for s in senders {
            s.await.unwrap();
        }
        assert!(matches!(q.try_recv(), TryRecv::Empty));
    }
}
