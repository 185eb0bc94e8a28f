//! Running one command in a container through the `pods/exec` subresource, with a time limit
//! and its output captured (truncated).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Client;
use kube::api::{Api, AttachParams};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of each of stdout and stderr kept for Events and status.
pub const OUTPUT_LIMIT: usize = 1024;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It ran to the end with this exit code.
    Exited(i32),
    /// It did not end within the time limit (it may still run in the container: the exec API
    /// cannot stop it).
    TimedOut(Duration),
    /// The API server refused the exec: the operator lacks `pods/exec`.
    Forbidden(String),
    /// It could not be started or its stream broke (command not found, container not
    /// running, connection lost).
    Error(String),
}

/// A finished command: how it ended and the start of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ended: Ended,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.ended == Ended::Exited(0)
    }
    /// Exit code when the command ran to the end.
    pub fn exit_code(&self) -> Option<i32> {
        match self.ended {
            Ended::Exited(c) => Some(c),
            _ => None,
        }
    }
    /// One line for Events and status: what happened, then the output's start.
    pub fn describe(&self) -> String {
        let what = match &self.ended {
            Ended::Exited(0) => "exited 0".to_string(),
            Ended::Exited(c) => format!("exited with code {c}"),
            Ended::TimedOut(d) => format!(
                "did not finish within its timeout of {}s (it may still be running in the container)",
                d.as_secs()
            ),
            Ended::Forbidden(m) => format!(
                "the operator may not exec into pods ({m}); install with hooks enabled (Helm value hooks.enabled=true, or config/rbac/hooks) to grant pods/exec"
            ),
            Ended::Error(m) => format!("could not run: {m}"),
        };
        let mut s = what;
        for (name, out) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let out = out.trim();
            if !out.is_empty() {
                s.push_str(&format!("; {name}: {out}"));
            }
        }
        s
    }
}

/// Runs `command` in `container` of pod `namespace/pod`, waiting at most `timeout`.
pub async fn run(
    client: &Client,
    namespace: &str,
    pod: &str,
    container: &str,
    command: &[String],
    timeout: Duration,
) -> Outcome {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = AttachParams::default()
        .container(container)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let work = async {
        let mut proc = match api.exec(pod, command.to_vec(), &params).await {
            Ok(p) => p,
            Err(e) => return (started_failure(&e), String::new(), String::new()),
        };
        let status = proc.take_status();
        let out = read_limited(proc.stdout());
        let err = read_limited(proc.stderr());
        let (stdout, stderr) = tokio::join!(out, err);
        let status = match status {
            Some(s) => s.await,
            None => None,
        };
        let _ = proc.join().await;
        (ended_with(status), stdout, stderr)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((ended, stdout, stderr)) => Outcome {
            ended,
            stdout,
            stderr,
        },
        Err(_) => Outcome {
            ended: Ended::TimedOut(timeout),
            stdout: String::new(),
            stderr: String::new(),
        },
    }
}

fn started_failure(e: &kube::Error) -> Ended {
    let text = crate::objects::kube_cause(e);
    let forbidden = match e {
        kube::Error::Api(s) => s.code == 403,
        kube::Error::UpgradeConnection(u) => u.to_string().contains("403"),
        _ => false,
    };
    if forbidden {
        Ended::Forbidden(text)
    } else {
        Ended::Error(text)
    }
}

/// How the status message of the exec stream ends the command. Pure.
fn ended_with(status: Option<Status>) -> Ended {
    let Some(s) = status else {
        return Ended::Error("the exec stream ended without an exit status".into());
    };
    if s.status.as_deref() == Some("Success") {
        return Ended::Exited(0);
    }
    let code = s
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.parse::<i32>().ok());
    match code {
        Some(c) => Ended::Exited(c),
        None => Ended::Error(s.message.unwrap_or_else(|| "exec failed".into())),
    }
}

/// Reads a stream to its end, keeping the first [`OUTPUT_LIMIT`] bytes.
async fn read_limited(r: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut dropped = 0usize;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped += n.saturating_sub(room);
            }
        }
    }
    let mut s = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        s.push_str(&format!("… ({dropped} more bytes)"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(v: serde_json::Value) -> Option<Status> {
        Some(serde_json::from_value(v).expect("status"))
    }

    #[test]
    fn the_exit_code_comes_from_the_status_message() {
        assert_eq!(
            ended_with(status(serde_json::json!({"status": "Success"}))),
            Ended::Exited(0)
        );
        let s = status(serde_json::json!({
            "status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
        }));
        assert_eq!(ended_with(s), Ended::Exited(3));
        let s = status(serde_json::json!({
            "status": "Failure",
            "message": "exec: \"nope\": executable file not found in $PATH"
        }));
        assert!(matches!(ended_with(s), Ended::Error(m) if m.contains("not found")));
        assert!(matches!(ended_with(None), Ended::Error(_)));
    }

    #[test]
    fn a_description_names_the_cause_and_the_output() {
        let o = Outcome {
            ended: Ended::Exited(2),
            stdout: "flushed\n".into(),
            stderr: String::new(),
        };
        assert_eq!(o.describe(), "exited with code 2; stdout: flushed");
        let o = Outcome {
            ended: Ended::Forbidden("pods \"db\" is forbidden".into()),
            stdout: String::new(),
            stderr: String::new(),
        };
        assert!(o.describe().contains("hooks.enabled=true"));
        assert!(!o.succeeded() && o.exit_code().is_none());
    }

    #[tokio::test]
    async fn long_output_is_cut() {
        let data = vec![b'x'; OUTPUT_LIMIT + 10];
        let s = read_limited(Some(&data[..])).await;
        assert!(s.starts_with(&"x".repeat(OUTPUT_LIMIT)));
        assert!(s.ends_with("(10 more bytes)"), "{s}");
    }
}
