//! The bounded queue of one lane: many publishers, one worker at a time (whoever holds
//! the lane's turn).
//!
//! A mutex around a `VecDeque`, and a wake-up only for a side that said it is waiting.
//! Both sides move messages in runs under one lock: a publisher pushes the messages of a
//! batch that go to one lane under one lock, and the worker takes what is
//! waiting (a burst at most) under one lock into a buffer of its own. Locking per
//! message, the two sides met on the lock at every message and, on two cores, spent
//! more time handing the lock over than moving messages. (The MPMC channel before
//! that paid for a lock-free queue and, on every send and every receive, the lock of
//! its listener list, to wake receivers and senders that were nearly never there.)
//!
//! The bound counts the messages the worker has taken and not yet handed to its handler
//! (`held`), so a burst taken does not make room for a burst more: the queue and the
//! worker's buffer together hold at most the bound, as the queue alone did. Publishers
//! waiting for room are woken when the worker comes back for more.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use streams_core::Message;
use tokio::sync::Notify;

/// Why a push gave the message back.
// The message moves through by value, as it does through the queue: boxing it to make
// the error small would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum TrySendError {
    /// The queue holds its bound.
    Full(Message),
    /// The queue was closed (its group left, or the bus closed); the message is dropped.
    Closed,
}

/// What [`LaneQueue::push_some`] did.
pub(crate) enum Push {
    /// Every message went in.
    Done,
    /// The queue filled; the rest are still the caller's.
    Full,
    /// The queue was closed (its group left, or the bus closed); nothing went in.
    Closed,
}

/// What [`LaneQueue::try_take`] found.
#[allow(clippy::large_enum_variant)] // as for `TrySendError`
pub(crate) enum TryRecv {
    /// The oldest message (those behind it went to the worker's buffer).
    Message(Message),
    /// Nothing now; more may come.
    Empty,
    /// Closed and empty: nothing will come.
    Closed,
}

/// A lane's bounded queue; see the module docs.
// Aligned to two cache lines (the prefetcher pulls lines in pairs): a group's lanes are
// made one after another, and lanes next to each other in memory would have workers on
// different threads invalidate each other's lines at every message.
#[repr(align(128))]
pub(crate) struct LaneQueue {
    state: Mutex<State>,
    cap: usize,
    /// Wakes the worker waiting for a message.
    readable: Notify,
    /// Wakes publishers waiting for room: shared by a group's lanes, so a publisher
    /// waiting on several full lanes goes on when any of them has room.
    writable: Arc<Notify>,
    /// Messages in the worker's buffer, taken and not yet handed to its handler: they
    /// count against the bound. Set by a take, counted down by the worker as it hands
    /// them over, read by publishers under the lock.
    held: AtomicUsize,
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
    #[cfg(test)]
    pub(crate) fn new(cap: usize) -> Self {
        Self::sharing(cap, Arc::default())
    }

