use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use streams_core::{
    call_batch_handler, call_handler, retry_after, Batch, BatchHandler, BatchSize,
    BatchSubscription, CancellationToken, Error, FailedMessage, Handler, Message, ReadTask, Reader,
    Result, Subscription, Writer, DELIVERY_ATTEMPT,
};
use tokio::time::Instant;

use crate::queue::{room_in_any, LaneQueue, Push, TryRecv, TrySendError};
use crate::retained::Retained;

/// A [`EventBus`](streams_core::EventBus) over a new in-process [`MemoryBus`] with default
/// settings: the one-line way to get a working bus.
pub fn event_bus() -> streams_core::EventBus {
    let chan = Arc::new(MemoryBus::new());
    streams_core::EventBus::new(chan.clone(), chan)
}

/// Settings of a [`MemoryBus`].
#[derive(Debug, Clone)]
pub struct MemoryBusBuilder {
    queue_depth: usize,
    concurrency: usize,
    fail_fast: bool,
}

impl Default for MemoryBusBuilder {
    fn default() -> Self {
        MemoryBusBuilder {
            queue_depth: 1024,
            concurrency: 1,
            fail_fast: false,
        }
    }
}

impl MemoryBusBuilder {
    /// Messages buffered per subscriber (split across its lanes); at least one per lane.
    /// Default 1024.
    pub fn with_queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth.max(1);
        self
    }

    /// Default bound on concurrent handlers per subscriber, when the read task does not
    /// set one. Default 1.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Makes [`Writer::write`] fail with [`Error::Full`] instead of waiting when a
    /// subscriber's buffer is full.
    pub fn with_fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// Builds the bus.
    pub fn build(self) -> MemoryBus {
        MemoryBus {
            inner: Arc::new(Inner {
                config: self,
                streams: RwLock::new(HashMap::new()),
                draining: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                next_anonymous: AtomicU64::new(0),
            }),
        }
    }
}

/// The in-process bus; implements [`Writer`] and [`Reader`]. Clones share the bus.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: MemoryBusBuilder,
    // Copy-on-write list of subscriber groups per stream, so publishing takes the lock
    // only long enough to clone an `Arc`.
    streams: RwLock<HashMap<String, Arc<[Arc<Group>]>>>,
    // Groups whose last member left and is still handling their backlog, by stream and
    // group name: a member rejoining under that name waits for it, so that one key's
    // messages are never handled by two members at once. Locked inside `streams`.
    draining: Mutex<HashMap<(String, String), CancellationToken>>,
    closed: AtomicBool,
    next_anonymous: AtomicU64,
}

/// One subscriber, or every reader sharing a consumer group.
///
/// Messages with one key go to one lane. Every member runs a worker per lane, and a
/// worker holds its lane's lock from taking a message until its handler returns: a lane
/// is served by one member at a time, one message at a time, in order, and the members
/// take turns (the lock is fair; a turn covers up to [`BURST`] messages already
/// waiting). A member that leaves stops taking messages; the others go on where it
/// stopped.
struct Group {
    name: String,
    lanes: Vec<Arc<LaneQueue>>,
    receivers: Vec<tokio::sync::Mutex<Lane>>,
    members: AtomicUsize,
    next_lane: AtomicUsize,
    /// Cancelled once the last member has handled the backlog.
    drained: CancellationToken,
    /// The `drained` of the previous group of this name, still draining when this one
    /// was made: workers start after it.
    after: Option<CancellationToken>,
}

impl Group {
    fn lane(&self, key: Option<&str>) -> &LaneQueue {
        &self.lanes[self.lane_index(key)]
    }

