//! The `streams` command-line tool; see `streams --help` and the `streams_cli` crate.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser as _;
use streams::CancellationToken;
use streams_cli::alloc::CountingAllocator;
use streams_cli::{Cli, Command, Output, SchemaCommand};

/// Counts allocations while `streams bench` measures; otherwise the system allocator
/// behind one relaxed load.
#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn main() -> ExitCode {
    streams_cli::alloc::mark_installed();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // Exit codes a CI step can tell apart: 1 breaking, 2 unreadable input.
    if let Command::Schema(SchemaCommand::Check(cmd)) = &cli.command {
        return match streams_cli::schema_check(&cmd.old, &cmd.new, cmd.name.as_deref()) {
            Ok(findings) => {
                for f in &findings {
                    println!("{f}");
                }
                eprintln!("streams: {}", streams_cli::schema_summary(findings.len()));
                if findings.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("streams: error: {}", one_line(&e));
                ExitCode::from(2)
            }
        };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // A failure is reported once, as the command's one line; what the
            // library reports about it on the way (reader failed, librdkafka's
            // reconnects) is there with RUST_LOG.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,librdkafka=off,streams_core::router=off".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streams: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The command runs as a task on the runtime's workers, not on this thread: with one
    // worker per core, a command that publishes (bench, publish) and the readers it
    // starts share the cores as tasks, rather than this thread competing with both
    // workers for two cores.
    let command = runtime.spawn(async {
        let stop = CancellationToken::new();
        if let Err(e) = on_signal(stop.clone()) {
            eprintln!("streams: error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        match streams_cli::run(cli, stdin, Output::stdout(), stop).await {
            Ok(summary) => {
                eprintln!("streams: {summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("streams: error: {}", one_line(&e.to_string()));
                ExitCode::FAILURE
            }
        }
    });
    runtime.block_on(command).unwrap_or_else(|e| {
        eprintln!("streams: error: {}", one_line(&e.to_string()));
        ExitCode::FAILURE
    })
}

/// Help and version go to stdout as usual; every other argument error is one line on
/// stderr and exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // The first paragraph of clap's message, without the usage that follows.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            eprintln!("streams: error: {first} (see `streams --help`)");
            ExitCode::from(2)
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cancels `stop` on Ctrl-C or SIGTERM; a second signal exits at once.
fn on_signal(stop: CancellationToken) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.cancel();
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            std::process::exit(130);
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    Ok(())
}