    /// A queue holding at most `cap` messages (at least one) that signals room through
    /// `writable`, which the other lanes of its group share.
    pub(crate) fn sharing(cap: usize, writable: Arc<Notify>) -> Self {
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
            writable,
            held: AtomicUsize::new(0),
        }
    }

    /// How many more messages the queue takes now.
    fn free(&self, state: &State) -> usize {
        self.cap
            .saturating_sub(state.queue.len() + self.held.load(Ordering::Relaxed))
    }

    /// The worker handed a message of its buffer to its handler.
    pub(crate) fn handed_over(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under the lock; recover the state all the same.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` if there is room, without waiting.
    #[allow(clippy::result_large_err)] // as for `TrySendError`
    pub(crate) fn try_send(&self, msg: Message) -> Result<(), TrySendError> {
        let mut slot = Some(msg);
        match self.push_some(&mut 1, std::iter::from_fn(|| slot.take())) {
            Push::Closed => Err(TrySendError::Closed),
            Push::Done | Push::Full => slot.map_or(Ok(()), |m| Err(TrySendError::Full(m))),
        }
    }

    /// Queues as many of the `left` messages `msgs` yields as there is room for, under
    /// one lock, counting them off `left`; takes no more from `msgs` than it queues.
    pub(crate) fn push_some(&self, left: &mut usize, msgs: impl Iterator<Item = Message>) -> Push {
        let mut state = self.lock();
        if state.closed {
            return Push::Closed;
        }
        let (before, free) = (state.queue.len(), self.free(&state));
        state.queue.extend(msgs.take(free.min(*left)));
        let pushed = state.queue.len() - before;
        *left -= pushed.min(*left);
        let wake = pushed > 0 && std::mem::take(&mut state.reader_waiting);
        drop(state);
        if wake {
            self.readable.notify_waiters();
        }
        if *left == 0 {
            Push::Done
        } else {
            Push::Full
        }
    }

    /// Waits until the queue has room or is closed (woken once half its bound is free).
    pub(crate) async fn room(&self) {
        room_in_any(&[self]).await;
    }

    /// Whether the queue has room or is closed; if not, marks a publisher as waiting,
    /// to be woken through the room signal.
    fn has_room_or_wait(&self) -> bool {
        let mut state = self.lock();
        if state.closed || self.free(&state) > 0 {
            return true;
        }
        state.writers_waiting = true;
        false
    }

    /// The oldest message without waiting, and up to `max - 1` more behind it moved
    /// into `rest`, the worker's buffer, which the caller has emptied first.
    pub(crate) fn try_take(&self, rest: &mut VecDeque<Message>, max: usize) -> TryRecv {
        let mut state = self.lock();
        match self.take_locked(&mut state, rest, max) {
            Some(msg) => TryRecv::Message(msg),
            None if state.closed => TryRecv::Closed,
            None => TryRecv::Empty,
        }
    }

    /// As [`try_take`](Self::try_take), waiting for a message; `None` once the queue is
    /// closed and empty.
    pub(crate) async fn take(&self, rest: &mut VecDeque<Message>, max: usize) -> Option<Message> {
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            {
                let mut state = self.lock();
                if let Some(msg) = self.take_locked(&mut state, rest, max) {
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

    /// Takes under the lock, and wakes the waiting publishers if there is room now.
    fn take_locked(
        &self,
        state: &mut State,
        rest: &mut VecDeque<Message>,
        max: usize,
    ) -> Option<Message> {
        let first = state.queue.pop_front();
        if first.is_some() {
            let more = state.queue.len().min(max.saturating_sub(1));
            rest.extend(state.queue.drain(..more));
        }
        self.held.store(rest.len(), Ordering::Relaxed);
        self.wake_writers_if_room(state);
        first
    }

    fn wake_writers_if_room(&self, state: &mut State) {
        // Only once the queue is down to half its bound: woken at every message taken,
        // a publisher that keeps the queue full would be woken to add one message,
        // sleep, and be woken again, a thread switch per message on both sides; from
        // half, it adds half a queue per wake-up.
        if state.writers_waiting
            && state.queue.len() + self.held.load(Ordering::Relaxed) <= self.cap / 2
        {
            state.writers_waiting = false;
            self.writable.notify_waiters();
        }
    }

    /// Refuses further messages and wakes everyone waiting; what is queued can still be
    /// taken.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_waiters();
        self.writable.notify_waiters();
    }
}

/// Waits until one of `lanes`, which share one room signal, has room or is closed.
pub(crate) async fn room_in_any(lanes: &[&LaneQueue]) {
    let Some(first) = lanes.first() else { return };
    debug_assert!(
        lanes
            .iter()
            .all(|l| Arc::ptr_eq(&l.writable, &first.writable)),
        "lanes waited on together share one room signal"
    );
    let notified = first.writable.notified();
    tokio::pin!(notified);
    // Registered before any lane is looked at: room made from here on wakes it.
    notified.as_mut().enable();
    // Every lane is marked (no short cut), so whichever frees room first wakes it.
    let mut ready = false;
    for lane in lanes {
        ready |= lane.has_room_or_wait();
    }
    if !ready {
        notified.await;
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

    /// Queues `m` as the bus does, waiting for room; whether it went in.
    async fn send(q: &LaneQueue, m: Message) -> bool {
        let (mut left, mut run) = (1, std::iter::once(m));
        loop {
            match q.push_some(&mut left, &mut run) {
                Push::Done => return true,
                Push::Closed => return false,
                Push::Full => q.room().await,
            }
        }
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
            tokio::spawn(async move { send(&q, msg(cap)).await })
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
            match q.try_take(&mut VecDeque::new(), 1) {
                TryRecv::Message(m) => assert_eq!(m.data, format!("{i}")),
                _ => panic!("message {i} missing"),
            }
        }
        assert!(matches!(
            q.try_take(&mut VecDeque::new(), 1),
            TryRecv::Empty
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_sender_gets_room_and_a_waiting_receiver_gets_the_message() {
        let (q, sender) = full_with_a_waiting_sender(1).await;
        assert_eq!(q.take(&mut VecDeque::new(), 1).await.unwrap().data, "0");
        assert!(sender.await.unwrap());
        assert_eq!(q.take(&mut VecDeque::new(), 1).await.unwrap().data, "1");

        let receiver = {
            let q = q.clone();
            tokio::spawn(async move { q.take(&mut VecDeque::new(), 1).await.map(|m| m.data) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.try_send(msg(2)).ok().unwrap();
        assert_eq!(receiver.await.unwrap().unwrap(), "2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_sender_is_woken_once_half_the_queue_is_free() {
        let (q, sender) = full_with_a_waiting_sender(4).await;
        assert!(q.take(&mut VecDeque::new(), 1).await.is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sender.is_finished(), "three of four queued: not woken yet");
        assert!(q.take(&mut VecDeque::new(), 1).await.is_some());
        assert!(tokio::time::timeout(Duration::from_secs(5), sender)
            .await
            .expect("woken at half")
            .unwrap());
    }

    #[tokio::test]
    async fn a_burst_taken_counts_against_the_bound_until_handed_over() {
        let q = LaneQueue::new(4);
        for i in 0..4 {
            q.try_send(msg(i)).ok().unwrap();
        }
        let mut rest = VecDeque::new();
        match q.try_take(&mut rest, 8) {
            TryRecv::Message(m) => assert_eq!(m.data, "0"),
            _ => panic!("message 0 missing"),
        }
        assert_eq!(
            rest.len(),
            3,
            "the rest of the burst went to the worker's buffer"
        );
        // The one handed over no longer counts; the three in the buffer do.
        assert!(q.try_send(msg(4)).is_ok());
        assert!(matches!(q.try_send(msg(5)), Err(TrySendError::Full(_))));
        let order: Vec<_> = rest
            .drain(..)
            .inspect(|_| q.handed_over())
            .map(|m| m.data)
            .collect();
        assert_eq!(order, ["1", "2", "3"]);
        // Handed over, they no longer count.
        for i in 5..8 {
            assert!(q.try_send(msg(i)).is_ok(), "message {i}");
        }
        assert!(matches!(q.try_send(msg(8)), Err(TrySendError::Full(_))));
        match q.try_take(&mut rest, 8) {
            TryRecv::Message(m) => assert_eq!(m.data, "4"),
            _ => panic!("message 4 missing"),
        }
        assert_eq!(rest.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_pushed_under_one_lock_wakes_a_waiting_worker() {
        let q = Arc::new(LaneQueue::new(8));
        let worker = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut rest = VecDeque::new();
                let first = q.take(&mut rest, 8).await.unwrap();
                let mut all = vec![first.data];
                all.extend(rest.into_iter().map(|m| m.data));
                all
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut left = 3;
        assert!(matches!(
            q.push_some(&mut left, (0..3).map(msg)),
            Push::Done
        ));
        assert_eq!(left, 0);
        let got = tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .expect("woken by the push")
            .unwrap();
        assert_eq!(got, ["0", "1", "2"], "one take, in order");
    }

    #[tokio::test]
    async fn a_run_keeps_what_does_not_fit_and_a_closed_queue_takes_nothing() {
        let q = LaneQueue::new(2);
        let (mut left, mut run) = (3, (0..3).map(msg));
        assert!(matches!(q.push_some(&mut left, &mut run), Push::Full));
        assert_eq!(left, 1);
        q.close();
        assert!(matches!(q.push_some(&mut left, &mut run), Push::Closed));
        assert_eq!(left, 1);
        assert_eq!(
            run.next().unwrap().data,
            "2",
            "the message that did not fit was not taken from the caller"
        );
        for i in 0..2 {
            let m = q.take(&mut VecDeque::new(), 1).await.unwrap();
            assert_eq!(m.data, format!("{i}"), "the backlog drains after close");
        }
        assert!(q.take(&mut VecDeque::new(), 1).await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_fails_waiting_senders_and_lets_the_backlog_drain() {
        let (q, sender) = full_with_a_waiting_sender(1).await;
        q.close();
        assert!(!sender.await.unwrap(), "a waiting send fails on close");
        assert!(matches!(q.try_send(msg(2)), Err(TrySendError::Closed)));
        assert_eq!(q.take(&mut VecDeque::new(), 1).await.unwrap().data, "0");
        assert!(q.take(&mut VecDeque::new(), 1).await.is_none());
        assert!(matches!(
            q.try_take(&mut VecDeque::new(), 1),
            TryRecv::Closed
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_and_one_receiver_lose_nothing() {
        let q = Arc::new(LaneQueue::new(8));
        let senders: Vec<_> = (0..4)
            .map(|s| {
                let q = q.clone();
                tokio::spawn(async move {
                    for i in 0..5_000 {
                        assert!(send(&q, msg(s * 10_000 + i)).await);
                    }
                })
            })
            .collect();
        // Taken in bursts, handed over one by one, as a lane's worker does.
        let mut last = [None::<usize>; 4];
        let mut rest = VecDeque::new();
        let mut seen = 0;
        while seen < 20_000 {
            let first = tokio::time::timeout(Duration::from_secs(10), q.take(&mut rest, 5))
                .await
                .expect("no lost wake-up")
                .unwrap();
            assert!(rest.len() < 5, "a burst is at most what was asked");
            for m in std::iter::once(first).chain(rest.drain(..).inspect(|_| q.handed_over())) {
                let n: usize = std::str::from_utf8(&m.data).unwrap().parse().unwrap();
                let (s, i) = (n / 10_000, n % 10_000);
                assert!(last[s].is_none_or(|l| l < i), "sender {s} out of order");
                last[s] = Some(i);
                seen += 1;
            }
        }
        for s in senders {
            s.await.unwrap();
        }
        assert!(matches!(
            q.try_take(&mut VecDeque::new(), 1),
            TryRecv::Empty
        ));
    }
}
