//! The Kubernetes WebSocket channel protocol for exec (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`): every binary message starts with a channel byte
//! (0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize); v5 adds a client
//! "close" message `[255, channel]` that half-closes one stream. Pure framing.

use serde_json::{Value, json};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

/// Picks the sub-protocol from a `Sec-WebSocket-Protocol` header list: v5, else
/// v4 (the binary ones; the base64 variants are not supported).
pub fn choose_protocol<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    let offered: Vec<String> = offered
        .into_iter()
        .flat_map(|h| h.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    [V5, V4]
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
}

pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    v
}

/// A message from the client.
#[derive(Debug, PartialEq)]
pub enum Incoming<'a> {
    Stdin(&'a [u8]),
    Resize(&'a [u8]),
    /// v5 close signal for a channel.
    Close(u8),
    Ignored,
}

pub fn parse(msg: &[u8], v5: bool) -> Incoming<'_> {
    match msg.split_first() {
        Some((&STDIN, rest)) => Incoming::Stdin(rest),
        Some((&RESIZE, rest)) => Incoming::Resize(rest),
        Some((&CLOSE, rest)) if v5 && !rest.is_empty() => Incoming::Close(rest[0]),
        _ => Incoming::Ignored,
    }
}

/// The `metav1.Status` a kubelet writes on the error channel when the command
/// ends: success, `NonZeroExitCode` with an `ExitCode` cause, or an internal error.
pub fn exit_status(exit_code: i32, command: &[String]) -> Value {
    if exit_code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {}",
            command.join(" "),
            exit_code
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": exit_code.to_string()}]},
    })
}

/// Terminal size from a resize message: `{"Width": w, "Height": h}`.
pub fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let w = u16::try_from(v.get("Width")?.as_u64()?).ok()?;
    let h = u16::try_from(v.get("Height")?.as_u64()?).ok()?;
    Some((w, h))
}

pub fn error_status(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(
            choose_protocol(["v4.channel.k8s.io, v5.channel.k8s.io"]),
            Some(V5)
        );
        assert_eq!(
            choose_protocol(["base64.channel.k8s.io", "v4.channel.k8s.io"]),
            Some(V4)
        );
        assert_eq!(choose_protocol(["channel.k8s.io"]), None);
    }

    #[test]
    fn framing() {
        assert_eq!(frame(STDOUT, b"hi"), vec![1, b'h', b'i']);
        assert_eq!(parse(&[0, b'x'], true), Incoming::Stdin(b"x"));
        assert_eq!(parse(&[255, 0], true), Incoming::Close(0));
        assert_eq!(parse(&[255, 0], false), Incoming::Ignored);
        assert_eq!(parse(&[4, b'{'], true), Incoming::Resize(b"{"));
        assert_eq!(parse(&[], true), Incoming::Ignored);
    }

    #[test]
    fn resize_messages() {
        assert_eq!(
            parse_resize(br#"{"Width":120,"Height":40}"#),
            Some((120, 40))
        );
        assert_eq!(parse_resize(b"{}"), None);
        assert_eq!(parse_resize(b"junk"), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(exit_status(0, &[])["status"], "Success");
        let s = exit_status(2, &["sh".into(), "-c".into(), "exit 2".into()]);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "2");
    }
}