    /// The lane of a message: by its key, else the next in turn.
    fn lane_index(&self, key: Option<&str>) -> usize {
        let n = self.lanes.len();
        if n == 1 {
            return 0;
        }
        match key {
            Some(key) => (lane_hash(key) % n as u64) as usize,
            None => self.next_lane.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// Queues `msgs` on their lanes, in order within each lane, waiting for room.
    ///
    /// Each lane's messages go in under one lock (a message at a time, the publisher
    /// and the lane's worker met on the lock at every message), moved once, from the
    /// batch to the queue: a batch is hundreds of kilobytes of messages, and sorting it
    /// into a run per lane first cost a copy of all of it. When lanes are full it fills
    /// the others, then waits for room in any full one, so no lane's worker idles
    /// behind another's backlog. A closed lane (the group left, or the bus closed)
    /// drops its messages.
    async fn push(&self, msgs: Vec<Message>) {
        let n = self.lanes.len();
        if n == 1 || msgs.len() == 1 {
            let lane = match msgs.first() {
                Some(m) if n > 1 => self.lane(m.key.as_deref()),
                _ => &self.lanes[0],
            };
            let mut left = msgs.len();
            let mut msgs = msgs.into_iter();
            loop {
                match lane.push_some(&mut left, &mut msgs) {
                    Push::Done | Push::Closed => return,
                    Push::Full => lane.room().await,
                }
            }
        }
        // The lane of each message, and how many each lane has left to queue.
        let mut left = vec![0usize; n];
        let lane_of: Vec<usize> = msgs
            .iter()
            .map(|m| {
                let i = self.lane_index(m.key.as_deref());
                left[i] += 1;
                i
            })
            .collect();
        let mut slots: Vec<Option<Message>> = msgs.into_iter().map(Some).collect();
        // Where each lane's next message may be: a lane's messages go in order, so a
        // batch bigger than the queues is walked once per lane, not once per wait.
        let mut from = vec![0usize; n];
        loop {
            let mut full = Vec::new();
            for (i, lane) in self.lanes.iter().enumerate() {
                if left[i] == 0 {
                    continue;
                }
                let start = from[i];
                let next = &mut from[i];
                let mine = slots[start..]
                    .iter_mut()
                    .zip(&lane_of[start..])
                    .enumerate()
                    .filter(|&(_, (_, &l))| l == i)
                    .filter_map(|(j, (slot, _))| {
                        *next = start + j + 1;
                        slot.take()
                    });
                match lane.push_some(&mut left[i], mine) {
                    Push::Done => {}
                    Push::Closed => left[i] = 0,
                    Push::Full => full.push(&**lane),
                }
            }
            if full.is_empty() {
                return;
            }
            room_in_any(&full).await;
        }
    }

    fn close(&self) {
        for lane in &self.lanes {
            lane.close();
        }
    }
}

/// FNV-1a over the key's bytes: keys are short, and SipHash (the standard hasher, made
/// to resist flooding from outside, which lane choice does not need) cost more per
/// message than the rest of choosing the lane.
fn lane_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// A bus with default settings.
    pub fn new() -> Self {
        MemoryBusBuilder::default().build()
    }

    /// Settings for a new bus.
    pub fn builder() -> MemoryBusBuilder {
        MemoryBusBuilder::default()
    }

    /// Number of subscriber groups on a stream.
    pub fn subscribers(&self, stream: &str) -> usize {
        self.inner
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
            .map_or(0, |g| g.len())
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Refuses further writes; readers deliver what they hold, then end.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let streams = self.inner.streams.read().unwrap_or_else(|e| e.into_inner());
        for groups in streams.values() {
            for g in groups.iter() {
                g.close();
            }
        }
    }

    /// Writes a batch without waiting: fails when a subscriber's buffer is full.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`close`](Self::close); [`Error::Full`] when the first
    /// message found a full buffer, [`Error::PartialWrite`] naming the messages not
    /// written when a later one did (each message is delivered to all or to a prefix of
    /// its subscribers).
    pub fn try_write(&self, batch: Vec<Message>) -> Result<()> {
        self.check_open()?;
        let mut groups: Option<(String, Arc<[Arc<Group>]>)> = None;
        let mut iter = batch.into_iter().enumerate();
        while let Some((i, msg)) = iter.next() {
            if groups.as_ref().is_none_or(|(s, _)| *s != msg.stream) {
                groups = Some((msg.stream.clone(), self.groups_of(&msg.stream)));
            }
            let Some((_, groups)) = &groups else { continue };
            for g in groups.iter() {
                match g.lane(msg.key.as_deref()).try_send(msg.clone()) {
                    Ok(()) | Err(TrySendError::Closed) => {}
                    Err(TrySendError::Full(m)) => {
                        if i == 0 {
                            return Err(Error::Full { stream: m.stream });
                        }
                        let mut failed = vec![FailedMessage {
                            id: m.id,
                            reason: "subscriber buffer full".into(),
                        }];
                        failed.extend(iter.map(|(_, m)| FailedMessage {
                            id: m.id,
                            reason: "not attempted after a full buffer".into(),
                        }));
                        return Err(Error::PartialWrite {
                            failed,
                            retryable: true,
                        });
                    }
                }
            }
        }
        self.check_open()
    }

    /// Delivers `run`, messages of one stream, to each of its groups, waiting for room.
    async fn write_run(&self, run: Vec<Message>) {
        let Some(first) = run.first() else { return };
        let groups = self.groups_of(&first.stream);
        let Some((last, rest)) = groups.split_last() else {
            tracing::trace!(stream = %first.stream, count = run.len(), "no subscriber");
            return;
        };
        for g in rest {
            g.push(run.clone()).await;
        }
        last.push(run).await;
    }

    /// The subscriber groups of `stream`.
    fn groups_of(&self, stream: &str) -> Arc<[Arc<Group>]> {
        self.inner
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed("in-process bus"))
        } else {
            Ok(())
        }
    }

    fn join(&self, task: &ReadTask) -> Arc<Group> {
        let mut streams = self
            .inner
            .streams
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let groups = streams
            .entry(task.stream.clone())
            .or_insert_with(|| Arc::from(Vec::new()));
        if let Some(name) = &task.group {
            if let Some(g) = groups.iter().find(|g| &g.name == name) {
                g.members.fetch_add(1, Ordering::AcqRel);
                return g.clone();
            }
        }
        let name = task.group.clone().unwrap_or_else(|| {
            let n = self.inner.next_anonymous.fetch_add(1, Ordering::Relaxed);
            format!("\0anonymous-{n}")
        });
        let lanes = task
            .concurrency
            .unwrap_or(self.inner.config.concurrency)
            .max(1);
        let per_lane = (self.inner.config.queue_depth / lanes).max(1);
        let room = Arc::new(tokio::sync::Notify::new());
        let (senders, receivers) = (0..lanes)
            .map(|_| {
                let queue = Arc::new(LaneQueue::sharing(per_lane, room.clone()));
                (
                    queue.clone(),
                    tokio::sync::Mutex::new(Lane::new(queue, per_lane)),
                )
            })
            .unzip();
        let after = self
            .inner
            .draining
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(task.stream.clone(), name.clone()))
            .filter(|d| !d.is_cancelled())
            .cloned();
        let group = Arc::new(Group {
            name,
            lanes: senders,
            receivers,
            members: AtomicUsize::new(1),
            next_lane: AtomicUsize::new(0),
            drained: CancellationToken::new(),
            after,
        });
        if self.is_closed() {
            group.close();
        }
        let mut list: Vec<_> = groups.iter().cloned().collect();
        list.push(group.clone());
        *groups = Arc::from(list);
        group
    }

    /// Leaves a group; returns whether this was its last member (then the group no
    /// longer receives messages and its lanes are closed).
    fn leave(&self, stream: &str, group: &Arc<Group>) -> bool {
        let mut streams = self
            .inner
            .streams
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if group.members.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        self.inner
            .draining
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (stream.to_owned(), group.name.clone()),
                group.drained.clone(),
            );
        if let Some(groups) = streams.get_mut(stream) {
            let list: Vec<_> = groups
                .iter()
                .filter(|g| !Arc::ptr_eq(g, group))
                .cloned()
                .collect();
            if list.is_empty() {
                streams.remove(stream);
            } else {
                *groups = Arc::from(list);
            }
        }
        group.close();
        true
    }

    /// Marks a group whose last member left as drained: its backlog is handled.
    fn drained(&self, stream: &str, group: &Group) {
        group.drained.cancel();
        let mut draining = self
            .inner
            .draining
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = (stream.to_owned(), group.name.clone());
        // A later group of the same name may have left since and be draining in turn.
        if draining.get(&key).is_some_and(|d| d.is_cancelled()) {
            draining.remove(&key);
        }
    }
}

