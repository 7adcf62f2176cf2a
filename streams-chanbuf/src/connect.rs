//! `memory://` connection URLs.

use std::sync::Arc;

use streams_core::{invalid_url, ConnectUrl, Connection, NoStreamAdmin, Result};

use crate::{MemoryBus, MemoryBusBuilder};

/// The parameters a `memory://` URL takes.
const KNOWN: [&str; 2] = ["queue_depth", "concurrency"];

/// Builds a new in-process bus from a `memory://[?queue_depth=N&concurrency=N]` URL: one
/// [`MemoryBus`] serving as writer and reader. Each call makes a bus of its own;
/// `queue_depth` is the buffer per subscriber (default 1024), `concurrency` the handlers
/// per subscriber when the read task sets none (default 1).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> streams_core::Result<()> {
/// let conn = streams_chanbuf::connect("memory://?queue_depth=256").await?;
/// assert_eq!(conn.platform(), "memory");
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`](streams_core::Error::Invalid) for a host, a path, an unknown
/// parameter or a value that is not a positive integer.
pub async fn connect(url: &str) -> Result<Connection> {
    let bus = Arc::new(parse(url)?.build());
    Ok(Connection::new("memory", bus.clone(), Some(bus)).with_admin(Arc::new(NoStreamAdmin)))
}

fn parse(url: &str) -> Result<MemoryBusBuilder> {
    let url = ConnectUrl::parse("memory", url)?;
    if !url.hosts.is_empty() || url.user.is_some() {
        return Err(invalid_url(
            "a `memory://` URL names no host: each connect(\"memory://\") is a bus of its own",
        ));
    }
    url.no_path()?;
    let mut params = url.params;
    let mut builder = MemoryBus::builder();
    if let Some(depth) = params.take_positive("queue_depth")? {
        builder = builder.with_queue_depth(depth);
    }
    if let Some(concurrency) = params.take_positive("concurrency")? {
        builder = builder.with_concurrency(concurrency);
    }
    params.finish(&KNOWN)?;
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        parse(url).expect_err(url).to_string()
    }

    #[test]
    fn defaults_and_parameters() {
        let b = parse("memory://").unwrap();
        assert_eq!(format!("{b:?}"), format!("{:?}", MemoryBus::builder()));
        let b = parse("memory://?queue_depth=2048&concurrency=4").unwrap();
        let want = MemoryBus::builder()
            .with_queue_depth(2048)
            .with_concurrency(4);
        assert_eq!(format!("{b:?}"), format!("{want:?}"));
        assert!(err("memory://?queue_depth=0").contains("positive integer"));
        assert!(err("memory://?queue_depth=many").contains("positive integer"));
        assert!(err("memory://?size=3").contains("unknown parameter `size`"));
        assert!(err("memory://somewhere").contains("no host"));
        assert!(err("memory:///path").contains("no path"));
    }
}
