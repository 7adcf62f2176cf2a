//! Payments with a transactional outbox and a separate relay process.
//!
//! This program is only the service: each payment and its `payments.created` event are
//! written in one PostgreSQL transaction, and the commit sends a `NOTIFY`. The relay
//! is `streams relay` of the `streams` tool, running on its own, which moves the events
//! to its destination (here standard output; Kafka, SQS or SNS in production, with
//! `streams --url kafka://... relay ...` and no `--to`).
//!
//! Needs PostgreSQL (`STREAMS_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). In one terminal start the relay:
//!
//! ```text
//! cargo run -p streams-cli -- relay \
//!     --from postgres://postgres@127.0.0.1:5432/test \
//!     --table payments_egress --create-table --to stdout
//! ```
//!
//! and in another run the service (as often as you like):
//!
//! ```text
//! cargo run -p streams-examples --example payments_relay --features sql
//! ```
//!
//! The relay prints one JSON line per event. Stop it with Ctrl-C; events written
//! while it is down are relayed when it comes back.

#![allow(clippy::print_stdout)]

use streams_core::{BoxError, Message, CONTENT_TYPE_JSON};
use streams_examples::payments::{self, PaymentCreated};
use streams_sql::sqlx::{self, PgPool};
use streams_sql::PgOutbox;

const OUTBOX: &str = "payments_egress";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("STREAMS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = PgPool::connect(&url).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS payments (id TEXT PRIMARY KEY, account TEXT NOT NULL, \
         cents BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    let outbox = PgOutbox::new(OUTBOX)?;
    outbox.migrate(&pool).await?;

    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    for (n, account, cents) in [(1, "acct-7", 1999_i64), (2, "acct-9", 4500)] {
        let event = PaymentCreated {
            payment_id: format!("pay-{run}-{n}"),
            account: account.into(),
            cents,
        };
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO payments (id, account, cents) VALUES ($1, $2, $3)")
            .bind(&event.payment_id)
            .bind(&event.account)
            .bind(event.cents)
            .execute(&mut *tx)
            .await?;
        let message = Message::new(payments::STREAM, serde_json_vec(&event)?)
            .with_key(account)
            .with_content_type(CONTENT_TYPE_JSON);
        let batch_id = outbox.write(&mut tx, &[message]).await?;
        outbox.commit(tx).await?;
        println!(
            "service   stored {} with outbox batch {}",
            event.payment_id,
            batch_id.unwrap_or_default()
        );
    }
    println!("done: the `streams relay` process publishes the events");
    Ok(())
}

fn serde_json_vec(event: &PaymentCreated) -> Result<Vec<u8>, BoxError> {
    Ok(serde_json::to_vec(event)?)
}