#[async_trait]
impl Writer for MemoryBus {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.inner.config.fail_fast {
            return self.try_write(batch);
        }
        self.check_open()?;
        if batch.windows(2).all(|w| w[0].stream == w[1].stream) {
            self.write_run(batch).await;
        } else {
            let mut batch = batch.into_iter().peekable();
            while let Some(first) = batch.next() {
                let mut run = vec![first];
                while let Some(m) = batch.next_if(|m| m.stream == run[0].stream) {
                    run.push(m);
                }
                self.write_run(run).await;
            }
        }
        self.check_open()
    }

    async fn close(&self) -> Result<()> {
        MemoryBus::close(self);
        Ok(())
    }
}

#[async_trait]
impl Reader for MemoryBus {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        let membership = self.attach(&task)?;
        Ok(Subscription::new(task.stream, move |handler, cancel| {
            membership.run(handler, cancel)
        }))
    }

    /// Batches natively: each lane's worker takes up to `max_messages` of its lane (the
    /// messages already waiting, then what arrives within `max_wait`) and hands them
    /// over as one batch, so a batch holds messages of the lane's keys in publish order
    /// and the task's `concurrency` is the number of batches handled at once. Failed
    /// messages are logged and not redelivered, as for per-message handlers.
    async fn subscribe_batch(&self, task: ReadTask, size: BatchSize) -> Result<BatchSubscription> {
        size.check()?;
        let membership = self.attach(&task)?;
        Ok(BatchSubscription::new(
            task.stream,
            move |handler, cancel| membership.run_batch(handler, size, cancel),
        ))
    }
}

