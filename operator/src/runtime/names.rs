//! Names of generated objects and Kubernetes quantities. Pure.

/// A stable 10-hex-digit hash of `parts` (FNV-1a over the parts with separators).
pub fn short_hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")[..10].to_string()
}

/// A child object name: a readable prefix (cut to fit) and a hash of what makes it unique.
/// At most 63 characters, a valid DNS label (usable as a label value and a pod name).
pub fn child_name(prefix: &str, parts: &[&str]) -> String {
    let mut p: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(52)
        .collect();
    while p.ends_with('-') {
        p.pop();
    }
    let p = p.trim_start_matches('-');
    if p.is_empty() {
        format!("hf-{}", short_hash(parts))
    } else {
        format!("{p}-{}", short_hash(parts))
    }
}

/// Bytes of a Kubernetes quantity (`10Gi`, `500M`, `1024`); `None` when not understood.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let m: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some((n * m) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_names_are_dns_labels() {
        let n = child_name(&"Shop_Nightly.".repeat(10), &["uid", "ns", "pvc"]);
        assert!(n.len() <= 63);
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_eq!(
            child_name("---", &["a"]),
            format!("hf-{}", short_hash(&["a"]))
        );
        assert_ne!(short_hash(&["ab", "c"]), short_hash(&["a", "bc"]));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10Gi"), Some(10 << 30));
        assert_eq!(parse_quantity("500M"), Some(500_000_000));
        assert_eq!(parse_quantity("1024"), Some(1024));
        assert_eq!(parse_quantity("1Zi"), None);
    }
}
