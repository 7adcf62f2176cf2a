//! Payments with a transactional outbox, agentless: the relay runs inside the service.
//!
//! Each payment is stored and its `payments.created` event written to the outbox table
//! in one PostgreSQL transaction, so the event exists exactly when the payment does.
//! A relay in the same process, woken by the outbox after each commit, moves the
//! events to the in-process bus, where a subscriber prints them. A payment that fails
//! validation rolls back and publishes nothing.
//!
//! Needs PostgreSQL (`STREAMS_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, as in `docker-compose.yml`).
//!
//! Run: `cargo run -p streams-examples --example payments_agentless --features sql`
//!
//! With `-- asyncapi` it prints the service's AsyncAPI document, written from the
//! registry of its bus, and exits without touching the database:
//! `cargo run -p streams-examples --example payments_agentless --features sql -- asyncapi`.

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streams_chanbuf::MemoryBus;
use streams_core::Relay;
use streams_core::{BoxError, CancellationToken, EventBus, Message};
use streams_examples::payments::{self, PaymentCreated};
use streams_sql::sqlx::{self, PgPool};
use streams_sql::{PgOutbox, PgOutboxStore};
use tokio::sync::Notify;

const OUTBOX: &str = "payments_egress";

/// The service's one operation: store a payment and its event, atomically.
async fn create_payment(
    pool: &PgPool,
    outbox: &PgOutbox,
    bus: &EventBus,
    payment_id: &str,
    account: &str,
    cents: i64,
) -> Result<(), BoxError> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO payments (id, account, cents) VALUES ($1, $2, $3)")
        .bind(payment_id)
        .bind(account)
        .bind(cents)
        .execute(&mut *tx)
        .await?;
    let event = PaymentCreated {
        payment_id: payment_id.into(),
        account: account.into(),
        cents,
    };
    let message = bus.publisher().message(payments::STREAM, &event)?;
    outbox.write(&mut tx, &[message]).await?;
    if cents <= 0 {
        // Dropping the transaction rolls back the payment and its event together.
        return Err(format!("payment {payment_id}: amount must be positive").into());
    }
    outbox.commit(tx).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // The in-process bus, its one registration of the event, and (with `asyncapi`)
    // the document that registration describes.
    let chan = Arc::new(MemoryBus::new());
    let mut bus = EventBus::new(chan.clone(), chan.clone());
    bus.register::<PaymentCreated>(payments::STREAM);
    if std::env::args().nth(1).as_deref() == Some("asyncapi") {
        print!("{}", payments::asyncapi(bus.registry())?.to_yaml()?);
        return Ok(());
    }

    let url = std::env::var("STREAMS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = PgPool::connect(&url).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS payments (id TEXT PRIMARY KEY, account TEXT NOT NULL, \
         cents BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;

    // A subscriber printing every payment event.
    let printed = Arc::new(AtomicUsize::new(0));
    let two_printed = Arc::new(Notify::new());
    {
        let (printed, two_printed) = (printed.clone(), two_printed.clone());
        bus.router()
            .subscribe_typed(move |e: PaymentCreated, m: Message| {
                let (printed, two_printed) = (printed.clone(), two_printed.clone());
                async move {
                    println!(
                        "event     payments.created {} account {} {} cents (message {})",
                        e.payment_id, e.account, e.cents, m.id
                    );
                    if printed.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                        two_printed.notify_one();
                    }
                    Ok::<_, BoxError>(())
                }
            })?;
    }
    bus.start().await?;
    while chan.subscribers(payments::STREAM) == 0 {
        tokio::task::yield_now().await;
    }

    // The relay, in this process: outbox table -> bus, woken by the outbox on commit.
    let storage = PgOutboxStore::new(pool.clone(), OUTBOX)?;
    storage.migrate().await?;
    let relay = Relay::new(Arc::new(storage), bus.publisher().writer().clone());
    let outbox = PgOutbox::new(OUTBOX)?.with_wake(relay.wake());
    let cancel = CancellationToken::new();
    let relaying = relay.spawn(cancel.clone());

    let run = format!("{:x}", fastrand_id());
    for (n, account, cents) in [(1, "acct-7", 1999), (2, "acct-7", 0), (3, "acct-9", 4500)] {
        let payment_id = format!("pay-{run}-{n}");
        match create_payment(&pool, &outbox, &bus, &payment_id, account, cents).await {
            Ok(()) => println!("service   stored {payment_id} and its event in one transaction"),
            Err(e) => println!("service   rolled back: {e} (no event)"),
        }
    }

    tokio::time::timeout(Duration::from_secs(10), two_printed.notified())
        .await
        .map_err(|_| "events were not relayed within 10 s")?;
    cancel.cancel();
    relaying.await??;
    bus.shutdown(Duration::from_secs(5)).await?;
    println!(
        "done: {} events relayed, relay and bus shut down cleanly",
        printed.load(Ordering::SeqCst)
    );
    Ok(())
}

/// A per-run suffix so the example can run again against the same database.
fn fastrand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}