impl MemoryBus {
    fn attach(&self, task: &ReadTask) -> Result<Membership> {
        if task.stream.is_empty() {
            return Err(Error::invalid("read task", "stream name is empty"));
        }
        task.refuse_partitions("in-process bus")?;
        task.refuse_args("the in-process bus", &[])?;
        // Joined now, so everything published from here on reaches this member.
        Ok(Membership {
            bus: self.clone(),
            group: self.join(task),
            stream: task.stream.clone(),
            left: false,
        })
    }
}

/// One member's place in a group, from `subscribe` until it leaves: when its run ends,
/// or when its subscription or run is dropped.
struct Membership {
    bus: MemoryBus,
    group: Arc<Group>,
    stream: String,
    left: bool,
}

impl Membership {
    async fn run(self, handler: Handler, cancel: CancellationToken) -> Result<()> {
        self.run_lanes(cancel, |stream, group, lane, stop| {
            lane_worker(stream, group, lane, handler.clone(), stop)
        })
        .await
    }

    async fn run_batch(
        self,
        handler: BatchHandler,
        size: BatchSize,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.run_lanes(cancel, |stream, group, lane, stop| {
            lane_batch_worker(stream, group, lane, handler.clone(), size, stop)
        })
        .await
    }

    /// Runs a worker per lane until cancelled or the bus closes.
    async fn run_lanes<F, Fut>(mut self, cancel: CancellationToken, mut worker: F) -> Result<()>
    where
        F: FnMut(String, Arc<Group>, usize, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (bus, group, stream) = (self.bus.clone(), self.group.clone(), self.stream.clone());
        let stop = CancellationToken::new();
        let mut workers = tokio::task::JoinSet::new();
        for lane in 0..group.receivers.len() {
            workers.spawn(worker(stream.clone(), group.clone(), lane, stop.clone()));
        }
        drop(worker);
        let last = tokio::select! {
            _ = cancel.cancelled() => {
                // The last member drains the backlog (its lanes are closed by `leave`);
                // other members leave it to the rest of the group.
                let last = bus.leave(&stream, &group);
                self.left = true;
                if !last {
                    stop.cancel();
                }
                last
            }
            _ = join_all(&mut workers, &stream) => {
                // Every lane closed: the bus was closed and the backlog delivered.
                self.left = true;
                bus.leave(&stream, &group)
            }
        };
        join_all(&mut workers, &stream).await;
        if last {
            bus.drained(&stream, &group);
        }
        Ok(())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // A subscription dropped unrun (or a run dropped midway) leaves at once; what it
        // had buffered stays with the rest of its group, or goes with it when it was the
        // last member.
        if !self.left && self.bus.leave(&self.stream, &self.group) {
            self.bus.drained(&self.stream, &self.group);
        }
    }
}

