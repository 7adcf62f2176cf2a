//! Running the `streams` binary in tests.

#![allow(dead_code, unreachable_pub)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

/// What a run of the binary left.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout lines parsed as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    }

    /// Panics with everything the run printed unless it exited 0.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "streams failed: {self:#?}");
        self
    }
}

/// Runs `streams ARGS` with `stdin`, killed after `limit`.
pub async fn streams(args: &[&str], stdin: &str, limit: Duration) -> Run {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streams"))
        .args(args)
        .env_remove("STREAMS_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn streams");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_owned();
    tokio::spawn(async move {
        let _ = input.write_all(stdin.as_bytes()).await;
        // Dropping closes stdin.
    });
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("streams {args:?} did not finish within {limit:?}"))
        .expect("wait for streams");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A stream name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}
