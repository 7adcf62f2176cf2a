//! `streams asyncapi` and `streams schema check`: a program's AsyncAPI document with
//! the server of a URL, and the check that a new contract does not break consumers.

use std::path::{Path, PathBuf};

use streams_asyncapi::{Document, Finding};
use tokio::io::AsyncReadExt as _;

use crate::Output;

/// How `streams asyncapi` writes the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DocFormat {
    /// YAML.
    Yaml,
    /// Pretty JSON.
    Json,
}

/// What `streams asyncapi` does.
#[derive(Debug, Clone)]
pub struct AsyncapiArgs {
    /// The connection URL whose server and bindings to add.
    pub url: String,
    /// The document the program wrote; `None` or `-` reads stdin.
    pub file: Option<PathBuf>,
    /// Output format.
    pub format: DocFormat,
    /// Name of the server in the document; default: the URL's platform.
    pub server: Option<String>,
}

/// Reads the program's document, adds the server of `args.url` (none for the
/// in-process bus) and prints it; returns the line to report.
///
/// # Errors
///
/// An unreadable file or document, or a URL that names no broker.
pub async fn asyncapi(
    args: AsyncapiArgs,
    mut stdin: impl tokio::io::AsyncBufRead + Unpin,
    out: Output,
) -> Result<String, streams::BoxError> {
    let (text, source) = match args.file.as_deref() {
        Some(p) if p != Path::new("-") => (
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
            p.display().to_string(),
        ),
        _ => {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .await
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            (text, "stdin".to_owned())
        }
    };
    let doc = Document::parse(&text).map_err(|e| format!("{source}: {e}"))?;
    let scheme = args
        .url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    let (doc, added) = if scheme == "memory" {
        (doc, "no server added: memory:// is in-process; pass --url with the platform the service runs on".to_owned())
    } else {
        let name = args.server.unwrap_or_else(|| scheme.clone());
        (
            doc.with_server(&name, &args.url)?,
            format!("added server `{name}` ({scheme})"),
        )
    };
    let text = match args.format {
        DocFormat::Yaml => doc.to_yaml()?,
        DocFormat::Json => doc.to_json(),
    };
    out.line(text.trim_end())?;
    Ok(format!("AsyncAPI document of {source}: {added}"))
}

/// The breaking changes from `old` to `new`, each file an AsyncAPI document or a
/// JSON Schema (JSON or YAML).
///
/// # Errors
///
/// A one-line reason when a file cannot be read or is not a document or schema.
pub fn schema_check(old: &Path, new: &Path, name: Option<&str>) -> Result<Vec<Finding>, String> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let (old_text, new_text) = (read(old)?, read(new)?);
    // A schema's event is named by its title, else by the NEW file's name.
    let stem = new
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "payload".into());
    let findings = streams_asyncapi::check(&old_text, &new_text, name).map_err(|e| {
        e.to_string()
            .replacen("OLD: ", &format!("{}: ", old.display()), 1)
            .replacen("NEW: ", &format!("{}: ", new.display()), 1)
    })?;
    Ok(match name {
        Some(_) => findings,
        None => findings
            .into_iter()
            .map(|mut f| {
                if f.event == "payload" {
                    f.event.clone_from(&stem);
                }
                f
            })
            .collect(),
    })
}