async fn join_all(workers: &mut tokio::task::JoinSet<()>, stream: &str) {
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined {
            tracing::error!(%stream, error = %e, "in-process bus worker failed");
        }
    }
}

/// Serves one lane of a group for one member: takes the lane's turn, handles a message
/// (and those already waiting behind it, a burst at most), gives the turn back.
async fn lane_worker(
    stream: String,
    group: Arc<Group>,
    lane: usize,
    mut handler: Handler,
    stop: CancellationToken,
) {
    if let Some(after) = &group.after {
        tokio::select! {
            _ = after.cancelled() => {}
            _ = stop.cancelled() => return,
        }
    }
    let lane = &group.receivers[lane];
    loop {
        if stop.is_cancelled() {
            return;
        }
        // A lone member finds the turn free: taken without the futures of a wait.
        let mut lane = match lane.try_lock() {
            Ok(lane) => lane,
            Err(_) => tokio::select! {
                lane = lane.lock() => lane,
                _ = stop.cancelled() => return,
            },
        };
        let Some(msg) = lane.next(&stop).await else {
            return;
        };
        handle(&stream, &mut handler, msg, &mut lane).await;
        // While it has the turn, the member also takes what is already waiting (a burst
        // at most), so that a lone member does not pay for the turn per message.
        for _ in 1..BURST {
            if stop.is_cancelled() {
                break;
            }
            match lane.try_next() {
                Some(msg) => handle(&stream, &mut handler, msg, &mut lane).await,
                None => break,
            }
        }
        // The turn passes only now, so the next message of this lane waits for this one.
        drop(lane);
    }
}

/// The receiving side of one lane of a group, with the lane's messages waiting for the
/// delay their handler asked for. Whoever holds the lane's turn serves both, so a
/// delayed message stays with the group when a member leaves.
// Aligned to two cache lines, as `LaneQueue` is: a group's lanes sit side by side and
// are written at every message by workers on different threads.
#[repr(align(128))]
struct Lane {
    rx: Arc<LaneQueue>,
    /// Messages taken from the queue in the last take (a burst at most) and not yet
    /// handed over: the lane's oldest, served before the queue.
    taken: VecDeque<Message>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    /// The lane's bound: with this many messages delayed, the lane takes no new ones
    /// until one is due, so publishers wait (backpressure) instead of memory growing.
    cap: usize,
    /// The channel is closed and empty; only delayed messages are left.
    closed: bool,
    seq: u64,
    /// The buffer the last handled message was packed into, for the next one
    /// ([`Retained::new_in`]): the lane handles one message at a time.
    packing: Vec<u8>,
}

