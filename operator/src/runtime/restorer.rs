//! Whose rights restored objects are written with (design record 0014).
//!
//! The operator's own service account cannot create arbitrary objects. A restore writes the
//! objects of a backup through an impersonated identity instead:
//! - a Restore in the operator namespace (an administrator's) as the user [`RESTORER`], which
//!   the installation binds to the ClusterRole `holdfast-restorer` (create and update of any
//!   kind: restoring a cluster needs that);
//! - a Restore in any other namespace (a tenant's) as the user [`TENANT_RESTORER`], which has
//!   no rights but those of the ClusterRole `admin` in that namespace, bound by a RoleBinding
//!   that exists only while the restore writes objects. The API server's own checks then
//!   decide: a restored Role cannot hold a permission the namespace's admin does not, a
//!   RoleBinding cannot bind a role they could not bind, and nothing cluster-scoped or outside
//!   the namespace can be written.

use std::time::Duration;

use holdfast_api::restore::Restore;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Client, Config, Resource, ResourceExt};
use tracing::debug;

use super::{Context, Error};

/// The user an administrator's restore writes objects as.
pub const RESTORER: &str = "holdfast:restorer";
/// The user a tenant's restore writes objects as.
pub const TENANT_RESTORER: &str = "holdfast:tenant-restorer";
/// The ClusterRole whose rights a tenant's restore has in its namespace.
pub const TENANT_ROLE: &str = "admin";
/// Said of a write refused to a tenant's restore.
pub const TENANT_HINT: &str = "a Restore outside the operator namespace writes objects with the rights of ClusterRole admin in its own namespace";
/// Said of a write refused to an administrator's restore.
pub const CLUSTER_HINT: &str = "an administrator's Restore writes objects as user holdfast:restorer (ClusterRole holdfast-restorer): check that the installation binds it";

/// How long a new RoleBinding may take to be seen by the authorizer.
const GRANT_WAIT: Duration = Duration::from_secs(20);

/// The clients that write restored objects.
#[derive(Clone)]
pub struct Restorers {
    /// As [`RESTORER`].
    pub cluster: Client,
    /// As [`TENANT_RESTORER`].
    pub tenant: Client,
}

impl Restorers {
    /// Clients impersonating the two restorer users, from the operator's own configuration.
    pub fn new(config: &Config) -> Result<Self, kube::Error> {
        let as_user = |user: &str| {
            let mut c = config.clone();
            c.auth_info.impersonate = Some(user.to_string());
            c.auth_info.impersonate_groups = None;
            Client::try_from(c)
        };
        Ok(Self {
            cluster: as_user(RESTORER)?,
            tenant: as_user(TENANT_RESTORER)?,
        })
    }
}

/// Name of the RoleBinding giving a tenant's restore its rights. Pure.
pub fn binding_name(r: &Restore) -> String {
    format!("holdfast-restore-{}", r.uid().unwrap_or_default())
}

/// Gives [`TENANT_RESTORER`] the rights of [`TENANT_ROLE`] in the restore's namespace, and
/// waits until the authorizer sees them. The RoleBinding is owned by the Restore, so it goes
/// with it even if [`revoke`] is never reached.
pub async fn grant(ctx: &Context, r: &Restore) -> Result<Result<(), String>, Error> {
    let ns = r.namespace().unwrap_or_default();
    let name = binding_name(r);
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let rb = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "holdfast".to_string(),
                )]
                .into(),
            ),
            owner_references: r.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: TENANT_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: TENANT_RESTORER.into(),
            namespace: None,
        }]),
    };
    match api.create(&PostParams::default(), &rb).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Ok(Err(format!(
                "the operator may not bind ClusterRole {TENANT_ROLE} in {ns} for the restore's writes ({}); the installation grants bind on it",
                s.message
            )));
        }
        Err(e) => return Err(Error::kube("create RoleBinding")(e)),
    }
    let sar: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(TENANT_RESTORER.into()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.clone()),
                verb: Some("create".into()),
                resource: Some("configmaps".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let start = std::time::Instant::now();
    loop {
        let allowed = sar
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::kube("create SubjectAccessReview"))?
            .status
            .is_some_and(|s| s.allowed);
        if allowed {
            return Ok(Ok(()));
        }
        if start.elapsed() > GRANT_WAIT {
            return Ok(Err(format!(
                "RoleBinding {ns}/{name} did not take effect within {GRANT_WAIT:?}"
            )));
        }
        debug!(namespace = %ns, "waiting for the restore's RoleBinding to take effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes what [`grant`] gave.
pub async fn revoke(ctx: &Context, r: &Restore) -> Result<(), Error> {
    let ns = r.namespace().unwrap_or_default();
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    match api.delete(&binding_name(r), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("delete RoleBinding")(e)),
    }
}
