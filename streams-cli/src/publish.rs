//! `streams publish`.

use std::path::PathBuf;

use streams::{BoxError, Connection, Message, Writer};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::output::JsonMessage;

/// How input lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InputFormat {
    /// Each line is one payload.
    #[default]
    Text,
    /// Each line is a JSON object as `streams consume` prints it (`data` or
    /// `data_base64`, and optionally `stream`, `id`, `key`, `headers`,
    /// `content_type`, `time`); the flags fill in what a line leaves out.
    Json,
}

/// What `streams publish` sends.
#[derive(Debug, Clone, Default)]
pub struct PublishArgs {
    /// The stream.
    pub stream: String,
    /// Payloads given as arguments; when empty, lines are read from `file` or stdin.
    pub messages: Vec<String>,
    /// A file of lines (`-` for stdin).
    pub file: Option<PathBuf>,
    /// Key of every message.
    pub key: Option<String>,
    /// Headers of every message.
    pub headers: Vec<(String, String)>,
    /// Content type of every message.
    pub content_type: Option<String>,
    /// Input format.
    pub format: InputFormat,
    /// Messages per write.
    pub batch: usize,
}

/// Where the lines come from.
enum Source {
    Args(std::vec::IntoIter<String>),
    Lines(Box<dyn AsyncBufRead + Unpin + Send>),
}

/// Publishes the messages `args` describes and returns how many were written. Blank
/// input lines are skipped. Each write has been acknowledged by the platform when it
/// returns; the connection's writer is left open for its owner to close.
///
/// # Errors
///
/// A malformed input line (named by its number) or a write failure; either way the
/// error says how many messages were published before it, and nothing after the
/// failing batch is sent.
pub async fn publish(
    conn: &Connection,
    args: PublishArgs,
    stdin: impl AsyncBufRead + Unpin + Send + 'static,
) -> Result<u64, BoxError> {
    let writer = conn.writer();
    let mut source = if !args.messages.is_empty() {
        Source::Args(args.messages.clone().into_iter())
    } else {
        match &args.file {
            Some(path) if path.as_os_str() != "-" => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                Source::Lines(Box::new(BufReader::new(file)))
            }
            _ => Source::Lines(Box::new(stdin)),
        }
    };
    let batch_size = args.batch.max(1);
    let mut published = 0u64;
    let mut line_no = 0u64;
    let mut batch = Vec::with_capacity(batch_size);
    let result: Result<(), BoxError> = async {
        loop {
            let line = match &mut source {
                Source::Args(it) => it.next(),
                Source::Lines(r) => {
                    let mut buf = String::new();
                    match r.read_line(&mut buf).await {
                        Ok(0) => None,
                        Ok(_) => Some(buf.trim_end_matches(['\n', '\r']).to_owned()),
                        Err(e) => return Err(format!("reading input: {e}").into()),
                    }
                }
            };
            let Some(line) = line else { break };
            line_no += 1;
            if line.trim().is_empty() && !matches!(source, Source::Args(_)) {
                continue;
            }
            let msg = build(&args, line).map_err(|e| format!("input line {line_no}: {e}"))?;
            batch.push(msg);
            if batch.len() == batch_size {
                let n = batch.len() as u64;
                writer.write(std::mem::take(&mut batch)).await?;
                published += n;
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            writer.write(std::mem::take(&mut batch)).await?;
            published += n;
        }
        Ok(())
    }
    .await;
    result
        .map(|()| published)
        .map_err(|e| format!("{e} ({published} message(s) published before this)").into())
}

fn build(args: &PublishArgs, line: String) -> Result<Message, BoxError> {
    let mut msg = match args.format {
        InputFormat::Text => Message::new(&args.stream, line),
        InputFormat::Json => {
            let json: JsonMessage =
                serde_json::from_str(&line).map_err(|e| format!("not a JSON message: {e}"))?;
            let explicit_ct = json.content_type.is_some();
            let mut msg = json.into_message(&args.stream)?;
            if !explicit_ct {
                if let Some(ct) = &args.content_type {
                    msg.content_type = ct.clone();
                }
            }
            for (k, v) in &args.headers {
                msg.headers.entry(k.clone()).or_insert_with(|| v.clone());
            }
            if msg.key.is_none() {
                if let Some(key) = &args.key {
                    msg = msg.with_key(key);
                }
            }
            return Ok(msg);
        }
    };
    if let Some(key) = &args.key {
        msg = msg.with_key(key);
    }
    if let Some(ct) = &args.content_type {
        msg.content_type = ct.clone();
    }
    for (k, v) in &args.headers {
        msg.headers.insert(k.clone(), v.clone());
    }
    Ok(msg)
}

/// Expands the content-type shorthands `json`, `protobuf`, `text` and `bytes`; any other
/// value is taken as a MIME type.
pub fn content_type(value: &str) -> Result<String, String> {
    Ok(match value.trim() {
        "" => return Err("content type is empty".into()),
        "json" => streams::CONTENT_TYPE_JSON.to_owned(),
        "protobuf" | "proto" => streams::CONTENT_TYPE_PROTOBUF.to_owned(),
        "text" => "text/plain; charset=utf-8".to_owned(),
        "bytes" | "binary" => streams::CONTENT_TYPE_OCTET_STREAM.to_owned(),
        other if other.contains('/') => other.to_owned(),
        other => {
            return Err(format!(
                "`{other}` is not a MIME type (type/subtype) nor one of json, protobuf, text, bytes"
            ))
        }
    })
}

/// Parses `KEY=VALUE`.
pub fn header(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{value}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthands_and_headers() {
        assert_eq!(content_type("json").unwrap(), "application/json");
        assert_eq!(content_type("text/csv").unwrap(), "text/csv");
        assert!(content_type("yaml").is_err());
        assert_eq!(header("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(header("=b").is_err());
        assert!(header("ab").is_err());
    }

    #[test]
    fn json_lines_keep_their_own_fields_over_the_flags() {
        let args = PublishArgs {
            stream: "orders".into(),
            key: Some("flag-key".into()),
            content_type: Some("text/plain".into()),
            headers: vec![("h".into(), "flag".into()), ("extra".into(), "x".into())],
            format: InputFormat::Json,
            ..Default::default()
        };
        let msg = build(
            &args,
            r#"{"id":"m1","key":"own","data":"x","headers":{"h":"own"},"content_type":"application/json"}"#.into(),
        )
        .unwrap();
        assert_eq!(msg.id, "m1");
        assert_eq!(msg.key.as_deref(), Some("own"));
        assert_eq!(msg.headers["h"], "own");
        assert_eq!(msg.headers["extra"], "x");
        assert_eq!(msg.content_type, "application/json");
        assert_eq!(msg.stream, "orders");
        let err = build(&args, "not json".into()).unwrap_err();
        assert!(err.to_string().contains("not a JSON message"), "{err}");
    }
}