/// A message waiting for its redelivery; ordered by due time, then by arrival.
struct Delayed {
    due: Instant,
    seq: u64,
    msg: Message,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl Lane {
    fn new(rx: Arc<LaneQueue>, cap: usize) -> Self {
        Lane {
            rx,
            taken: VecDeque::with_capacity(BURST),
            delayed: BinaryHeap::new(),
            cap,
            closed: false,
            seq: 0,
            packing: Vec::new(),
        }
    }

    /// The next message: a delayed one that is due, else a new one; `None` once the
    /// lane is closed and holds nothing, or when `stop` fires.
    async fn next(&mut self, stop: &CancellationToken) -> Option<Message> {
        loop {
            if self.delayed.is_empty() {
                // No delayed message (nearly always): a waiting message is taken without
                // a timer, and none is made while waiting.
                if let Some(m) = self.pop_taken() {
                    return Some(m);
                }
                if self.closed {
                    return None;
                }
                match self.rx.try_take(&mut self.taken, BURST) {
                    TryRecv::Message(m) => return Some(m),
                    TryRecv::Closed => {
                        self.closed = true;
                        continue;
                    }
                    TryRecv::Empty => {}
                }
                tokio::select! {
                    biased;
                    m = self.rx.take(&mut self.taken, BURST) => match m {
                        Some(m) => return Some(m),
                        None => self.closed = true,
                    },
                    _ = stop.cancelled() => return None,
                }
                continue;
            }
            if let Some(m) = self.try_next() {
                return Some(m);
            }
            let due = self.delayed.peek().map(|d| d.0.due);
            let take = !self.closed && self.delayed.len() < self.cap;
            if due.is_none() && !take {
                return None;
            }
            // `biased`: a due or waiting message is taken before cancellation is looked at.
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    return self.delayed.pop().map(|d| d.0.msg);
                }
                m = self.rx.take(&mut self.taken, BURST), if take => match m {
                    Some(m) => return Some(m),
                    None => self.closed = true,
                },
                _ = stop.cancelled() => return None,
            }
        }
    }

    /// A message that is ready now, without waiting: a delayed one that is due, else
    /// the oldest taken or waiting.
    fn try_next(&mut self) -> Option<Message> {
        if self
            .delayed
            .peek()
            .is_some_and(|d| d.0.due <= Instant::now())
        {
            return self.delayed.pop().map(|d| d.0.msg);
        }
        if let Some(m) = self.pop_taken() {
            return Some(m);
        }
        if self.closed || self.delayed.len() >= self.cap {
            return None;
        }
        match self.rx.try_take(&mut self.taken, BURST) {
            TryRecv::Message(m) => Some(m),
            TryRecv::Empty => None,
            TryRecv::Closed => {
                self.closed = true;
                None
            }
        }
    }

    /// The oldest message of the last take, handed over.
    fn pop_taken(&mut self) -> Option<Message> {
        let m = self.taken.pop_front()?;
        self.rx.handed_over();
        Some(m)
    }

    fn delay(&mut self, msg: Message, delay: std::time::Duration) {
        self.seq += 1;
        self.delayed.push(Reverse(Delayed {
            due: Instant::now() + delay,
            seq: self.seq,
            msg,
        }));
    }
}

