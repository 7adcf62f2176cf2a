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

/// Runs `streams ARGS` with `stdin` and `RUST_LOG=warn`, killed after `limit`.
pub async fn streams(args: &[&str], stdin: &str, limit: Duration) -> Run {
    run_streams(args, stdin, limit, Some("warn")).await
}

/// Runs `streams ARGS` as a user does, without `RUST_LOG`, killed after `limit`.
pub async fn streams_as_user(args: &[&str], limit: Duration) -> Run {
    run_streams(args, "", limit, None).await
}

async fn run_streams(args: &[&str], stdin: &str, limit: Duration, log: Option<&str>) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_streams"));
    match log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command
        .args(args)
        .env_remove("STREAMS_URL")
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

/// `streams --url URL ...`, for the tests of one platform.
#[derive(Debug, Clone)]
pub struct Cli {
    pub url: String,
}

impl Cli {
    pub fn new(url: impl Into<String>) -> Self {
        Cli { url: url.into() }
    }

    /// Runs `streams --url URL ARGS` with `stdin` and asserts it succeeded.
    pub async fn ok(&self, args: &[&str], stdin: &str) -> Run {
        let mut all = vec!["--url", self.url.as_str()];
        all.extend_from_slice(args);
        streams(&all, stdin, Duration::from_secs(120)).await.ok()
    }

    /// Payloads of what `consume STREAM ARGS` prints, sorted.
    pub async fn consume_data(&self, stream: &str, args: &[&str]) -> Vec<String> {
        let mut all = vec!["consume", stream];
        all.extend_from_slice(args);
        let mut data: Vec<String> = self
            .ok(&all, "")
            .await
            .json_lines()
            .iter()
            .map(|l| l["data"].as_str().expect("text payload").to_owned())
            .collect();
        data.sort();
        data
    }

    /// Two dead letters on `<stream>.dlq` (which must exist): a dry run prints them and
    /// moves nothing, a redrive moves them back without their `streams-dlq-*` headers,
    /// and a second redrive finds nothing.
    pub async fn dead_letters_round_trip(&self, stream: &str) {
        let dlq = format!("{stream}.dlq");
        let dead = ["-H", "streams-dlq-reason=boom", "-H", "tenant=acme"];
        self.ok(
            &[&["publish", &dlq, "dead-1", "dead-2"][..], &dead].concat(),
            "",
        )
        .await;

        let run = self
            .ok(&["dlq", "redrive", stream, "--dry-run", "--idle", "4s"], "")
            .await;
        assert_eq!(run.json_lines().len(), 2, "{run:#?}");
        assert!(run.stderr.contains("dry run: 2 message(s)"), "{run:#?}");
        let moved = self.consume_data(stream, &["--idle", "4s"]).await;
        assert!(moved.is_empty(), "the dry run moved {moved:?}");

        // Long enough for what a dry run left unacknowledged to be delivered again.
        let run = self
            .ok(&["dlq", "redrive", stream, "--idle", "8s"], "")
            .await;
        assert!(run.stderr.contains("moved 2 message(s)"), "{run:#?}");
        let run = self
            .ok(&["dlq", "redrive", stream, "--idle", "4s"], "")
            .await;
        assert!(
            run.stderr.contains("moved 0 message(s)"),
            "moved twice: {run:#?}"
        );

        let run = self.ok(&["consume", stream, "--count", "2"], "").await;
        let lines = run.json_lines();
        let mut data: Vec<_> = lines.iter().map(|l| l["data"].as_str().unwrap()).collect();
        data.sort_unstable();
        assert_eq!(data, ["dead-1", "dead-2"], "{run:#?}");
        for line in &lines {
            assert!(
                line["headers"].get("streams-dlq-reason").is_none(),
                "{line}"
            );
            assert_eq!(line["headers"]["tenant"], "acme", "{line}");
        }
    }

    /// `bench -n COUNT ARGS --json`, asserting every message arrived.
    pub async fn bench(&self, count: u64, args: &[&str]) -> serde_json::Value {
        let n = count.to_string();
        let run = self
            .ok(
                &[&["bench", "-n", &n, "--json", "--no-progress"][..], args].concat(),
                "",
            )
            .await;
        let report = run.json_lines().remove(0);
        assert_eq!(report["received"], count, "{report}");
        assert_eq!(report["published"], count, "{report}");
        report
    }
}
