//! `connect_from_env`, alone in its test binary because it changes the environment.
#![cfg(feature = "chanbuf")]

use streams::{connect_from_env, Error, URL_ENV};

#[tokio::test]
async fn reads_streams_url_and_defaults_to_memory() {
    std::env::remove_var(URL_ENV);
    let conn = connect_from_env().await.expect("default");
    assert_eq!(conn.platform(), "memory");

    std::env::set_var(URL_ENV, "memory://?queue_depth=8");
    let conn = connect_from_env().await.expect("memory with a queue depth");
    assert_eq!(conn.platform(), "memory");

    std::env::set_var(URL_ENV, "mqtt://localhost:1883");
    let err = connect_from_env().await.expect_err("unknown scheme");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");

    std::env::remove_var(URL_ENV);
}