/// Serves one lane of a group for one member with a batch handler: takes the lane's
/// turn, collects a batch (what is waiting, then what arrives within `max_wait`, up to
/// `max_messages`), hands it over, gives the turn back. A stop ends the collecting, not
/// the batch: what was taken is handed over.
async fn lane_batch_worker(
    stream: String,
    group: Arc<Group>,
    lane: usize,
    mut handler: BatchHandler,
    size: BatchSize,
    stop: CancellationToken,
) {
    if let Some(after) = &group.after {
        tokio::select! {
            _ = after.cancelled() => {}
            _ = stop.cancelled() => return,
        }
    }
    let lane = &group.receivers[lane];
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut rx = tokio::select! {
            rx = lane.lock() => rx,
            _ = stop.cancelled() => return,
        };
        let Some(first) = rx.next(&stop).await else {
            return;
        };
        let mut messages = vec![first];
        let deadline = Instant::now() + size.max_wait();
        while messages.len() < size.max_messages() {
            if let Some(m) = rx.try_next() {
                messages.push(m);
                continue;
            }
            if stop.is_cancelled() {
                break;
            }
            tokio::select! {
                biased;
                m = rx.next(&stop) => match m {
                    Some(m) => messages.push(m),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Kept for the redeliveries the handler may ask for: packed, payloads shared,
        // taken before the attempts are stamped.
        let mut copies: Vec<Option<Retained>> =
            messages.iter().map(|m| Some(Retained::new(m))).collect();
        for msg in &mut messages {
            let attempt = msg.delivery_attempt().unwrap_or(1);
            msg.metadata
                .insert_i64(DELIVERY_ATTEMPT, i64::from(attempt));
        }
        let count = messages.len();
        let outcome = call_batch_handler(&mut handler, Batch::new(stream.clone(), messages)).await;
        if !outcome.is_ok() {
            let mut dropped = 0;
            for (index, error) in outcome.into_failed() {
                // An index given twice (or out of range) is redelivered once at most.
                let Some(copy) = copies.get_mut(index).and_then(Option::take) else {
                    continue;
                };
                match retry_after(error.as_ref()) {
                    Some(delay) => {
                        let mut again = copy.unpack();
                        let attempt = again.delivery_attempt().unwrap_or(1);
                        again
                            .metadata
                            .insert_i64(DELIVERY_ATTEMPT, i64::from(attempt.saturating_add(1)));
                        rx.delay(again, delay);
                    }
                    None => dropped += 1,
                }
            }
            if dropped > 0 {
                tracing::debug!(
                    %stream, failed = dropped, count,
                    "batch handler failed messages; the in-process bus does not redeliver"
                );
            }
        }
        // The turn passes only now, so the lane's next batch waits for this one.
        drop(rx);
    }
}

/// Most messages a member handles from a lane before giving the other members a turn.
const BURST: usize = 32;

async fn handle(stream: &str, handler: &mut Handler, mut msg: Message, lane: &mut Lane) {
    let attempt = msg.delivery_attempt().unwrap_or(1);
    // Kept for a redelivery the handler may ask for: packed, the payload shared; taken
    // before the attempt is stamped, so that a first delivery's empty metadata is not
    // copied.
    let copy = Retained::new_in(&msg, std::mem::take(&mut lane.packing));
    msg.metadata
        .insert_i64(DELIVERY_ATTEMPT, i64::from(attempt));
    let Err(error) = call_handler(handler, msg).await else {
        lane.packing = copy.into_buffer().unwrap_or_default();
        return;
    };
    // `LoggingLayer` logs failures at the level the user chose; this is the bus's own
    // account of them.
    match retry_after(error.as_ref()) {
        Some(delay) => {
            let mut again = copy.unpack();
            tracing::debug!(%stream, id = %again.id, attempt, ?delay, %error, "handler failed; delivering the message again after the delay it asked for");
            again
                .metadata
                .insert_i64(DELIVERY_ATTEMPT, i64::from(attempt.saturating_add(1)));
            lane.delay(again, delay);
        }
        None => {
            tracing::debug!(%stream, id = %copy.id(), %error, "handler failed; the in-process bus does not redeliver");
            lane.packing = copy.into_buffer().unwrap_or_default();
        }
    }
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let streams = self.inner.streams.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("MemoryBus")
            .field("config", &self.inner.config)
            .field("streams", &streams.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::lane_hash;

    #[test]
    fn lane_hash_is_stable_and_spreads_keys() {
        assert_eq!(lane_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(lane_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let mut lanes = [0usize; 4];
        for k in 0..64 {
            lanes[(lane_hash(&format!("k{k}")) % 4) as usize] += 1;
        }
        assert!(lanes.iter().all(|&n| (8..=24).contains(&n)), "{lanes:?}");
    }
}
