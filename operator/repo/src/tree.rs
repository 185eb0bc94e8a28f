//! Trees and nodes as restic stores them (JSON in tree blobs), and snapshots.

use serde::{Deserialize, Serialize};

use crate::Id;

/// Go `os.FileMode` bits used by restic's `mode` field.
pub mod gomode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
    pub const PERM: u32 = 0o777;
}

/// Unix `st_mode` to Go `os.FileMode`.
pub fn go_mode_from_unix(m: u32) -> u32 {
    let mut g = m & gomode::PERM;
    match m & 0o170000 {
        0o040000 => g |= gomode::DIR,
        0o120000 => g |= gomode::SYMLINK,
        0o060000 => g |= gomode::DEVICE,
        0o020000 => g |= gomode::DEVICE | gomode::CHAR_DEVICE,
        0o010000 => g |= gomode::NAMED_PIPE,
        0o140000 => g |= gomode::SOCKET,
        _ => {}
    }
    if m & 0o4000 != 0 {
        g |= gomode::SETUID;
    }
    if m & 0o2000 != 0 {
        g |= gomode::SETGID;
    }
    if m & 0o1000 != 0 {
        g |= gomode::STICKY;
    }
    g
}

/// Permission bits (with setuid/setgid/sticky) of a Go `os.FileMode` as unix bits.
pub fn unix_perm_from_go(g: u32) -> u32 {
    let mut m = g & gomode::PERM;
    if g & gomode::SETUID != 0 {
        m |= 0o4000;
    }
    if g & gomode::SETGID != 0 {
        m |= 0o2000;
    }
    if g & gomode::STICKY != 0 {
        m |= 0o1000;
    }
    m
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// An extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendedAttribute {
    pub name: String,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// One entry of a directory, field for field as restic's `Node` (order matters only
/// for byte-identical trees; restic ignores unknown fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Node {
    /// The file name (stored Go-quoted, as restic does).
    #[serde(with = "quoted_name")]
    pub name: String,
    #[serde(rename = "type")]
    pub node_type: String,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    #[serde(default)]
    pub mtime: String,
    #[serde(default)]
    pub atime: String,
    #[serde(default)]
    pub ctime: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub device_id: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub links: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub linktarget: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub linktarget_raw: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_attributes: Option<Vec<ExtendedAttribute>>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub device: u64,
    /// `null` for non-files, `[]` for empty files (restic's checker insists).
    pub content: Option<Vec<Id>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

mod opt_b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&STANDARD.encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => STANDARD
                .decode(s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// A directory listing (a tree blob).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The blob plaintext: JSON followed by a newline, as restic writes it.
    pub fn to_blob(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut v = serde_json::to_vec(self)?;
        v.push(b'\n');
        Ok(v)
    }
}

/// A snapshot file's JSON (`snapshots/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub tree: Id,
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_version: Option<String>,
}

/// A lock file's JSON (`locks/<id>`), compatible with restic's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockJson {
    pub time: String,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: i64,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(go_mode_from_unix(0o100644), 0o644);
        assert_eq!(go_mode_from_unix(0o040755), gomode::DIR | 0o755);
        assert_eq!(go_mode_from_unix(0o120777), gomode::SYMLINK | 0o777);
        assert_eq!(unix_perm_from_go(go_mode_from_unix(0o104755)), 0o4755);
    }

    #[test]
    fn node_json_shape() {
        let n = Node {
            name: "e".into(),
            node_type: "file".into(),
            content: Some(vec![]),
            ..Default::default()
        };
        let j = serde_json::to_string(&n).expect("json");
        assert!(j.contains("\"content\":[]"), "{j}");
        assert!(j.contains("\"uid\":0"), "{j}");
        let d = Node {
            name: "d".into(),
            node_type: "dir".into(),
            ..Default::default()
        };
        assert!(
            serde_json::to_string(&d)
                .expect("json")
                .contains("\"content\":null")
        );
    }
}

/// Go's `strconv.Quote` without the surrounding quotes, as restic applies to node
/// names before JSON encoding. We escape at least everything Go escapes that matters
/// for `strconv.Unquote` (quotes, backslashes, control characters); printable
/// Unicode stays literal like Go's.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() || c == '\u{feff}' || c == '\u{2028}' || c == '\u{2029}' => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Go's `strconv.Unquote` of `"` + s + `"`; `\x` escapes of invalid UTF-8 are decoded
/// lossily.
pub fn go_unquote(s: &str) -> Option<String> {
    let mut bytes: Vec<u8> = Vec::with_capacity(s.len());
    let mut it = s.chars().peekable();
    let hex = |it: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = v * 16 + it.next()?.to_digit(16)?;
        }
        Some(v)
    };
    while let Some(c) = it.next() {
        if c == '"' || c == '\n' {
            return None;
        }
        if c != '\\' {
            let mut b = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        let e = it.next()?;
        let push_char = |bytes: &mut Vec<u8>, v: u32| -> Option<()> {
            let ch = char::from_u32(v)?;
            let mut b = [0u8; 4];
            bytes.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
            Some(())
        };
        match e {
            'a' => bytes.push(7),
            'b' => bytes.push(8),
            'f' => bytes.push(0xc),
            'n' => bytes.push(b'\n'),
            'r' => bytes.push(b'\r'),
            't' => bytes.push(b'\t'),
            'v' => bytes.push(0xb),
            '\\' => bytes.push(b'\\'),
            '"' => bytes.push(b'"'),
            '\'' => return None,
            'x' => bytes.push(u8::try_from(hex(&mut it, 2)?).ok()?),
            'u' => push_char(&mut bytes, hex(&mut it, 4)?)?,
            'U' => push_char(&mut bytes, hex(&mut it, 8)?)?,
            '0'..='7' => {
                let mut v = e.to_digit(8)?;
                for _ in 0..2 {
                    v = v * 8 + it.next()?.to_digit(8)?;
                }
                bytes.push(u8::try_from(v).ok()?);
            }
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

mod quoted_name {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::go_quote(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        super::go_unquote(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("node name {s:?}: invalid Go quoting")))
    }
}

#[cfg(test)]
mod quote_tests {
    use super::*;

    #[test]
    fn quote_roundtrip() {
        for s in [
            "plain",
            "x \"y\".txt",
            "back\\slash",
            "tab\tnew\nline",
            "日本語 ファイル",
            "\u{1}\u{7f}\u{85}",
        ] {
            let q = go_quote(s);
            assert!(!q.contains('\n'));
            assert_eq!(go_unquote(&q).as_deref(), Some(s), "{q}");
        }
        assert_eq!(go_quote("x \"y\".txt"), "x \\\"y\\\".txt");
        assert_eq!(go_unquote("\\xff").as_deref(), Some("\u{fffd}"));
        assert_eq!(go_unquote("\\303\\251").as_deref(), Some("é"));
    }
}
