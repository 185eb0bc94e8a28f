//! Container logs: one file per container attempt under the root dir, in the
//! CRI log format (`<RFC3339Nano> <stdout|stderr> <F|P> <text>`), and rendering
//! of them for `/containerLogs` (timestamps, tailLines, sinceTime, limitBytes).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// Longest line written as one record; longer ones are split into partial records.
const MAX_RECORD: usize = 16 * 1024;

pub fn log_path(pod_dir: &Path, container: &str, attempt: i32) -> PathBuf {
    pod_dir
        .join("logs")
        .join(container)
        .join(format!("{attempt}.log"))
}

pub fn format_record(ts: DateTime<Utc>, stream: &str, content: &[u8], partial: bool) -> Vec<u8> {
    let mut out = format!(
        "{} {} {} ",
        ts.to_rfc3339_opts(SecondsFormat::Nanos, true),
        stream,
        if partial { "P" } else { "F" }
    )
    .into_bytes();
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// One parsed record: timestamp, stream, text (newline restored unless partial).
#[derive(Debug, PartialEq)]
pub struct Record<'a> {
    pub ts: &'a str,
    pub stream: &'a str,
    pub text: Vec<u8>,
}

pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    let mut text = content.to_vec();
    if tag != b"P" {
        text.push(b'\n');
    }
    Some(Record { ts, stream, text })
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub limit_bytes: Option<usize>,
}

/// Renders complete records of a log file as `kubectl logs` shows them.
pub fn render(data: &[u8], opts: &LogOptions) -> Vec<u8> {
    let mut recs: Vec<Record<'_>> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_record)
        .filter(|r| match opts.since {
            Some(since) => DateTime::parse_from_rfc3339(r.ts)
                .map(|t| t >= since)
                .unwrap_or(true),
            None => true,
        })
        .collect();
    if let Some(n) = opts.tail_lines {
        // count lines by full records (a partial run belongs to the next full one)
        let mut full_seen = 0;
        let mut start = recs.len();
        for (i, r) in recs.iter().enumerate().rev() {
            if r.text.ends_with(b"\n") {
                if full_seen == n {
                    break;
                }
                full_seen += 1;
            }
            start = i;
        }
        recs.drain(..start);
    }
    let mut out = Vec::new();
    for r in recs {
        if opts.timestamps {
            out.extend_from_slice(r.ts.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&r.text);
    }
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    out
}

/// Appends records to a log file; shared by a container's stdout and stderr.
#[derive(Clone)]
pub struct LogWriter {
    file: Arc<Mutex<tokio::fs::File>>,
}

impl LogWriter {
    pub async fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
        })
    }

    pub async fn write(&self, stream: &str, content: &[u8], partial: bool) {
        let rec = format_record(Utc::now(), stream, content, partial);
        let mut f = self.file.lock().await;
        if let Err(e) = f.write_all(&rec).await {
            tracing::warn!(error = %e, "writing container log");
        }
        let _ = f.flush().await;
    }

    /// Copies a pipe into the log until EOF.
    pub async fn copy_from(self, stream: &'static str, reader: impl AsyncRead + Unpin) {
        let mut reader = BufReader::with_capacity(MAX_RECORD, reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let mut partial = false;
            // read one line, but no more than MAX_RECORD bytes
            while let Ok(available) = reader.fill_buf().await {
                if available.is_empty() {
                    break;
                }
                let room = MAX_RECORD - buf.len();
                if let Some(pos) = available
                    .iter()
                    .position(|b| *b == b'\n')
                    .filter(|p| *p < room)
                {
                    buf.extend_from_slice(&available[..pos + 1]);
                    reader.consume(pos + 1);
                    break;
                }
                let take = available.len().min(room);
                buf.extend_from_slice(&available[..take]);
                reader.consume(take);
                if buf.len() >= MAX_RECORD {
                    partial = true;
                    break;
                }
            }
            if buf.is_empty() {
                return;
            }
            let content = buf.strip_suffix(b"\n").unwrap_or(&buf);
            self.write(stream, content, partial).await;
        }
    }
}

/// Last `n` lines of a log file as plain text (for `FallbackToLogsOnError`).
pub fn tail_text(path: &Path, n: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let out = render(
        &data,
        &LogOptions {
            tail_lines: Some(n),
            ..Default::default()
        },
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 5).expect("valid")
    }

    fn sample() -> Vec<u8> {
        let mut d = Vec::new();
        d.extend(format_record(ts(0), "stdout", b"one", false));
        d.extend(format_record(ts(1), "stderr", b"tw", true));
        d.extend(format_record(ts(1), "stderr", b"o", false));
        d.extend(format_record(ts(2), "stdout", b"three", false));
        d
    }

    #[test]
    fn record_roundtrip() {
        let r = format_record(ts(0), "stdout", b"a b", false);
        assert_eq!(
            String::from_utf8_lossy(&r),
            "2023-11-14T22:13:20.000000005Z stdout F a b\n"
        );
        let p = parse_record(&r[..r.len() - 1]).expect("parses");
        assert_eq!(
            p,
            Record {
                ts: "2023-11-14T22:13:20.000000005Z",
                stream: "stdout",
                text: b"a b\n".to_vec()
            }
        );
    }

    #[test]
    fn rendering() {
        let d = sample();
        assert_eq!(render(&d, &LogOptions::default()), b"one\ntwo\nthree\n");
        let tail = render(
            &d,
            &LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(tail, b"two\nthree\n");
        assert_eq!(
            render(
                &d,
                &LogOptions {
                    tail_lines: Some(0),
                    ..Default::default()
                }
            ),
            b""
        );
        assert_eq!(
            render(
                &d,
                &LogOptions {
                    tail_lines: Some(9),
                    ..Default::default()
                }
            ),
            b"one\ntwo\nthree\n"
        );
        let ts_out = render(
            &d,
            &LogOptions {
                timestamps: true,
                tail_lines: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(
            String::from_utf8_lossy(&ts_out),
            "2023-11-14T22:13:22.000000005Z three\n"
        );
        let since = render(
            &d,
            &LogOptions {
                since: Some(ts(2) - chrono::Duration::nanoseconds(1)),
                ..Default::default()
            },
        );
        assert_eq!(since, b"three\n");
        assert_eq!(
            render(
                &d,
                &LogOptions {
                    limit_bytes: Some(5),
                    ..Default::default()
                }
            ),
            b"one\nt"
        );
    }
}
