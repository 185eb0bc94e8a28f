//! Leader election on a coordination.k8s.io Lease: one replica reconciles, others wait.
//! Talks to the cluster; the decision whether a lease may be taken is pure and unit-tested.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// A lease-based leadership claim.
#[derive(Clone)]
pub struct LeaderLease {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lease {name} was taken over by {holder}")]
    Lost { name: String, holder: String },
    #[error("lease {name} could not be renewed within its duration")]
    Expired { name: String },
}

/// Whether `identity` may take the lease now. Pure.
pub fn may_acquire(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(h) if h == identity => true,
        Some(_) => {
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            let secs = spec.lease_duration_seconds.unwrap_or(15) as i64;
            match renewed {
                None => true,
                Some(t) => t + SignedDuration::from_secs(secs) < now,
            }
        }
    }
}

impl LeaderLease {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    fn err(&self) -> impl FnOnce(kube::Error) -> LeaseError + '_ {
        move |source| LeaseError::Kube {
            name: self.name.clone(),
            source,
        }
    }

    /// One attempt; true when we hold the lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let now = Timestamp::now();
        let secs = self.duration.as_secs().max(1) as i32;
        match self.api.get_opt(&self.name).await.map_err(self.err())? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(self.err()(e)),
                }
            }
            Some(mut lease) => {
                if !may_acquire(lease.spec.as_ref(), &self.identity, now) {
                    return Ok(false);
                }
                let spec = lease.spec.get_or_insert_with(Default::default);
                let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                if !ours {
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    spec.holder_identity = Some(self.identity.clone());
                }
                spec.lease_duration_seconds = Some(secs);
                spec.renew_time = Some(MicroTime(now));
                // resourceVersion in metadata makes this a compare-and-swap.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(self.err()(e)),
                }
            }
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) -> Result<(), LeaseError> {
        let retry = (self.duration / 5).max(Duration::from_millis(500));
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(()),
                Ok(false) => debug!(lease = %self.name, "lease held by another replica"),
                Err(e) => debug!(error = %e, "lease attempt failed"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the lease until `stop` is cancelled; returns an error when leadership is lost.
    pub async fn hold(&self, stop: CancellationToken) -> Result<(), LeaseError> {
        let period = (self.duration / 3).max(Duration::from_millis(500));
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(period) => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    let holder = self
                        .api
                        .get_opt(&self.name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|l| l.spec)
                        .and_then(|s| s.holder_identity)
                        .unwrap_or_default();
                    return Err(LeaseError::Lost {
                        name: self.name.clone(),
                        holder,
                    });
                }
                Err(e) => {
                    debug!(error = %e, "lease renewal failed");
                    // Stop before the lease can expire, so two leaders never overlap.
                    if last_ok.elapsed() + period >= self.duration {
                        return Err(LeaseError::Expired {
                            name: self.name.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Gives the lease up so that another replica can take it at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            if self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .is_ok()
            {
                info!(lease = %self.name, "released leadership");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: Option<i64>, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: renewed.map(|s| MicroTime(Timestamp::from_second(s).expect("ts"))),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    #[test]
    fn free_or_own_lease_can_be_taken() {
        assert!(may_acquire(None, "a", at(0)));
        assert!(may_acquire(Some(&spec(None, None, 15)), "a", at(0)));
        assert!(may_acquire(
            Some(&spec(Some("a"), Some(100), 15)),
            "a",
            at(101)
        ));
    }

    #[test]
    fn foreign_lease_only_after_expiry() {
        let s = spec(Some("b"), Some(100), 15);
        assert!(!may_acquire(Some(&s), "a", at(110)));
        assert!(!may_acquire(Some(&s), "a", at(115)));
        assert!(may_acquire(Some(&s), "a", at(116)));
    }
}
