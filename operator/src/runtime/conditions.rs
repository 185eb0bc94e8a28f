//! Standard conditions (`Ready`, `Reconciling`, `Stalled` and domain ones): pure helpers, clock injected.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// Sets condition `type_`, keeping `lastTransitionTime` unless the status flips.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let new = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// Removes condition `type_` if present.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The condition of type `type_`, if any.
#[allow(dead_code)] // used by tests; the backup and restore controllers will use it
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    #[test]
    fn transition_time_only_moves_when_status_flips() {
        let mut c = Vec::new();
        set(&mut c, READY, true, "Validated", "ok", Some(1), ts(100));
        set(
            &mut c,
            READY,
            true,
            "Validated",
            "still ok",
            Some(2),
            ts(200),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Time(ts(100)));
        assert_eq!(c[0].observed_generation, Some(2));
        assert_eq!(c[0].message, "still ok");
        set(
            &mut c,
            READY,
            false,
            "InvalidCredentials",
            "bad",
            Some(2),
            ts(300),
        );
        assert_eq!(c[0].last_transition_time, Time(ts(300)));
        assert_eq!(c[0].status, "False");
    }

    #[test]
    fn several_types_coexist_and_remove_works() {
        let mut c = Vec::new();
        set(&mut c, READY, false, "A", "", None, ts(1));
        set(&mut c, STALLED, true, "B", "", None, ts(1));
        assert_eq!(c.len(), 2);
        remove(&mut c, STALLED);
        assert!(get(&c, STALLED).is_none());
        assert!(get(&c, READY).is_some());
    }
}
